"""BatchNorm with statistics per FPN level and one shared affine, in a single ``F.batch_norm``.

detectron2's ``RetinaNetHead`` with ``NORM: "BN"`` puts a ``CycleBatchNormList`` after each
subnet convolution: one affine-free ``nn.BatchNorm2d`` per level (its own running statistics),
cycled through call by call, followed by ``x * weight + bias`` with a weight and bias shared by
all levels. That last multiply-add is two more elementwise passes over every head activation
forward and two more backward, and under bfloat16 autocast it promotes the bfloat16 activation
to float32 (the shared weight is float32), so the next convolution casts it back: about 5% of
the demo recipe's bfloat16 training step on a 2-core AVX-512-BF16 VM.

:class:`LevelBatchNorm` computes the same function with the shared weight and bias passed to
``F.batch_norm`` as its affine: one fused pass, the activation's dtype kept. It keeps the
state-dict keys (``weight``, ``bias``, ``{level}.running_mean``, ...), the Parameters and the
per-level BatchNorm modules of the list it replaces, so checkpoints load either way and an
optimizer built before the swap keeps working.
"""
from typing import Sequence

import torch.nn.functional as F
from detectron2.layers import CycleBatchNormList
from torch import Tensor, nn

from .module_swap import replace_submodules

__all__ = ["LevelBatchNorm", "use_level_batch_norms"]


class LevelBatchNorm(nn.ModuleList):
    """One affine-free ``nn.BatchNorm2d`` per level, cycled call by call, and an affine
    (``weight``, ``bias``: (C,)) shared by the levels. As with ``CycleBatchNormList``, the
    caller calls it a multiple of ``len(self)`` times per step, levels in order."""

    def __init__(self, levels: Sequence[nn.BatchNorm2d], weight: nn.Parameter, bias: nn.Parameter):
        super().__init__(levels)
        for index, bn in enumerate(levels):
            if not _is_affine_free_batch_norm(bn):
                raise ValueError(
                    f"LevelBatchNorm: level {index} is {bn!r}; each level must be an "
                    "nn.BatchNorm2d with affine=False (the affine is the shared weight and bias)"
                )
        self.weight = weight
        self.bias = bias
        self.next_level = 0

    @classmethod
    def from_cycle_batch_norm(cls, cycle: CycleBatchNormList) -> "LevelBatchNorm":
        """The same layer as ``cycle`` (its modules and Parameters, not copies)."""
        return cls(list(cycle), cycle.weight, cycle.bias)

    def forward(self, x: Tensor) -> Tensor:
        """(N, C, H, W) -> (N, C, H, W) in ``x``'s dtype, normalised with the statistics of
        the next level in turn, then scaled and shifted by the shared affine."""
        bn = self[self.next_level]
        self.next_level = (self.next_level + 1) % len(self)
        # nn.BatchNorm2d's own rules for the running statistics, with the shared affine added.
        momentum = 0.0 if bn.momentum is None else bn.momentum
        if bn.training and bn.track_running_stats:
            bn.num_batches_tracked.add_(1)
            if bn.momentum is None:  # cumulative moving average
                momentum = 1.0 / float(bn.num_batches_tracked)
        use_batch_stats = bn.training or bn.running_mean is None
        update_buffers = not bn.training or bn.track_running_stats
        return F.batch_norm(
            x,
            bn.running_mean if update_buffers else None,
            bn.running_var if update_buffers else None,
            self.weight,
            self.bias,
            use_batch_stats,
            momentum,
            bn.eps,
        )

    def extra_repr(self) -> str:
        return "shared affine, statistics per level"


def _is_affine_free_batch_norm(module: nn.Module) -> bool:
    """A plain ``nn.BatchNorm2d`` (not a subclass such as SyncBN's) without its own affine."""
    return type(module) is nn.BatchNorm2d and not module.affine


def _replaceable(module: nn.Module) -> bool:
    """A ``CycleBatchNormList`` with a shared affine over plain ``nn.BatchNorm2d`` levels (the
    ``"BN"`` norm; ``"SyncBN"``'s levels and frozen ones are left as they are)."""
    return (
        type(module) is CycleBatchNormList
        and isinstance(getattr(module, "weight", None), nn.Parameter)
        and isinstance(getattr(module, "bias", None), nn.Parameter)
        and all(_is_affine_free_batch_norm(bn) for bn in module)
    )


def use_level_batch_norms(module: nn.Module) -> int:
    """Replace each ``CycleBatchNormList`` of plain BatchNorm levels inside ``module`` by the
    equivalent :class:`LevelBatchNorm` (the same Parameters and buffers).

    Returns:
        the number of layers replaced.
    """
    return replace_submodules(module, _replaceable, LevelBatchNorm.from_cycle_batch_norm)

"""Swapping submodules in place: how focal_rpn's layers enter a model detectron2 built."""
from typing import Callable

from torch import nn

__all__ = ["replace_submodules"]


def replace_submodules(
    module: nn.Module,
    matches: Callable[[nn.Module], bool],
    replacement: Callable[[nn.Module], nn.Module],
) -> int:
    """Set every child slot of ``module`` and of its descendants that holds a submodule for
    which ``matches`` is true to ``replacement(submodule)``.

    Returns:
        the number of slots replaced (a submodule held in two slots counts twice).
    """
    replaced = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if matches(child):
                setattr(parent, name, replacement(child))
                replaced += 1
    return replaced

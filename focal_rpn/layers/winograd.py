"""3x3 convolutions as Winograd F(4x4, 3x3) batched matrix products, for CPU speed.

A stride-1, padding-1 3x3 convolution computes every 4x4 output tile from a 6x6 input tile.
Winograd's minimal filtering algorithm (Lavin & Gray 2016, "Fast Algorithms for Convolutional
Neural Networks") does it with 36 element-wise products per (tile, input channel, output
channel) instead of 144:

    Y = A^T [ (G g G^T) * (B^T d B) ] A        d: 6x6 input tile, g: 3x3 filter, Y: 4x4 output

Over channels the element-wise product becomes 36 independent matrix products, one per tile
position (i, j) of the 6x6 transformed domain, and all three transforms are small fixed linear
maps (Kronecker products of B^T, G, A^T) applied as one matrix product each:

    V (36, T, C) = (B^T kron B^T) @ tiles(x)            T: tiles of all images, C in-channels
    U (36, C, K) = (G kron G) @ weight                  K: out-channels
    M (36, T, K) = V @ U                                (batched over the 36 positions)
    y            = (A^T kron A^T) @ M  -> (N, K, H, W)

The multiply count of the batched product is 36 / (16 * 9) = 1/4 of a direct convolution, and
the backward is again matrix products of the same sizes plus the adjoints of the transforms;
it keeps only the input and the weight from the forward (:class:`_WinogradConv3x3Fn`).

Whether that is faster depends on the machine: on an AVX2 VM, forward + backward of a
256-channel 3x3 conv on 4 x 32 x 32 maps (RetinaNet's P3 at 256 px) took half of
``F.conv2d``'s time; on an AVX-512 VM, where oneDNN's convolution is about 6 times faster, it
took 1.2 times as long (``benchmarks/bench_winograd.py``). Narrow convolutions and small maps
lose everywhere (the transforms cost more than they save). Hence :class:`WinogradConv2d`'s
default mode "auto": :class:`ConvPathTuner` times both paths once per kind of call on the
machine it runs on and keeps the faster.

Numerics: the transforms use the points 0, +-1, +-2 and are exact in real arithmetic; in
float32 the result differs from ``F.conv2d`` by less than 1e-5 relative to the output's
magnitude (tested against float64 in ``tests/test_winograd.py``). Low precision (float16,
bfloat16, autocast) is left to ``F.conv2d``: the transforms' constants (1/6, 1/24, 8) would
cost too many bits there.

Shapes: N images, C in-channels, K out-channels, H x W map, T = N * ceil(H/4) * ceil(W/4) tiles.
"""
import logging
import math
from dataclasses import dataclass
from typing import Dict, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from ..config import check_auto_mode
from .module_swap import replace_submodules
from .path_timing import CachedPathChoice, best_times

__all__ = [
    "winograd_conv3x3",
    "winograd_domain_weight",
    "winograd_pays_off",
    "winograd_supported",
    "WinogradConv2d",
    "use_winograd_convs",
    "ConvPathTuner",
    "TUNER",
    "WINOGRAD_MODES",
    "check_winograd_mode",
]

logger = logging.getLogger(__name__)

# Lavin & Gray's F(4x4, 3x3) with interpolation points 0, 1, -1, 2, -2 and infinity.
_B_T = (
    (4, 0, -5, 0, 1, 0),
    (0, -4, -4, 1, 1, 0),
    (0, 4, -4, -1, 1, 0),
    (0, -2, -1, 2, 1, 0),
    (0, 2, -1, -2, 1, 0),
    (0, 4, 0, -5, 0, 1),
)
_G = (
    (1 / 4, 0, 0),
    (-1 / 6, -1 / 6, -1 / 6),
    (-1 / 6, 1 / 6, -1 / 6),
    (1 / 24, 1 / 12, 1 / 6),
    (1 / 24, -1 / 12, 1 / 6),
    (0, 0, 1),
)
_A_T = (
    (1, 1, 1, 1, 1, 0),
    (0, 1, -1, 2, -2, 0),
    (0, 1, 1, 4, 4, 0),
    (0, 1, -1, 8, -8, 1),
)
TILE = 4  # output tile side
WINDOW = TILE + 2  # input tile side

_TRANSFORMS: Dict[Tuple[torch.device, torch.dtype], Tuple[Tensor, Tensor, Tensor]] = {}


def _is_channels_last(x: Tensor) -> bool:
    """Whether ``x`` (N, C, H, W) is stored channels-last (NHWC) and not also plain NCHW."""
    return not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


def _needs_grad(x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> bool:
    """Whether a convolution of these tensors must be differentiable."""
    return torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, weight, bias)
    )


def _memory_format(x: Tensor) -> torch.memory_format:
    """The memory format that keeps ``x``'s layout: channels-last or contiguous (NCHW)."""
    return torch.channels_last if _is_channels_last(x) else torch.contiguous_format


def _transforms(device: torch.device, dtype: torch.dtype) -> Tuple[Tensor, Tensor, Tensor]:
    """(B^T kron B^T (36, 36), G kron G (36, 9), A^T kron A^T (16, 36)) on device, in dtype.

    Built in float64 and rounded once, so that every dtype gets its closest constants.
    """
    key = (device, dtype)
    if key not in _TRANSFORMS:
        b_t, g, a_t = (torch.tensor(m, dtype=torch.float64) for m in (_B_T, _G, _A_T))
        _TRANSFORMS[key] = tuple(
            torch.kron(m, m).to(device=device, dtype=dtype) for m in (b_t, g, a_t)
        )
    return _TRANSFORMS[key]


def winograd_conv3x3(
    x: Tensor,
    weight: Tensor,
    bias: Optional[Tensor] = None,
    *,
    domain_weight: Optional[Tensor] = None,
) -> Tensor:
    """``F.conv2d(x, weight, bias, stride=1, padding=1)`` computed as Winograd F(4x4, 3x3).

    Differentiable in ``x``, ``weight`` and ``bias`` (autograd through
    :class:`_WinogradConv3x3Fn`). Without autograd (inference) it runs over chunks of images
    and of output channels whose products stay within ``INFERENCE_BUFFER_BYTES``, and its
    output has the memory format of ``x`` (channels-last in, channels-last out).

    Args:
        x: (N, C, H, W) floating point, any device; any H, W >= 1.
        weight: (K, C, 3, 3), same dtype and device.
        bias: (K,) or None.
        domain_weight: inference only (ignored where a gradient is needed): U (36, C, K),
            ``winograd_domain_weight(weight)`` computed beforehand, as
            :class:`WinogradConv2d` keeps it between calls; None computes it here.

    Returns:
        (N, K, H, W).
    """
    if x.dim() != 4 or weight.dim() != 4 or tuple(weight.shape[2:]) != (3, 3):
        raise ValueError(
            f"winograd_conv3x3 takes x (N, C, H, W) and weight (K, C, 3, 3); got x "
            f"{tuple(x.shape)} and weight {tuple(weight.shape)}"
        )
    n, c, h, w = x.shape
    if weight.shape[1] != c:
        raise ValueError(f"weight has {weight.shape[1]} input channels, x has {c}")
    if _needs_grad(x, weight, bias):
        y = _WinogradConv3x3Fn.apply(x, weight)
        return y if bias is None else y + bias.view(1, -1, 1, 1)
    k = weight.shape[0]
    if domain_weight is None:
        domain_weight = winograd_domain_weight(weight)
    elif tuple(domain_weight.shape) != (WINDOW * WINDOW, c, k):
        raise ValueError(
            f"domain_weight has shape {tuple(domain_weight.shape)}; weight "
            f"{tuple(weight.shape)} needs ({WINDOW * WINDOW}, {c}, {k})"
        )
    return _inference(x, domain_weight, bias)


#: Without autograd, the products M (36, tiles, channels) of one chunk take at most this many
#: bytes (whole images per chunk, fewer output channels where one image alone is larger).
#: Measured, AVX-512 VM, 4 x 32 x 32 maps, 256 -> 720 channels, forward alone with the filters
#: transformed beforehand: all 4 images and all channels at once (26.5 MB) took 0.46 of
#: oneDNN's time, chunks of 256 channels 0.52. The price: retinanet_infer's peak of tensor
#: memory is 80 MB where detectron2's RetinaNet has 43 (benchmarks/bench_models.py).
INFERENCE_BUFFER_BYTES = 32 << 20


def _inference(x: Tensor, u: Tensor, bias: Optional[Tensor]) -> Tensor:
    """The no-autograd forward: x (N, C, H, W), U (36, C, K) -> (N, K, H, W), in the memory
    format of ``x`` (channels-last: the output transform's NHWC scatter lands in place)."""
    n, c, h, w = x.shape
    k = u.shape[2]
    tiles_per_image = -(-h // TILE) * -(-w // TILE)
    bytes_per_tile_channel = WINDOW * WINDOW * x.element_size()
    per_image = bytes_per_tile_channel * tiles_per_image * k
    images_per_chunk = max(1, INFERENCE_BUFFER_BYTES // per_image)
    channels_per_chunk = k if per_image <= INFERENCE_BUFFER_BYTES else max(
        1, INFERENCE_BUFFER_BYTES // (bytes_per_tile_channel * tiles_per_image)
    )
    y = torch.empty((n, k, h, w), dtype=x.dtype, device=x.device, memory_format=_memory_format(x))
    for i in range(0, n, images_per_chunk):
        v = _input_transform(x[i : i + images_per_chunk])
        num_images = v.shape[1] // tiles_per_image
        for j in range(0, k, channels_per_chunk):
            m = torch.bmm(v, u[:, :, j : j + channels_per_chunk])
            y[i : i + num_images, j : j + m.shape[2]] = _output_transform(m, num_images, h, w)
    return y if bias is None else y.add_(bias.view(1, -1, 1, 1))


def winograd_domain_weight(weight: Tensor) -> Tensor:
    """(K, C, 3, 3) filters -> U (36, C, K), contiguous: the filters in the Winograd domain,
    as the products of :func:`winograd_conv3x3` take them (4 x the weight's size)."""
    return _transform_weight(weight.detach()).contiguous()


def _transform_weight(weight: Tensor) -> Tensor:
    """(K, C, 3, 3) filters -> U (36, C, K), the filters in the Winograd domain."""
    k, c = weight.shape[:2]
    _, g, _ = _transforms(weight.device, weight.dtype)
    return (g @ weight.reshape(k * c, 9).t()).view(WINDOW * WINDOW, k, c).transpose(1, 2)


def _input_transform(x: Tensor) -> Tensor:
    """x (N, C, H, W) -> V (36, T, C), its 6x6 tiles (stride 4) in the Winograd domain.

    The tiles cover the map zero-padded by 1 (the convolution's padding) plus up to 3 more rows
    / columns at the bottom / right; :func:`_output_transform` crops their outputs. The tiles
    are a strided view of the padded map, gathered by one copy into (36, N, tiles, C) order.
    """
    n, c, h, w = x.shape
    tiles_h, tiles_w = -(-h // TILE), -(-w // TILE)
    b_t, _, _ = _transforms(x.device, x.dtype)
    padded = F.pad(x, (1, 1 + tiles_w * TILE - w, 1, 1 + tiles_h * TILE - h))
    s_n, s_c, s_h, s_w = padded.stride()
    windows = padded.as_strided(
        (WINDOW, WINDOW, n, tiles_h, tiles_w, c),
        (s_h, s_w, s_n, TILE * s_h, TILE * s_w, s_c),
        padded.storage_offset(),
    )
    return (b_t @ windows.reshape(WINDOW * WINDOW, -1)).view(WINDOW * WINDOW, -1, c)


def _output_transform(m: Tensor, n: int, h: int, w: int) -> Tensor:
    """M (36, T, K), the products in the Winograd domain of N images' tiles -> (N, K, H, W),
    a view of channels-last (NHWC) storage: the channels stay innermost, as they are in M, so
    the scatter moves whole runs of them (callers that want NCHW copy it so, which is still
    faster than scattering into NCHW directly)."""
    k = m.shape[2]
    tiles_h, tiles_w = -(-h // TILE), -(-w // TILE)
    _, _, a_t = _transforms(m.device, m.dtype)
    y = (a_t @ m.reshape(WINDOW * WINDOW, -1)).view(TILE, TILE, n, tiles_h, tiles_w, k)
    y = y.permute(2, 3, 0, 4, 1, 5).reshape(n, tiles_h * TILE, tiles_w * TILE, k)
    return y[:, :h, :w].permute(0, 3, 1, 2)


def _output_transform_adjoint(grad_y: Tensor, h: int, w: int) -> Tensor:
    """The adjoint of :func:`_output_transform`: grad_y (N, K, H, W) -> grad_M (36, T, K)."""
    n, k = grad_y.shape[:2]
    tiles_h, tiles_w = -(-h // TILE), -(-w // TILE)
    _, _, a_t = _transforms(grad_y.device, grad_y.dtype)
    g = F.pad(grad_y, (0, tiles_w * TILE - w, 0, tiles_h * TILE - h))  # the cropped part: 0
    g = g.reshape(n, k, tiles_h, TILE, tiles_w, TILE).permute(3, 5, 0, 2, 4, 1)
    return (a_t.t() @ g.reshape(TILE * TILE, -1)).view(WINDOW * WINDOW, -1, k)


def _input_transform_adjoint(grad_v: Tensor, n: int, h: int, w: int) -> Tensor:
    """The adjoint of :func:`_input_transform`: grad_V (36, T, C) -> grad_x (N, C, H, W), a view
    of channels-last (NHWC) storage (the channels innermost in every addition: about half the
    time of the NCHW order, and still faster after a copy to NCHW; 4 x 256 x 32 x 32).

    Tiles overlap by 2 rows / columns: the first 4 x 4 of every tile's gradient tile the padded
    map exactly, and its last 2 rows / columns add onto the next tile's first 2.
    """
    c = grad_v.shape[2]
    tiles_h, tiles_w = -(-h // TILE), -(-w // TILE)
    b_t, _, _ = _transforms(grad_v.device, grad_v.dtype)
    windows = (b_t.t() @ grad_v.reshape(WINDOW * WINDOW, -1)).view(
        WINDOW, WINDOW, n, tiles_h, tiles_w, c
    )
    windows = windows.permute(2, 3, 0, 4, 1, 5)  # (N, tiles_h, 6, tiles_w, 6, C)
    grid = grad_v.new_zeros(n, tiles_h + 1, TILE, tiles_w + 1, TILE, c)
    rest = WINDOW - TILE
    grid[:, :-1, :, :-1, :] += windows[:, :, :TILE, :, :TILE]
    grid[:, 1:, :rest, :-1, :] += windows[:, :, TILE:, :, :TILE]
    grid[:, :-1, :, 1:, :rest] += windows[:, :, :TILE, :, TILE:]
    grid[:, 1:, :rest, 1:, :rest] += windows[:, :, TILE:, :, TILE:]
    padded = grid.view(n, (tiles_h + 1) * TILE, (tiles_w + 1) * TILE, c)
    return padded[:, 1 : h + 1, 1 : w + 1].permute(0, 3, 1, 2)


def _transform_weight_adjoint(grad_u: Tensor) -> Tensor:
    """The adjoint of :func:`_transform_weight`: grad_U (36, C, K) -> grad_weight (K, C, 3, 3)."""
    c, k = grad_u.shape[1:]
    _, g, _ = _transforms(grad_u.device, grad_u.dtype)
    grad = g.t() @ grad_u.transpose(1, 2).reshape(WINDOW * WINDOW, k * c)  # (9, K * C)
    return grad.t().reshape(k, c, 3, 3)


class _WinogradConv3x3Fn(torch.autograd.Function):
    """y = conv3x3(x, weight) through the transforms, saving only x and weight; y and the
    gradient of x keep x's memory format (NCHW or channels-last).

    Autograd through the composition would keep, for every call, the transformed input V
    (2.25 x the input), the transformed filters U (4 x the weight) and the unfolded windows:
    about 290 MB more than plain convolutions in a RetinaNet training step at 256 px. Here the
    backward recomputes V and U (the transforms cost a few percent of the products) and runs
    the adjoint of each transform.
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor) -> Tensor:
        ctx.save_for_backward(x, weight)
        n, _, h, w = x.shape
        y = _output_transform(torch.bmm(_input_transform(x), _transform_weight(weight)), n, h, w)
        return y.contiguous(memory_format=_memory_format(x))

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y: Tensor):
        x, weight = ctx.saved_tensors
        n, _, h, w = x.shape
        grad_m = _output_transform_adjoint(grad_y, h, w)  # (36, T, K)
        grad_x = grad_weight = None
        if ctx.needs_input_grad[0]:
            grad_v = torch.bmm(grad_m, _transform_weight(weight).transpose(1, 2))  # (36, T, C)
            grad_x = _input_transform_adjoint(grad_v, n, h, w).contiguous(
                memory_format=_memory_format(x)
            )
        if ctx.needs_input_grad[1]:
            grad_u = torch.bmm(_input_transform(x).transpose(1, 2), grad_m)  # (36, C, K)
            grad_weight = _transform_weight_adjoint(grad_u)
        return grad_x, grad_weight


# Where Winograd paid off on the AVX2 VM of docs/results/benchmarks-2026-11-23.md (time of winograd_conv3x3 /
# F.conv2d, forward + backward; forward alone in brackets): 256 -> 256 channels on 4 x 32 x 32
# maps 0.49 (0.62), 16 x 16 0.69 (0.71), 12 x 12 0.84 (0.91), 8 x 8 1.29 (1.31); 256 -> 720
# on 32 x 32 0.40; 256 -> 36 (RetinaNet's box conv) 1.32; 128 -> 128 on 16 x 16 0.91 (1.16);
# 64 -> 64 on 8 x 32 x 32 1.04 (1.63); 256 -> 256 on 2 x 100 x 100 (R50 at 800 px) 0.59.
# On an AVX-512 VM oneDNN's convolution is about 6 times faster and Winograd loses everywhere
# (1.05-1.9): hence WinogradConv2d's default, "auto", times both paths on the machine it runs
# on (ConvPathTuner) instead of following these numbers.
MIN_IN_CHANNELS = 256
MIN_OUT_CHANNELS = 128
MIN_PIXELS = 12 * 12


def winograd_supported(x: Tensor) -> bool:
    """Whether :func:`winograd_conv3x3` may replace ``F.conv2d`` for ``x``: float32 on CPU
    outside autocast. GPUs have cuDNN, which picks its own algorithms; low precision would
    lose too many bits in the transforms."""
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and not torch.is_autocast_enabled("cpu")
    )


def winograd_pays_off(x: Tensor, conv: nn.Conv2d) -> bool:
    """The fixed rule of the AVX2 VM (above): supported, wide enough and on a map large enough.
    Not used by :class:`WinogradConv2d` any more (its "auto" mode measures instead); kept for
    callers of ``focal_rpn.layers.winograd_pays_off``."""
    return (
        winograd_supported(x)
        and conv.in_channels >= MIN_IN_CHANNELS
        and conv.out_channels >= MIN_OUT_CHANNELS
        and x.shape[-2] * x.shape[-1] >= MIN_PIXELS
    )


# ---------------------------------------------------------------------------------------------
# choosing the path by measurement (mode "auto")
# ---------------------------------------------------------------------------------------------
#: The modes of WinogradConv2d / MODEL.FOCAL_RETINANET.WINOGRAD: "auto" times both paths,
#: True forces Winograd wherever it is supported, False forces F.conv2d.
WINOGRAD_MODES = ("auto", True, False)


def check_winograd_mode(key: str, value) -> Union[str, bool]:
    """The mode named by ``value`` ("auto", or None for "auto"; True; False). Raises
    ValueError naming ``key``, the value and the allowed ones otherwise."""
    return check_auto_mode(
        key, value, "\"auto\" (time both paths on this machine, the default), True (always "
        "Winograd on CPU float32) or False (always nn.Conv2d)"
    )


@dataclass(frozen=True)
class PathChoice:
    """The outcome of timing one :class:`ConvPathTuner` key: the best of the timed rounds of
    each path in milliseconds, and whether Winograd was chosen."""

    winograd: bool
    winograd_ms: float
    conv2d_ms: float


class ConvPathTuner(CachedPathChoice):
    """Chooses, per kind of call, between :func:`winograd_conv3x3` and ``F.conv2d`` by timing
    both once at the first such call and caching the choice (as ``cudnn.benchmark`` does).

    A kind of call (:meth:`key`) is the convolution's channels, the batch size, the map size
    in quarter-octave buckets of pixels (multi-scale training does not time every size), the
    memory format, the dtype, the number of intra-op threads and whether a gradient is needed
    (then forward + backward are timed, else the forward alone). Each path runs once to warm
    up, then ``rounds`` times alternately; the best time of each counts, and Winograd is
    chosen only if it is at least ``1 - margin`` faster, so that near-ties (and noise) stay
    on ``F.conv2d``, the reference path. Every choice is logged once, at INFO.

    Results of the two paths agree within float rounding (1e-5 relative, tests/test_winograd.py),
    so a choice never changes what a model computes beyond that. Two processes may still choose
    differently (timings vary), which makes runs differ in the last bits: with
    ``torch.use_deterministic_algorithms(True)`` no timing is done and ``F.conv2d`` is used, and
    mode True / False fixes the path.
    """

    @staticmethod
    def key(x: Tensor, conv: nn.Conv2d, needs_grad: bool) -> tuple:
        n, c, h, w = x.shape
        pixels_bucket = round(4 * math.log2(max(h * w, 1)))
        layout = "channels_last" if _is_channels_last(x) else "contiguous"
        return (c, conv.out_channels, conv.bias is not None, n, pixels_bucket, layout, x.dtype,
                torch.get_num_threads(), "training" if needs_grad else "inference")

    def use_winograd(self, x: Tensor, conv: nn.Conv2d, needs_grad: bool) -> bool:
        """Whether ``conv(x)`` should run as Winograd: the cached choice, or a new one."""
        if torch.are_deterministic_algorithms_enabled():
            return False
        return self.choose(x, conv, needs_grad).winograd

    def _log(self, key: tuple, choice: PathChoice, x: Tensor, conv: nn.Conv2d, needs_grad: bool):
        n, c, h, w = x.shape
        logger.info(
            "3x3 conv %d->%d on %dx%dx%d (%s, %d threads, %s): Winograd %.2f ms, "
            "F.conv2d %.2f ms -> %s", c, conv.out_channels, n, h, w, str(x.dtype)[6:],
            key[7], key[8], choice.winograd_ms, choice.conv2d_ms,
            "Winograd" if choice.winograd else "F.conv2d",
        )

    def _time(self, x: Tensor, conv: nn.Conv2d, needs_grad: bool) -> PathChoice:
        """Time both paths on detached copies of the call's own tensors (no autograd graph,
        parameters, buffers or random state of the caller is touched)."""
        weight = conv.weight.detach()
        bias = conv.bias.detach() if conv.bias is not None else None
        xd = x.detach()
        # Inference runs on the filters transformed once (WinogradConv2d keeps them), so that
        # is what is timed; training transforms them in every call, and is timed so.
        if needs_grad:
            domain_weight = None
        elif isinstance(conv, WinogradConv2d):  # its own kept copy, which the call then uses
            domain_weight = conv._domain_weight()
        else:
            domain_weight = winograd_domain_weight(weight)
        paths = {
            "winograd": lambda a, b, c: winograd_conv3x3(a, b, c, domain_weight=domain_weight),
            "conv2d": lambda a, b, c: F.conv2d(a, b, c, padding=1),
        }
        if needs_grad:
            grad = torch.ones((x.shape[0], conv.out_channels) + tuple(x.shape[2:]),
                              dtype=x.dtype)
            flags = (x.requires_grad, conv.weight.requires_grad,
                     conv.bias is not None and conv.bias.requires_grad)

            def run(path):
                leaves = [t.detach().requires_grad_(f) if t is not None else None
                          for t, f in zip((xd, weight, bias), flags)]
                with torch.enable_grad():
                    paths[path](*leaves).backward(grad)
        else:
            def run(path):
                with torch.no_grad():
                    paths[path](xd, weight, bias)

        best = best_times({name: (lambda name=name: run(name)) for name in paths}, self.rounds)
        return PathChoice(
            winograd=self.prefers(best["winograd"], best["conv2d"]),
            winograd_ms=best["winograd"] * 1e3,
            conv2d_ms=best["conv2d"] * 1e3,
        )


#: The process-wide tuner of every WinogradConv2d in mode "auto".
TUNER = ConvPathTuner()


def _is_plain_3x3(conv: nn.Module) -> bool:
    """A stride-1, padding-1, undilated, ungrouped 3x3 ``nn.Conv2d`` with zero padding."""
    return (
        isinstance(conv, nn.Conv2d)
        and conv.kernel_size == (3, 3)
        and conv.stride == (1, 1)
        and conv.padding == (1, 1)
        and conv.dilation == (1, 1)
        and conv.groups == 1
        and conv.padding_mode == "zeros"
    )


class WinogradConv2d(nn.Conv2d):
    """A 3x3, stride-1, padding-1 ``nn.Conv2d`` that may run as :func:`winograd_conv3x3`.

    ``mode`` (see :data:`WINOGRAD_MODES`): "auto" (the default) takes whichever of the two
    paths :data:`TUNER` measured faster for this kind of call on this machine; True takes
    Winograd wherever it is supported (:func:`winograd_supported`); False is ``nn.Conv2d``.
    Unsupported inputs (GPU, other dtypes, autocast) and TorchScript tracing and scripting
    always take ``nn.Conv2d``. Same parameters and state dict keys as ``nn.Conv2d``.
    """

    def __init__(self, *args, mode: Union[str, bool] = "auto", **kwargs):
        self_mode = check_winograd_mode("WinogradConv2d mode", mode)
        super().__init__(*args, **kwargs)
        self.mode = self_mode
        if not _is_plain_3x3(self):
            raise ValueError(
                "WinogradConv2d is a 3x3 convolution with stride 1, padding 1, dilation 1, "
                f"groups 1 and zero padding; got {self}"
            )

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, mode: Union[str, bool] = "auto") -> "WinogradConv2d":
        """A WinogradConv2d holding ``conv``'s own weight and bias Parameters (not copies)."""
        new = cls(
            conv.in_channels, conv.out_channels, 3, padding=1, bias=conv.bias is not None,
            device="meta",  # no allocation and no draw from the random generator
            mode=mode,
        )
        new.weight = conv.weight
        new.bias = conv.bias
        new.train(conv.training)
        return new

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, mode={self.mode!r}"

    def _domain_weight(self) -> Tensor:
        """U (36, C, K) of the current weight, for inference: kept between calls for as long
        as the weight stays bitwise equal to the one it was computed from (a copy is kept to
        compare: the version counter does not see in-place edits through ``weight.data``).
        Costs 5 x the weight's memory while cached (about 130 MB for RetinaNet's head at 256
        channels); freed by ``train()``, never saved in a state dict or pickle."""
        weight = self.weight.detach()
        cached = self.__dict__.get("_domain_weight_cache")
        if (
            cached is not None
            and cached[0].device == weight.device
            and cached[0].dtype == weight.dtype
            and cached[0].shape == weight.shape
            and torch.equal(cached[0], weight)
        ):
            return cached[1]
        domain_weight = winograd_domain_weight(weight)
        self.__dict__["_domain_weight_cache"] = (weight.clone(), domain_weight)
        return domain_weight

    def train(self, mode: bool = True):
        if mode:  # training transforms the filters in every call: free the inference copy
            self.__dict__.pop("_domain_weight_cache", None)
        return super().train(mode)

    def __getstate__(self):
        state = super().__getstate__()
        state.pop("_domain_weight_cache", None)
        return state

    def forward(self, x: Tensor) -> Tensor:
        if (
            torch.jit.is_scripting()
            or torch.jit.is_tracing()
            or self.mode is False
            or not winograd_supported(x)
        ):
            return super().forward(x)
        needs_grad = _needs_grad(x, self.weight, self.bias)
        if self.mode == "auto" and not TUNER.use_winograd(x, self, needs_grad):
            return super().forward(x)
        if needs_grad:
            return winograd_conv3x3(x, self.weight, self.bias)
        return winograd_conv3x3(x, self.weight, self.bias, domain_weight=self._domain_weight())


def use_winograd_convs(module: nn.Module, mode: Union[str, bool] = "auto") -> int:
    """Replace every submodule of ``module`` whose type is exactly ``nn.Conv2d`` and that is a
    plain 3x3 convolution (stride 1, padding 1, no dilation or groups) by a
    :class:`WinogradConv2d` in ``mode`` sharing its Parameters. Call it before building an optimizer (the
    Parameters are the same objects, so one built before also keeps working).

    Returns:
        the number of convolutions replaced.
    """
    return replace_submodules(
        module,
        lambda child: type(child) is nn.Conv2d and _is_plain_3x3(child),
        lambda conv: WinogradConv2d.from_conv(conv, mode),
    )

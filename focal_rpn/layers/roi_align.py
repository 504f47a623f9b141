"""A multithreaded CPU ROIAlign with torchvision's semantics, behind detectron2's interface.

torchvision's CPU ``roi_align`` runs on one thread, and its backward recomputes the bilinear
weights of every sample once per channel and scatters one float at a time (issue 5 found it a
third of a CPU Faster R-CNN training step on 2 threads). Here ROIAlign is a sparse linear map:

    out (R*PH*PW, C) = Wt (R*PH*PW, N*H*W) @ features (N*H*W, C)       (forward)
    grad_features    = Wt^T @ grad_out (R*PH*PW, C)                      (backward)

``Wt`` holds, for every output bin, the bilinear weights of its sampling points (averaged over
the bin's ``count`` samples, exactly as torchvision samples them), coalesced per pixel. It is
built with vectorised index arithmetic, using that bilinear weights are separable: a bin's weight
on pixel (y, x) is ``wy[y] * wx[x] / count``, where ``wy`` sums the row weights of the bin's
``grid_h`` sample rows and ``wx`` the column weights of its ``grid_w`` sample columns. Both
products run as ``F.embedding_bag(mode="sum", per_sample_weights=...)`` over rows of C
contiguous floats (multithreaded; a bag per output bin, resp. per input pixel of the CSR
transpose, which the backward builds with one stable sort).

Shapes: N images, C channels, H x W feature map, R rois, PH x PW = ``output_size``,
P = PH * PW bins per roi.

Semantics (those of torchvision's kernel, ``torchvision/csrc/ops/cpu/roi_align_kernel.cpp``):
roi corners are multiplied by ``spatial_scale`` and shifted by -0.5 when ``aligned``; without
``aligned`` the roi's width and height are raised to at least 1. A bin of size
``bin = roi_size / pooled`` is sampled on a ``grid x grid`` lattice at
``start + p * bin + (i + 0.5) * bin / grid``, where ``grid = sampling_ratio`` if it is > 0,
else ``ceil(roi_size / pooled)`` (per roi; 0 or less: the bin is 0). A sample with y outside
[-1, H] or x outside [-1, W] contributes 0; otherwise negative coordinates are raised to 0,
coordinates at or past the last pixel are snapped to it, and the sample is the bilinear
interpolation of its four neighbours. The bin's value is the sum of its samples divided by
``max(grid_h * grid_w, 1)``. The roi's image is ``int(rois[:, 0])`` (truncated).
"""
import logging
import math
from dataclasses import dataclass
from typing import Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from detectron2.layers import ROIAlign

from .module_swap import replace_submodules
from .path_timing import CachedPathChoice, best_times

__all__ = [
    "roi_align_cpu", "FastROIAlign", "use_fast_roi_align", "roi_align_weights",
    "ROIAlignPathTuner",
]

logger = logging.getLogger(__name__)

_CPU_DTYPES = (torch.float32, torch.float64)


def _pair(output_size) -> Tuple[int, int]:
    if isinstance(output_size, int):
        return output_size, output_size
    ph, pw = output_size
    return int(ph), int(pw)


def _axis_windows(start: Tensor, size: Tensor, grid: Tensor, pooled: int, length: int):
    """Bilinear weights along one axis (y or x), summed per (roi, bin) over the bin's samples.

    Args:
        start, size: (R,) roi start and size along the axis, in feature-map pixels (dtype T).
        grid: (R,) int64 >= 0, samples per bin along the axis.
        pooled: bins along the axis (PH or PW); length: pixels along the axis (H or W).

    Returns:
        base: (R*pooled,) int64, first pixel of each (roi, bin) window;
        span: (R*pooled,) int64 >= 0, window length (0 for rois without samples);
        offset: (R*pooled,) int64, start of each window in ``weights``;
        weights: (sum(span),) T, the summed weights of the window's pixels (not yet / count).
    """
    R = start.shape[0]
    dev, dtype = start.device, start.dtype
    groups = R * pooled
    per_roi = grid * pooled
    num = int(per_roi.sum())
    if num == 0:
        zeros = torch.zeros(groups, dtype=torch.int64, device=dev)
        return zeros, zeros.clone(), zeros.clone(), torch.zeros(0, dtype=dtype, device=dev)
    roi = torch.repeat_interleave(torch.arange(R, device=dev), per_roi, output_size=num)
    first = torch.cumsum(per_roi, 0) - per_roi
    k = torch.arange(num, device=dev) - first.index_select(0, roi)
    g = grid.index_select(0, roi)
    p = torch.div(k, g, rounding_mode="floor")
    i = k - p * g
    bin_size = (size / pooled).index_select(0, roi)
    # same operation order as torchvision: start + p * bin + (i + .5) * bin / grid
    c = start.index_select(0, roi) + p.to(dtype) * bin_size
    c += (i.to(dtype) + 0.5) * bin_size / g.to(dtype)
    valid = (c >= -1.0) & (c <= length)  # False for NaN
    c = torch.where(valid, c, c.nan_to_num(0.0, 0.0, 0.0).clamp(0.0, length - 1))
    c = c.clamp_(min=0.0)
    low = c.to(torch.int64)
    edge = low >= length - 1
    low = torch.where(edge, torch.full_like(low, length - 1), low)
    high = torch.where(edge, low, low + 1)
    frac = torch.where(edge, torch.zeros_like(c), c - low.to(dtype))
    w_high = frac * valid
    w_low = (1.0 - frac) * valid

    group = roi * pooled + p
    base = torch.zeros(groups, dtype=torch.int64, device=dev)
    base.scatter_reduce_(0, group, low, "amin", include_self=False)
    end = torch.full((groups,), -1, dtype=torch.int64, device=dev)
    end.scatter_reduce_(0, group, high, "amax", include_self=False)
    span = (end - base + 1).clamp_(min=0)
    offset = torch.cumsum(span, 0) - span
    weights = torch.zeros(int(span.sum()), dtype=dtype, device=dev)
    pos = (offset - base).index_select(0, group)
    weights.index_add_(0, pos + low, w_low)
    weights.index_add_(0, pos + high, w_high)
    return base, span, offset, weights


def roi_align_weights(
    rois: Tensor,
    num_images: int,
    height: int,
    width: int,
    output_size,
    spatial_scale: float,
    sampling_ratio: int,
    aligned: bool,
    dtype: torch.dtype = None,
):
    """The ROIAlign matrix Wt as CSR parts (see the module docstring).

    Args:
        rois: (R, 5) [batch index, x1, y1, x2, y2] in image coordinates.
        num_images, height, width: N, H, W of the feature map.

    Returns:
        (crow (R*P + 1,), col (nnz,), val (nnz,)): Wt of shape (R*P, N*H*W), rows in (roi, ph,
        pw) order, int32 indices (int64 past 2**31 entries or pixels), ``val`` in ``dtype``
        (default: ``rois.dtype``). Column order within a row is y-major, x-minor.
    """
    PH, PW = _pair(output_size)
    dtype = dtype or rois.dtype
    dev = rois.device
    rois = rois.to(dtype)
    R = rois.shape[0]
    offset = 0.5 if aligned else 0.0
    scale = torch.tensor(spatial_scale, dtype=dtype)  # torchvision casts the scale to T
    x1 = rois[:, 1] * scale - offset
    y1 = rois[:, 2] * scale - offset
    x2 = rois[:, 3] * scale - offset
    y2 = rois[:, 4] * scale - offset
    roi_w, roi_h = x2 - x1, y2 - y1
    if not aligned:
        roi_w, roi_h = roi_w.clamp(min=1.0), roi_h.clamp(min=1.0)
    if sampling_ratio > 0:
        grid_h = torch.full((R,), sampling_ratio, dtype=torch.int64, device=dev)
        grid_w = grid_h
    else:
        grid_h = torch.ceil(roi_h / PH).nan_to_num(0.0, 0.0, 0.0).to(torch.int64).clamp_(min=0)
        grid_w = torch.ceil(roi_w / PW).nan_to_num(0.0, 0.0, 0.0).to(torch.int64).clamp_(min=0)
    count = (grid_h * grid_w).clamp(min=1).to(dtype)
    base_y, span_y, off_y, wy = _axis_windows(y1, roi_h, grid_h, PH, height)
    base_x, span_x, off_x, wx = _axis_windows(x1, roi_w, grid_w, PW, width)

    # bins in (roi, ph, pw) order; a bin's entries are its y-window x its x-window, row-major
    P = PH * PW
    ar = torch.arange(R, device=dev)
    gy = (ar[:, None] * PH + torch.arange(PH, device=dev)).repeat_interleave(PW, 1).reshape(-1)
    gx = (ar[:, None] * PW + torch.arange(PW, device=dev)).repeat(1, PH).reshape(-1)
    sy, sx = span_y.index_select(0, gy), span_x.index_select(0, gx)
    per_bin = sy * sx
    crow = torch.zeros(R * P + 1, dtype=torch.int64, device=dev)
    torch.cumsum(per_bin, 0, out=crow[1:])
    nnz = int(crow[-1])
    itype = torch.int32 if max(nnz, R * P, num_images * height * width) < 2**31 - 1 else torch.int64
    if nnz == 0:
        return (crow.to(itype), torch.zeros(0, dtype=itype, device=dev),
                torch.zeros(0, dtype=dtype, device=dev))
    # per-bin constants, then one expansion to the entries
    batch = rois[:, 0].to(torch.int64).repeat_interleave(P)
    col0 = batch * (height * width) + base_y.index_select(0, gy) * width
    col0 += base_x.index_select(0, gx)
    start_y = off_y.index_select(0, gy)
    start_x = off_x.index_select(0, gx)
    inv_count = (1.0 / count).repeat_interleave(P)
    b = torch.repeat_interleave(torch.arange(R * P, device=dev, dtype=itype), per_bin.to(itype),
                                output_size=nnz)
    k = torch.arange(nnz, device=dev, dtype=itype) - crow[:-1].to(itype).index_select(0, b)
    sxb = sx.to(itype).index_select(0, b)
    iy = torch.div(k, sxb, rounding_mode="floor")
    ix = k - iy * sxb
    col = col0.to(itype).index_select(0, b) + iy * width + ix
    val = wy.index_select(0, start_y.to(itype).index_select(0, b) + iy)
    val *= wx.index_select(0, start_x.to(itype).index_select(0, b) + ix)
    val *= inv_count.index_select(0, b)
    return crow.to(itype), col, val


def _transpose(crow: Tensor, col: Tensor, val: Tensor, num_cols: int):
    """CSR (rows, num_cols) -> CSR of the transpose: (ccol (num_cols + 1,), row, val)."""
    order = torch.sort(col, stable=True).indices
    num_rows = crow.shape[0] - 1
    counts = crow[1:] - crow[:-1]
    row = torch.repeat_interleave(
        torch.arange(num_rows, dtype=col.dtype, device=col.device), counts, output_size=col.numel()
    )
    ccol = torch.zeros(num_cols + 1, dtype=torch.int64, device=col.device)
    torch.cumsum(torch.bincount(col, minlength=num_cols), 0, out=ccol[1:])
    return ccol.to(col.dtype), row.index_select(0, order), val.index_select(0, order)


def _pixel_rows(x: Tensor) -> Tensor:
    """(N, C, H, W) -> (N*H*W, C) contiguous (a view if ``x`` is channels_last)."""
    N, C, H, W = x.shape
    if x.is_contiguous(memory_format=torch.channels_last):
        return x.permute(0, 2, 3, 1).reshape(N * H * W, C)
    x = x.contiguous()
    out = x.new_empty((N, H * W, C))
    for n in range(N):  # 2-D copies take torch's blocked transpose: 3x faster than a permute
        out[n].copy_(x[n].view(C, H * W).t())
    return out.view(N * H * W, C)


def _from_pixel_rows(rows: Tensor, shape) -> Tensor:
    """(N*H*W, C) -> contiguous (N, C, H, W)."""
    N, C, H, W = shape
    out = rows.new_empty((N, C, H, W))
    rows = rows.view(N, H * W, C)
    for n in range(N):
        out[n].view(C, H * W).copy_(rows[n].t())
    return out


class _ROIAlignFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input, rois, output_size, spatial_scale, sampling_ratio, aligned):
        N, C, H, W = input.shape
        PH, PW = output_size
        R = rois.shape[0]
        crow, col, val = roi_align_weights(
            rois, N, H, W, (PH, PW), spatial_scale, sampling_ratio, aligned, dtype=input.dtype
        )
        ctx.save_for_backward(crow, col, val)
        ctx.input_shape = (N, C, H, W)
        if R == 0 or C == 0 or N * H * W == 0:
            return input.new_zeros((R, C, PH, PW))
        features = _pixel_rows(input)  # (N*H*W, C)
        out = F.embedding_bag(col, features, crow[:-1], mode="sum", per_sample_weights=val)
        del features  # (a copy unless channels_last) before the (R, C, PH, PW) result
        return out.view(R, PH, PW, C).permute(0, 3, 1, 2).contiguous()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        crow, col, val = ctx.saved_tensors
        N, C, H, W = ctx.input_shape
        R = grad_output.shape[0]
        if R == 0 or C == 0 or N * H * W == 0:
            return grad_output.new_zeros((N, C, H, W)), None, None, None, None, None
        grad = grad_output.permute(0, 2, 3, 1).reshape(-1, C)  # (R*PH*PW, C)
        ccol, row, tval = _transpose(crow, col, val, N * H * W)
        grad_rows = F.embedding_bag(row, grad, ccol[:-1], mode="sum", per_sample_weights=tval)
        del grad, ccol, row, tval  # free the (R*PH*PW, C) copy before the (N, C, H, W) result
        return _from_pixel_rows(grad_rows, (N, C, H, W)), None, None, None, None, None


def roi_align_cpu(
    input: Tensor,
    rois: Tensor,
    output_size: Union[int, Tuple[int, int]],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
) -> Tensor:
    """``torchvision.ops.roi_align`` (tensor ``rois`` form) as sparse products; see the module
    docstring for the semantics.

    Args:
        input: (N, C, H, W) float32/float64 features (any device; fast on CPU).
        rois: (R, 5) [batch index, x1, y1, x2, y2] boxes in image coordinates.
        output_size: PH or (PH, PW).
        spatial_scale: feature-map pixels per image pixel (1 / stride).
        sampling_ratio: samples per bin along each axis; <= 0: ``ceil(roi_size / pooled)``.
        aligned: shift the roi by -0.5 pixel (detectron2's ROIAlignV2 / ``aligned=True``).

    Returns:
        (R, C, PH, PW) pooled features (contiguous), differentiable with respect to ``input``
        (not ``rois``, as in torchvision).
    """
    if input.dim() != 4:
        raise ValueError(
            f"roi_align_cpu: input must be (N, C, H, W), got shape {tuple(input.shape)}"
        )
    if rois.dim() != 2 or rois.shape[1] != 5:
        raise ValueError(f"roi_align_cpu: rois must be (R, 5), got shape {tuple(rois.shape)}")
    if input.dtype not in _CPU_DTYPES:
        raise ValueError(f"roi_align_cpu: input dtype {input.dtype} is not float32/float64")
    N = input.shape[0]
    if rois.shape[0] and N:
        batch = rois[:, 0].to(torch.int64)
        if bool((batch < 0).any()) or bool((batch >= N).any()):
            raise ValueError(f"roi_align_cpu: rois[:, 0] must be image indices in [0, {N})")
    return _ROIAlignFunction.apply(input, rois, _pair(output_size), float(spatial_scale),
                                   int(sampling_ratio), bool(aligned))


@dataclass
class ROIAlignChoice:
    """The outcome of timing one :class:`ROIAlignPathTuner` key (best of the rounds, ms)."""

    sparse: bool
    sparse_ms: float
    torchvision_ms: float


class ROIAlignPathTuner(CachedPathChoice):
    """Chooses, per kind of call *without autograd* (inference), between :func:`roi_align_cpu`
    and torchvision's kernel by timing both once on the call's own tensors and caching the
    choice, as ``cudnn.benchmark`` does.

    Why only without autograd: roi_align_cpu's gain is its backward (forward + backward 5-10x
    faster than torchvision's, ``benchmarks/bench_roi_align.py``), so training always takes it.
    Its forward alone rebuilds the sparse weights at every call and wins or loses against
    torchvision's single-threaded forward depending on the CPU, its threads and the rois
    (1000 rois on a 32 x 32 x 64 map, one thread, a 2-core AVX-512 VM on 2026-12-02: 23.7 ms
    against 16.6 ms, the weights 15.7 ms of it).

    A kind of call (:meth:`key`): channels, images, the map size in quarter-octave buckets of
    pixels, the roi count in half-octave buckets, output size, sampling ratio, aligned, dtype
    and thread count. roi_align_cpu is chosen only if at least ``1 - margin`` faster: ties stay
    on torchvision's, the reference. The two agree within float rounding (tests/test_roi_align.py);
    with ``torch.use_deterministic_algorithms(True)`` nothing is timed and torchvision's runs.
    Every choice is logged once, at INFO.
    """

    @staticmethod
    def key(input: Tensor, rois: Tensor, module: ROIAlign) -> tuple:
        n, c, h, w = input.shape
        return (c, n, round(4 * math.log2(max(h * w, 1))), round(2 * math.log2(rois.shape[0] + 1)),
                _pair(module.output_size), module.sampling_ratio, bool(module.aligned),
                input.dtype, torch.get_num_threads())

    def use_sparse(self, input: Tensor, rois: Tensor, module: ROIAlign) -> bool:
        """Whether ``module(input, rois)`` without autograd should run :func:`roi_align_cpu`."""
        if torch.are_deterministic_algorithms_enabled() or rois.shape[0] == 0:
            return False
        return self.choose(input, rois, module).sparse

    def _log(self, key: tuple, choice: ROIAlignChoice, input: Tensor, rois: Tensor, module):
        n, c, h, w = input.shape
        logger.info(
            "ROIAlign inference, %d rois on %dx%dx%dx%d (%s, %d threads): sparse %.2f ms, "
            "torchvision %.2f ms -> %s", rois.shape[0], n, c, h, w, str(input.dtype)[6:],
            key[-1], choice.sparse_ms, choice.torchvision_ms,
            "sparse (focal_rpn)" if choice.sparse else "torchvision",
        )

    def _time(self, input: Tensor, rois: Tensor, module: ROIAlign) -> ROIAlignChoice:
        rois = rois.to(dtype=input.dtype)
        args = (module.output_size, module.spatial_scale, module.sampling_ratio, module.aligned)
        with torch.no_grad():
            best = best_times({
                "sparse": lambda: roi_align_cpu(input, rois, *args),
                "torchvision": lambda: ROIAlign.forward(module, input, rois),
            }, self.rounds)
        return ROIAlignChoice(
            sparse=self.prefers(best["sparse"], best["torchvision"]),
            sparse_ms=best["sparse"] * 1e3, torchvision_ms=best["torchvision"] * 1e3,
        )


#: The process-wide tuner of every FastROIAlign's inference calls.
INFERENCE_TUNER = ROIAlignPathTuner()


class FastROIAlign(ROIAlign):
    """detectron2's ``ROIAlign`` (same constructor and attributes) whose forward on CPU
    float32/float64 inputs is :func:`roi_align_cpu` when a gradient is needed (training);
    without one (inference) it is the faster of the two as timed on this machine by
    :data:`INFERENCE_TUNER`. Any other input (CUDA, half, quantized) and TorchScript
    scripting/tracing take detectron2's (torchvision's) path unchanged.

    forward(input (N, C, H, W), rois (R, 5) [batch index, x1, y1, x2, y2]) -> (R, C, PH, PW).
    """

    @classmethod
    def from_roi_align(cls, module: ROIAlign) -> "FastROIAlign":
        """A FastROIAlign with ``module``'s output_size, spatial_scale, sampling_ratio, aligned
        and training mode."""
        new = cls(module.output_size, module.spatial_scale, module.sampling_ratio,
                  module.aligned)
        new.train(module.training)
        return new

    def forward(self, input: Tensor, rois: Tensor) -> Tensor:
        if (
            input.device.type == "cpu"
            and input.dtype in _CPU_DTYPES
            and not torch.jit.is_scripting()
            and not torch.jit.is_tracing()
        ):
            assert rois.dim() == 2 and rois.size(1) == 5, f"rois must be (R, 5), got {rois.shape}"
            needs_grad = torch.is_grad_enabled() and input.requires_grad
            if not needs_grad and not INFERENCE_TUNER.use_sparse(input, rois, self):
                return super().forward(input, rois)
            return roi_align_cpu(input, rois.to(dtype=input.dtype), self.output_size,
                                 self.spatial_scale, self.sampling_ratio, self.aligned)
        return super().forward(input, rois)


def use_fast_roi_align(model: torch.nn.Module) -> int:
    """Replace every submodule of ``model`` whose type is exactly detectron2's ``ROIAlign``
    (e.g. ``model.roi_heads.box_pooler.level_poolers[i]``) by a :class:`FastROIAlign` with the
    same attributes. Subclasses (ROIAlignRotated is not one) are left alone.

    Returns:
        the number of submodule slots replaced (0 if there were none).
    """
    return replace_submodules(
        model, lambda child: type(child) is ROIAlign, FastROIAlign.from_roi_align
    )

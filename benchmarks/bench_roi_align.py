"""Benchmark of focal_rpn.layers.FastROIAlign against detectron2's ROIAlign (torchvision's
CPU ``roi_align``) inside detectron2's box ``ROIPooler``, forward + backward, on CPU.

Cases (Faster R-CNN box-head scale; 256 px images, FPN levels P2-P5, 7 x 7 output,
``ROIAlignV2`` = aligned, sampling_ratio 0 as in Base-RCNN-FPN.yaml):

* ``roi_align fwd+bwd 4096 rois C=256``: a batch of 8 images, C = 256 (maps 64/32/16/8 px),
  512 rois per image;
* ``roi_align fwd+bwd 1024 rois C=128``: configs/quick_faster_rcnn_R18.yaml's training step
  (8 images x BATCH_SIZE_PER_IMAGE 128, FPN.OUT_CHANNELS 128).

Rois: widths and heights log-uniform in [8, 256] px, centres uniform in the image, clipped to
it (as detectron2 clips proposals), spread over the images evenly.

    .venv/bin/python benchmarks/bench_roi_align.py [--quick] [--repeats 5] [--threads 2]

Timing as in bench_losses.py: one warm-up call each, then ``repeats`` rounds in which ours and
the baseline run alternately; the median is reported. A round is ``out = pooler(features,
boxes); out.backward(grad)`` on fresh leaf features (the ``.grad`` allocations included);
features, boxes and ``grad`` are built outside the timed region. Peak memory: bench_losses'
``peak_memory_mb`` (tensor bytes allocated during one forward + backward, on CPU from
``torch.profiler``'s memory records).
"""
from typing import Dict, List

import torch

import bench_losses  # a sibling: benchmarks/ is on sys.path when a script here runs

IMAGE_SIZE = 256
SCALES = (1 / 4, 1 / 8, 1 / 16, 1 / 32)  # P2-P5
CASES = ((8, 256, 4096), (8, 128, 1024))  # (images, channels, rois)
QUICK_CASES = ((2, 8, 64),)
QUICK_IMAGE_SIZE = 64


def random_boxes(num: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """(num, 4) XYXY boxes: sides log-uniform in [8, size] px, clipped to the size x size image."""
    lo, hi = torch.log(torch.tensor(8.0)), torch.log(torch.tensor(float(size)))
    wh = torch.exp(lo + torch.rand(num, 2, generator=generator) * (hi - lo))
    ctr = torch.rand(num, 2, generator=generator) * size
    return torch.cat([ctr - wh / 2, ctr + wh / 2], dim=1).clamp(0, size)


def run(quick: bool = False, repeats: int = 5, memory: bool = True) -> List[Dict]:
    """Rows {case, ours_ms, baseline, baseline_ms, ratio (ours / baseline), ours_peak_mb,
    baseline_peak_mb, max_abs_diff} for pooler forward + backward, FastROIAlign vs ROIAlign."""
    from detectron2.modeling.poolers import ROIPooler
    from detectron2.structures import Boxes

    from focal_rpn.layers import use_fast_roi_align

    cpu = torch.device("cpu")
    size = QUICK_IMAGE_SIZE if quick else IMAGE_SIZE
    rows = []
    for num_images, channels, num_rois in QUICK_CASES if quick else CASES:
        gen = torch.Generator().manual_seed(0)
        feats = [torch.randn(num_images, channels, int(size * s), int(size * s), generator=gen)
                 for s in SCALES]
        boxes = [Boxes(random_boxes(num_rois // num_images, size, gen))
                 for _ in range(num_images)]
        stock = ROIPooler((7, 7), SCALES, sampling_ratio=0, pooler_type="ROIAlignV2")
        fast = ROIPooler((7, 7), SCALES, sampling_ratio=0, pooler_type="ROIAlignV2")
        assert use_fast_roi_align(fast) == len(SCALES)
        grad = torch.randn(num_rois, channels, 7, 7, generator=gen)

        def step(pooler):
            def fn():
                leaves = [f.detach().requires_grad_(True) for f in feats]
                out = pooler(leaves, boxes)
                out.backward(grad)
                return out, [f.grad for f in leaves]
            return fn

        ours, base = step(fast), step(stock)
        (out_o, grads_o), (out_b, grads_b) = ours(), base()
        diff = max([(out_o - out_b).abs().max().item()]
                   + [(a - b).abs().max().item() for a, b in zip(grads_o, grads_b)])
        rows.append(bench_losses.pair_row(
            f"roi_align fwd+bwd {num_rois} rois C={channels}", ours,
            "detectron2 ROIAlign (torchvision)", base, repeats, cpu, memory, max_abs_diff=diff,
        ))
    return rows


def format_table(rows: List[Dict]) -> str:
    return bench_losses.format_table(rows, extra=(("max diff", "max_abs_diff", "9.2e"),))


if __name__ == "__main__":
    bench_losses.layer_suite_main(__doc__, run, format_table)

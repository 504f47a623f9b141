"""Benchmark of focal_rpn.layers.winograd_conv3x3 (Winograd F(4x4, 3x3)) against ``F.conv2d``
(PyTorch's CPU convolution, oneDNN), forward + backward, float32, on CPU.

Cases (stride-1, padding-1 3x3 convolutions of RetinaNet's head, where FocalRetinaNet runs
them through ``WinogradConv2d``):

* ``winograd conv fwd+bwd 256->256 4x32x32``: a subnet conv on P3 of a 256 px image, batch 4
  (bench_models.py's retinanet_train case);
* ``winograd conv fwd+bwd 256->720 4x32x32``: the class conv there (80 classes x 9 anchors);
* ``winograd conv fwd+bwd 256->256 2x100x136``: a subnet conv on P3 of an 800 x 1088 input,
  batch 2 (the paper's R50 recipe).

    .venv/bin/python benchmarks/bench_winograd.py [--quick] [--repeats 5] [--threads 2]

and for each, ``conv3x3 auto ...``: ``WinogradConv2d`` in its default mode "auto" (the path
measured faster on this machine at its first call) against ``nn.Conv2d``: never slower.

Timing as in bench_losses.py: one warm-up call each, then ``repeats`` rounds in which ours and
the baseline run alternately; the median is reported. A round is ``y = conv(x, w, b);
y.backward(grad)`` on fresh leaves (the ``.grad`` allocations included). Peak memory:
bench_losses' ``peak_memory_mb`` (tensor bytes allocated during one forward + backward).
``max_rel_diff``: the largest difference of outputs and gradients, relative to the largest
magnitude of each.
"""
from typing import Dict, List

import torch

import bench_losses  # a sibling: benchmarks/ is on sys.path when a script here runs
import torch.nn.functional as F

CASES = ((4, 256, 256, 32, 32), (4, 256, 720, 32, 32), (2, 256, 256, 100, 136))  # N C K H W
QUICK_CASES = ((1, 256, 128, 12, 12),)


def run(quick: bool = False, repeats: int = 5, memory: bool = True) -> List[Dict]:
    """Rows {case, ours_ms, baseline, baseline_ms, ratio (ours / baseline), ours_peak_mb,
    baseline_peak_mb, max_rel_diff} for 3x3 conv forward + backward."""
    from focal_rpn.layers import winograd_conv3x3

    cpu = torch.device("cpu")
    rows = []
    for n, c, k, h, w in QUICK_CASES if quick else CASES:
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(n, c, h, w, generator=gen)
        weight = torch.randn(k, c, 3, 3, generator=gen) * (2.0 / (9 * c)) ** 0.5
        bias = torch.randn(k, generator=gen)
        grad = torch.randn(n, k, h, w, generator=gen)

        def step(conv):
            def fn():
                leaves = [t.detach().requires_grad_(True) for t in (x, weight, bias)]
                y = conv(*leaves)
                y.backward(grad)
                return [y] + [t.grad for t in leaves]
            return fn

        ours = step(winograd_conv3x3)
        base = step(lambda x_, w_, b_: F.conv2d(x_, w_, b_, padding=1))
        diff = max(((a - b).abs().max() / b.abs().max()).item()
                   for a, b in zip(ours(), base()))
        rows.append(bench_losses.pair_row(
            f"winograd conv fwd+bwd {c}->{k} {n}x{h}x{w}", ours, "F.conv2d (oneDNN)", base,
            repeats, cpu, memory, max_rel_diff=diff,
        ))
        rows.append(auto_row(x, weight, bias, grad, repeats, memory))
    return rows


def auto_row(x, weight, bias, grad, repeats, memory) -> Dict:
    """``WinogradConv2d`` in its default mode "auto" (the path TUNER measures faster here,
    chosen at the first call, a warm-up) against ``nn.Conv2d`` with the same parameters,
    forward + backward; ``chosen``: the path it took."""
    from torch import nn

    from focal_rpn.layers import TUNER, WinogradConv2d

    n, c, h, w = x.shape
    k = weight.shape[0]
    conv = nn.Conv2d(c, k, 3, padding=1)
    with torch.no_grad():
        conv.weight.copy_(weight)
        conv.bias.copy_(bias)
    auto = WinogradConv2d.from_conv(conv)  # shares the Parameters
    assert auto.mode == "auto"

    def step(module):
        def fn():
            module.zero_grad(set_to_none=True)
            leaf = x.detach().requires_grad_(True)
            y = module(leaf)
            y.backward(grad)
            return [y, leaf.grad, module.weight.grad, module.bias.grad]
        return fn

    TUNER.clear()
    ours, base = step(auto), step(conv)
    diff = max(((a - b).abs().max() / b.abs().max()).item() for a, b in zip(ours(), base()))
    (choice,) = TUNER.choices().values()
    chosen = "Winograd" if choice.winograd else "F.conv2d"
    return bench_losses.pair_row(
        f"conv3x3 auto fwd+bwd {c}->{k} {n}x{h}x{w} (chose {chosen})", ours, "nn.Conv2d",
        base, repeats, torch.device("cpu"), memory, max_rel_diff=diff, chosen=chosen,
        tuned_winograd_ms=choice.winograd_ms, tuned_conv2d_ms=choice.conv2d_ms,
    )


def format_table(rows: List[Dict]) -> str:
    return bench_losses.format_table(rows, extra=(("max rel diff", "max_rel_diff", "9.2e"),))


if __name__ == "__main__":
    bench_losses.layer_suite_main(__doc__, run, format_table)

"""Benchmark of focal_rpn.losses against fvcore / torchvision / a plain composition.

Forward + backward at RetinaNet scale: R = 120,000 anchors (times ``scale``) x 80 classes
(sigmoid, labels in [0, 80], about 1% positives) or x 81 classes (softmax, background last);
and ``sigmoid_focal_loss`` with dense targets, the fvcore drop-in: 0/1 targets with 300 ones
and soft targets uniform in [0, 1], logits N(-5, 1) (trained) and N(0, 1) (start of training).

    .venv/bin/python benchmarks/bench_losses.py [--scale 1.0] [--repeats 5] [--device cpu]

Timing: ``torch.set_num_threads(2)``, ``WARMUP_CALLS`` warm-up calls each (the steady state
of a training loop, see there), then ``repeats`` rounds in which ours and the baseline run
alternately, in swapped order every other round (so both see the same machine load); the median
of the rounds is reported. A round is ``loss = f(logits); loss.backward()`` on a fresh leaf
(the ``.grad`` allocation is included); inputs (logits, labels, one-hot targets) are built
outside the timed region.

Peak memory (``*_peak_mb``): the peak of the bytes held by tensors that were allocated during
one forward + backward (inputs excluded, the returned ``.grad`` and everything saved for
backward included). On CPU it is the running sum of the allocation/free records of
``torch.profiler`` (``profile_memory=True``; every CPU tensor allocation of PyTorch is
recorded there), taken in a separate, untimed run; on CUDA ``torch.cuda.max_memory_allocated``
minus the allocation before the run.
"""
import argparse
import statistics
import time
from typing import Callable, Dict, List

import torch
import torch.nn.functional as F

from focal_rpn.losses import sigmoid_focal_loss, sigmoid_focal_loss_with_labels, softmax_focal_loss

NUM_CLASSES = 80
BASE_ROWS = 120_000


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _fwd_bwd(loss_fn: Callable[[torch.Tensor], torch.Tensor], logits: torch.Tensor):
    def step():
        leaf = logits.detach().requires_grad_(True)
        loss = loss_fn(leaf)
        loss.backward()
        return loss, leaf.grad

    return step


#: Calls of each side before timing. A loss runs once per training iteration, so the steady
#: state is what counts; a process's first calls pay one-off costs: the softmax loss's first
#: huge-page gradient buffers took 53-76 ms against 13-15 ms from the fifth call on (2-core AMD
#: EPYC VM that had run training jobs for hours, 2026-12-02; one warm-up call made that row 1.17).
WARMUP_CALLS = 6


def _time_pair(ours, base, repeats: int, device: torch.device):
    for _ in range(WARMUP_CALLS):
        ours(), base()
    _sync(device)
    t_ours, t_base = [], []
    for r in range(repeats):  # alternately, ours first on even repeats
        pairs = ((ours, t_ours), (base, t_base))
        for fn, acc in (pairs if r % 2 == 0 else pairs[::-1]):
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            acc.append(time.perf_counter() - t0)
    return statistics.median(t_ours) * 1e3, statistics.median(t_base) * 1e3


def peak_memory_mb(fn, device: torch.device) -> float:
    """Peak MiB of tensor memory allocated by one call of fn (see the module docstring)."""
    if device.type == "cuda":
        _sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        out = fn()
        _sync(device)
        peak = torch.cuda.max_memory_allocated(device) - before
        del out
        return peak / 2**20
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = fn()
    del out
    records = [
        (e.start_ns(), e.nbytes())
        for e in prof.profiler.kineto_results.events()
        if e.name() == "[memory]" and str(e.device_type()).endswith("CPU")
    ]
    records.sort()
    cur = peak = 0
    for _, nbytes in records:
        cur += nbytes
        peak = max(peak, cur)
    return peak / 2**20


def pair_row(case, ours, baseline, base_fn, repeats, device, memory=True, **extra) -> Dict:
    """One table row: ``ours`` and ``base_fn`` (no-argument callables) timed alternately
    (:func:`_time_pair`) and, unless ``memory`` is False, their peak memory; ``extra`` keys
    (e.g. a measured difference) are added as they are."""
    ours_ms, base_ms = _time_pair(ours, base_fn, repeats, device)
    return {
        "case": case,
        "ours_ms": ours_ms,
        "baseline": baseline,
        "baseline_ms": base_ms,
        "ratio": ours_ms / base_ms,
        "ours_peak_mb": peak_memory_mb(ours, device) if memory else float("nan"),
        "baseline_peak_mb": peak_memory_mb(base_fn, device) if memory else float("nan"),
        **extra,
    }


def softmax_focal_composition(logits, labels, alpha=0.25, gamma=2.0, background_index=-1):
    """The straightforward softmax focal loss (sum): log_softmax, gather, exp, pow, multiply."""
    bg = background_index % logits.shape[1]
    logp = F.log_softmax(logits, dim=1).gather(1, labels[:, None]).squeeze(1)
    p = logp.exp()
    w = torch.where(labels == bg, 1.0 - alpha, alpha)
    return (-w * (1.0 - p).pow(gamma) * logp).sum()


def run(scale: float = 1.0, repeats: int = 5, device: str = "cpu") -> List[Dict]:
    """Rows {case, ours_ms, baseline, baseline_ms, ratio (ours / baseline), ours_peak_mb,
    baseline_peak_mb} for forward + backward of each loss against its baseline."""
    from fvcore.nn import sigmoid_focal_loss as fv_sigmoid
    from fvcore.nn import sigmoid_focal_loss_jit as fv_sigmoid_jit
    from torchvision.ops import sigmoid_focal_loss as tv_sigmoid

    torch.set_num_threads(2)
    dev = torch.device(device)
    R = max(1, int(round(BASE_ROWS * scale)))
    K = NUM_CLASSES
    gen = torch.Generator().manual_seed(0)
    logits = (torch.randn(R, K, generator=gen) * 2.0 - 4.0).to(dev)
    labels = torch.full((R,), K, dtype=torch.int64)
    pos = torch.rand(R, generator=gen) < 0.01
    labels[pos] = torch.randint(0, K, (int(pos.sum()),), generator=gen)
    labels = labels.to(dev)
    targets = F.one_hot(labels, K + 1)[:, :K].to(logits.dtype)

    ours = _fwd_bwd(lambda x: sigmoid_focal_loss_with_labels(x, labels, reduction="sum"), logits)
    rows = []
    name = f"sigmoid focal fwd+bwd {R}x{K}"
    for baseline, fn in (
        ("fvcore.nn.sigmoid_focal_loss", fv_sigmoid),
        ("fvcore.nn.sigmoid_focal_loss_jit", fv_sigmoid_jit),
        ("torchvision.ops.sigmoid_focal_loss", tv_sigmoid),
    ):
        base = _fwd_bwd(lambda x, fn=fn: fn(x, targets, 0.25, 2.0, "sum"), logits)
        rows.append(pair_row(name, ours, baseline, base, repeats, dev))
    rows += dense_rows(R, K, gen, repeats, dev, fv_sigmoid)

    C = K + 1
    logits_c = (torch.randn(R, C, generator=gen) * 2.0).to(dev)
    labels_c = labels.clone()  # background = K = C - 1 (last class)
    ours_c = _fwd_bwd(lambda x: softmax_focal_loss(x, labels_c, reduction="sum"), logits_c)
    base_c = _fwd_bwd(lambda x: softmax_focal_composition(x, labels_c), logits_c)
    rows.append(
        pair_row(
            f"softmax focal fwd+bwd {R}x{C}",
            ours_c,
            "log_softmax+gather+exp+pow+mul+sum",
            base_c,
            repeats,
            dev,
        )
    )
    return rows


#: Logits of the dense-target rows: a trained detector's (its negatives at -4 to -6) and those at
#: the start of training (around 0).
DENSE_LOGITS = (("N(-5,1)", -5.0), ("N(0,1)", 0.0))
DENSE_POSITIVES = 300  # 0/1 targets: positives among the R x K entries, as in the issue


def dense_rows(R, K, gen, repeats, dev, fv_sigmoid) -> List[Dict]:
    """``sigmoid_focal_loss`` with dense (R, K) targets against fvcore's, forward + backward,
    reduction "sum", alpha 0.25, gamma 2: 0/1 targets (DENSE_POSITIVES ones, the user
    migrating fvcore code) and soft targets (uniform in [0, 1]), for each of DENSE_LOGITS."""
    rows = []
    for dist, mean in DENSE_LOGITS:
        logits = (torch.randn(R, K, generator=gen) + mean).to(dev)
        binary = torch.zeros(R * K)
        binary[torch.randperm(R * K, generator=gen)[:DENSE_POSITIVES]] = 1.0
        soft = torch.rand(R, K, generator=gen)
        for kind, targets in (("0/1", binary.view(R, K).to(dev)), ("soft", soft.to(dev))):
            ours = _fwd_bwd(lambda x, t=targets: sigmoid_focal_loss(x, t, 0.25, 2.0, "sum"), logits)
            base = _fwd_bwd(lambda x, t=targets: fv_sigmoid(x, t, 0.25, 2.0, "sum"), logits)
            case = "sigmoid focal " + ("soft-target" if kind == "soft" else "dense 0/1")
            rows.append(pair_row(f"{case} fwd+bwd {R}x{K} logits {dist}", ours,
                                 "fvcore.nn.sigmoid_focal_loss", base, repeats, dev))
    return rows


def format_table(rows: List[Dict], extra=()) -> str:
    """A plain-text table of the rows; ``extra``: (header, key, format spec) columns appended.
    The case and baseline columns are as wide as their longest entry."""
    case_w = max([len("case")] + [len(r["case"]) for r in rows])
    base_w = max([len("baseline")] + [len(r["baseline"]) for r in rows])
    head = f"{'case':{case_w}s} {'baseline':{base_w}s} {'ours ms':>9s} {'base ms':>9s} " \
        f"{'ratio':>6s} {'ours MB':>8s} {'base MB':>8s}"
    head += "".join(f" {header:>9s}" for header, _, _ in extra)
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['case']:{case_w}s} {r['baseline']:{base_w}s} {r['ours_ms']:9.1f} "
            f"{r['baseline_ms']:9.1f} {r['ratio']:6.3f} {r['ours_peak_mb']:8.1f} "
            f"{r['baseline_peak_mb']:8.1f}"
            + "".join(f" {r[key]:{spec}}" for _, key, spec in extra)
        )
    return "\n".join(lines)



def layer_suite_main(doc: str, run, format_table) -> None:
    """Command line of a layer suite (bench_roi_align.py, bench_winograd.py) run alone:
    ``[--quick] [--repeats R] [--threads T]``, then its table."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(format_table(run(args.quick, args.repeats)))

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    print(format_table(run(args.scale, args.repeats, args.device)))

"""Training-step time of the quick recipe's model under each CPU-thread setting, on the machine
as it is (other processes included): ratios against ``--threads 1`` (OMP_WAIT_POLICY PASSIVE),
measured in the same run, settings alternating round by round.

    .venv/bin/python benchmarks/bench_threads.py               # 2 rounds x 6 timed steps
    .venv/bin/python benchmarks/bench_threads.py --rounds 3 --steps 10

Each setting runs in its own process (OMP_WAIT_POLICY is read when OpenMP loads): the model of
configs/quick_retinanet_R18.yaml, random weights, a batch of 2 random 256 px images with 3 boxes
each, forward + backward + AdamW step; the median of the timed steps after 3 warm-up steps. The
load average before each round is printed: these figures mean something only together with it.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: (label, torch threads, OMP_WAIT_POLICY or None for the OpenMP default)
SETTINGS = [
    ("threads 1, PASSIVE", 1, "PASSIVE"),
    ("threads 2, PASSIVE", 2, "PASSIVE"),
    ("threads 2, default wait (spin)", 2, None),
]


def worker(threads, steps):
    sys.path.insert(0, REPO)
    import torch

    torch.set_num_threads(threads)
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model
    from detectron2.structures import Boxes, Instances
    from detectron2.utils.events import EventStorage

    import focal_rpn

    cfg = get_cfg()
    focal_rpn.add_focal_rpn_config(cfg)
    cfg.merge_from_file(os.path.join(REPO, "configs", "quick_retinanet_R18.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    torch.manual_seed(0)
    model = build_model(cfg)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def batch():
        out = []
        for _ in range(2):
            inst = Instances((256, 256))
            inst.gt_boxes = Boxes(torch.tensor([[10., 10., 80., 90.], [100., 40., 200., 160.],
                                                [30., 150., 90., 250.]]))
            inst.gt_classes = torch.tensor([0, 2, 4])
            out.append({"image": torch.rand(3, 256, 256) * 255, "instances": inst,
                        "height": 256, "width": 256})
        return out

    times = []
    for i in range(3 + steps):
        data = batch()
        start = time.perf_counter()
        with EventStorage(i):
            losses = model(data)
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
        if i >= 3:
            times.append(time.perf_counter() - start)
    print(json.dumps({"median_s": statistics.median(times)}))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--worker-threads", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker_threads:
        return worker(args.worker_threads, args.steps)
    results = {label: [] for label, _, _ in SETTINGS}
    for r in range(args.rounds):
        for label, threads, policy in SETTINGS:
            env = {k: v for k, v in os.environ.items()
                   if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
            if policy:
                env["OMP_WAIT_POLICY"] = policy
            load = os.getloadavg()[0]
            proc = subprocess.run([sys.executable, __file__, "--worker-threads", str(threads),
                                   "--steps", str(args.steps)], capture_output=True, text=True,
                                  env=env, check=True)
            median = json.loads(proc.stdout.strip().splitlines()[-1])["median_s"]
            results[label].append(median)
            print(f"round {r + 1}: {label:32s} {median:7.3f} s/step  "
                  f"(load average before: {load:.2f})", flush=True)
    base = statistics.median(results[SETTINGS[0][0]])
    print(f"\n{os.cpu_count()} CPUs; median over rounds, ratio to '{SETTINGS[0][0]}':")
    for label, values in results.items():
        m = statistics.median(values)
        print(f"  {label:32s} {m:7.3f} s/step  ratio {m / base:5.2f}")


if __name__ == "__main__":
    main()

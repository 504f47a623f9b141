"""Kill a real `tools/train_net.py` process mid-run (SIGTERM, SIGKILL), then --resume (issue 6).

The run trains FocalRetinaNet on 64 px generated images for up to 500 iterations; the test waits
for its first checkpoint(s), kills it, checks what is on disk, and resumes for 2 more
iterations in this process."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from focal_rpn.data.synthetic import make_tiny_coco
from focal_rpn.engine import build_argument_parser, main
from focal_rpn.engine.guards import INTERRUPTED_EXIT_CODE

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs", "quick_retinanet_R18.yaml")
TRAIN_NET = os.path.join(REPO, "tools", "train_net.py")

OPTS = [
    "MODEL.DEVICE", "cpu",
    "MODEL.FPN.OUT_CHANNELS", "32",
    "MODEL.RETINANET.NUM_CONVS", "1",
    "INPUT.MIN_SIZE_TRAIN", "(64,)",
    "INPUT.MAX_SIZE_TRAIN", "128",
    "SOLVER.IMS_PER_BATCH", "2",
    "SOLVER.WARMUP_ITERS", "2",
    "SOLVER.CHECKPOINT_PERIOD", "2",
    "TEST.EVAL_PERIOD", "0",
    "DATASETS.TEST", "()",
]


@pytest.fixture(scope="module")
def dataset_arg(tmp_path_factory):
    json_file, image_root = make_tiny_coco(tmp_path_factory.mktemp("data"), num_images=8,
                                           image_size=64)
    return ["--dataset", f"reliability_signals={json_file}:{image_root}",
            "DATASETS.TRAIN", '("reliability_signals",)']


def start_training(output_dir, dataset_arg, workers):
    cmd = [sys.executable, TRAIN_NET, "--config-file", CONFIG] + dataset_arg + OPTS + [
        "SOLVER.MAX_ITER", "500", "DATALOADER.NUM_WORKERS", str(workers),
        "OUTPUT_DIR", str(output_dir)]
    log = open(os.path.join(os.path.dirname(output_dir), "train_net.log"), "w+")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, text=True,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    return proc, log


def _tagged(out, name):
    """last_checkpoint in ``out`` names ``name`` or a later checkpoint."""
    try:
        with open(os.path.join(out, "last_checkpoint")) as f:
            return f.read().strip() >= name
    except OSError:
        return False


def wait_for(path, proc, log, timeout=240, tagged=False):
    """Wait until ``path`` exists (and with ``tagged``, until last_checkpoint names it or a
    later checkpoint: the checkpointer writes the file first and the tag after it)."""
    deadline = time.monotonic() + timeout
    while not os.path.exists(path) or (tagged and not _tagged(os.path.dirname(path), os.path.basename(path))):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            log.seek(0)
            pytest.fail(f"train_net ended or stalled before writing {path}:\n"
                        + log.read()[-3000:])
        time.sleep(0.05)


def finish(proc, log, timeout=120):
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    log.seek(0)
    return log.read()


def last_checkpoint(output_dir):
    with open(os.path.join(output_dir, "last_checkpoint")) as f:
        name = f.read().strip()
    return name, torch.load(os.path.join(output_dir, name), map_location="cpu")


def resume(output_dir, dataset_arg, max_iter):
    args = build_argument_parser().parse_args(
        ["--resume", "--config-file", CONFIG] + dataset_arg + OPTS
        + ["SOLVER.MAX_ITER", str(max_iter), "DATALOADER.NUM_WORKERS", "0",
           "OUTPUT_DIR", str(output_dir)])
    main(args)
    with open(os.path.join(output_dir, "run_stats.json")) as f:
        return json.load(f)


def test_sigterm_saves_the_current_iteration_exits_143_and_resume_continues(
        tmp_path, dataset_arg):
    out = tmp_path / "out"
    proc, log = start_training(out, dataset_arg, workers=1)  # a data loader worker too
    wait_for(out / "model_0000001.pth", proc, log)
    proc.send_signal(signal.SIGTERM)
    text = finish(proc, log)
    assert proc.returncode == INTERRUPTED_EXIT_CODE, text[-3000:]
    assert "SIGTERM received: stopped after iteration" in text
    assert "Traceback" not in text
    name, checkpoint = last_checkpoint(out)
    k = checkpoint["iteration"]
    assert name == f"model_{k:07d}.pth" and k >= 1
    # the checkpoint is the last iteration the process ran (metrics.json's last row is written
    # when training ends)
    with open(out / "metrics.json") as f:
        assert [json.loads(line) for line in f][-1]["iteration"] == k
    stats = resume(out, dataset_arg, max_iter=k + 3)
    assert stats["start_iter"] == k + 1 and stats["iterations"] == 2
    assert last_checkpoint(out)[1]["iteration"] == k + 2


def test_sigkill_loses_only_the_work_since_the_last_checkpoint_and_resume_continues(
        tmp_path, dataset_arg):
    out = tmp_path / "out"
    proc, log = start_training(out, dataset_arg, workers=0)
    wait_for(out / "model_0000003.pth", proc, log, tagged=True)
    proc.send_signal(signal.SIGKILL)
    finish(proc, log)
    assert proc.returncode == -signal.SIGKILL
    name, checkpoint = last_checkpoint(out)  # complete and loadable, whenever the kill came
    k = checkpoint["iteration"]
    assert name == f"model_{k:07d}.pth" and k >= 3 and k % 2 == 1  # a periodic checkpoint
    stats = resume(out, dataset_arg, max_iter=k + 3)
    assert stats["start_iter"] == k + 1 and stats["iterations"] == 2
    assert last_checkpoint(out)[1]["iteration"] == k + 2

"""detectron2's own tools/lazyconfig_train_net.py (from the pb1-detectron2 sdist that
tools/install_detectron2.py keeps), run with only an ``import focal_rpn`` added, trains every
config of configs/lazy/ for 3 iterations on a tiny dataset, and its --eval-only evaluates.

All runs share one subprocess (the script is run once per config through runpy), so the
imports are paid once.
"""
import json
import os
import subprocess
import sys
import tarfile

import pytest

from focal_rpn.data import make_tiny_coco

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAZY_DIR = os.path.join(REPO, "configs", "lazy")
SCRIPT_IN_SDIST = "pb1-detectron2-0.6/tools/lazyconfig_train_net.py"
IMAGE_SIZE = 64
NUM_CLASSES = 6  # the synthetic shapes

# (config, its number-of-classes key) -- every config a user can train
CONFIGS = [
    ("retinanet_R50.py", "model.num_classes"),
    ("faster_rcnn_R50_FPN.py", "model.roi_heads.num_classes"),
    ("faster_rcnn_R50_FL-RPN_sigmoid.py", "model.roi_heads.num_classes"),
    ("faster_rcnn_R50_FL-RPN_softmax.py", "model.roi_heads.num_classes"),
    ("quick_retinanet_R18.py", "model.num_classes"),
    ("quick_faster_rcnn_R18.py", "model.roi_heads.num_classes"),
    ("quick_faster_rcnn_R18_FL-RPN_sigmoid.py", "model.roi_heads.num_classes"),
    ("quick_faster_rcnn_R18_FL-RPN_softmax.py", "model.roi_heads.num_classes"),
]

# Runs detectron2's script once per job; "import focal_rpn" is the only addition.
DRIVER = """
import json, runpy, sys, time
import focal_rpn
script, jobs = sys.argv[1], json.loads(sys.argv[2])
for name, argv in jobs:
    print(f"=== begin {name}", flush=True)
    start = time.perf_counter()
    sys.argv = [script] + argv
    runpy.run_path(script, run_name="__main__")
    print(f"=== end {name} after {time.perf_counter() - start:.1f} s", flush=True)
"""


def lazyconfig_train_net(tmp_dir):
    """detectron2's tools/lazyconfig_train_net.py, extracted from the cached sdist."""
    sys.path.insert(0, os.path.join(REPO, "tools"))
    try:
        import install_detectron2
    finally:
        sys.path.pop(0)
    with tarfile.open(install_detectron2.cached_sdist()) as tar:
        member = tar.getmember(SCRIPT_IN_SDIST)
        path = os.path.join(tmp_dir, "lazyconfig_train_net.py")
        with open(path, "wb") as f:
            f.write(tar.extractfile(member).read())
    return path


def overrides(classes_key, output_dir, spec):
    return [
        "train.max_iter=3",
        f"train.output_dir={output_dir}",
        "train.init_checkpoint=''",
        "train.device=cpu",
        "train.log_period=1",
        # R50 from scratch behind FrozenBN (no ImageNet weights here) diverges at lr 0.01
        "optimizer.lr=0.0001",
        f"{classes_key}={NUM_CLASSES}",
        f"dataloader.train.dataset.names.specs=['{spec}']",
        f"dataloader.test.dataset.names.specs='{spec}'",
        "dataloader.train.total_batch_size=2",
        "dataloader.train.num_workers=0",
        "dataloader.test.num_workers=0",
        f"dataloader.train.mapper.augmentations.0.short_edge_length=[{IMAGE_SIZE}]",
        f"dataloader.train.mapper.augmentations.0.max_size={IMAGE_SIZE}",
        f"dataloader.test.mapper.augmentations.0.short_edge_length={IMAGE_SIZE}",
        f"dataloader.test.mapper.augmentations.0.max_size={IMAGE_SIZE}",
    ]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Train every config (3 iterations) and evaluate its final weights with --eval-only."""
    tmp = tmp_path_factory.mktemp("lazy")
    json_file, image_root = make_tiny_coco(tmp / "tiny", num_images=4, image_size=IMAGE_SIZE)
    spec = f"tiny={json_file}:{image_root}"
    jobs = []
    for config, classes_key in CONFIGS:
        out = str(tmp / config[:-3])
        args = overrides(classes_key, out, spec)
        config_file = os.path.join(LAZY_DIR, config)
        jobs.append((f"train {config}", ["--config-file", config_file] + args))
        weights = os.path.join(out, "model_final.pth")
        jobs.append((
            f"eval {config}",
            ["--config-file", config_file, "--eval-only"]
            + [a for a in args if not a.startswith("train.init_checkpoint")]
            + [f"train.init_checkpoint={weights}"],
        ))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]))
    script = lazyconfig_train_net(str(tmp))
    proc = subprocess.run(
        [sys.executable, "-c", DRIVER, script, json.dumps(jobs)],
        capture_output=True, text=True, env=env, cwd=str(tmp), timeout=600,
    )
    log = proc.stdout + proc.stderr
    (tmp / "log.txt").write_text(log)
    assert proc.returncode == 0, log[-6000:]
    sections = {}
    for name, _ in jobs:
        begin, end = log.index(f"=== begin {name}"), log.index(f"=== end {name}")
        sections[name] = log[begin:end]
    return tmp, sections


def test_script_is_detectron2s_own(tmp_path):
    text = open(lazyconfig_train_net(str(tmp_path))).read()
    assert "focal_rpn" not in text and "def do_train(args, cfg):" in text


@pytest.mark.parametrize("config", [c for c, _ in CONFIGS])
def test_trains_three_iterations_and_evaluates(runs, config):
    tmp, sections = runs
    out = tmp / config[:-3]
    metrics = [json.loads(line) for line in open(out / "metrics.json")]
    losses = [m for m in metrics if "total_loss" in m]
    assert [m["iteration"] for m in losses] == [0, 1, 2]
    assert all(0 < m["total_loss"] < 1e4 for m in losses)
    assert (out / "model_final.pth").is_file()
    # the evaluation after training and the --eval-only one both report COCO box AP
    assert any("bbox/AP" in m for m in metrics)
    evaluated = sections[f"eval {config}"]
    assert "Loading from" in evaluated or "model_final.pth" in evaluated
    assert "'bbox'" in evaluated and "'AP'" in evaluated, evaluated[-3000:]

"""Fault injection for training (issue 6), in this process: exact resume of the loss curve,
determinism, NaN/inf losses, atomic checkpoints, safe checkpoint loading, images without
annotations, bad config and data met during training. Kills of a real train_net process are in
test_reliability_signals.py. Bad dataset files (json, categories, NUM_CLASSES, degenerate
boxes, corrupt images at the mapper) are covered by test_data.py.

Every run is tiny: 64 px generated images, 2 images per batch, a few iterations, ResNet-18
with 32 FPN channels."""
import os
import pickle
import re
import signal
import subprocess
import sys

import pytest
import torch

from detectron2.engine import HookBase
from detectron2.utils.events import EventStorage

from focal_rpn.data.datasets import ImageReadError, register_coco_dataset
from focal_rpn.data.synthetic import make_tiny_coco
from focal_rpn.engine import Trainer, build_argument_parser, build_config, prepare_datasets, setup
from focal_rpn.engine.checkpoint import AtomicCheckpointer, CheckpointLoadError, NonFiniteWeightsError
from focal_rpn.engine.config_merge import ConfigError
from focal_rpn.engine.guards import INTERRUPTED_EXIT_CODE, NonFiniteLossError, TrainingInterrupted
from focal_rpn.modeling.retinanet import FocalRetinaNet
from focal_rpn.modeling.rpn import FocalRPN

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tiny_models import batched_inputs, tiny_model  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(REPO, "configs")
TRAIN_NET = os.path.join(REPO, "tools", "train_net.py")

DATA = "reliability_tiny"
TINY_OPTS = [
    "MODEL.DEVICE", "cpu",
    "MODEL.FPN.OUT_CHANNELS", "32",
    "MODEL.RETINANET.NUM_CONVS", "1",
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "32",
    "MODEL.ROI_BOX_HEAD.FC_DIM", "64",
    "MODEL.RPN.POST_NMS_TOPK_TRAIN", "100",
    "INPUT.MIN_SIZE_TRAIN", "(64,)",
    "INPUT.MAX_SIZE_TRAIN", "128",
    "SOLVER.IMS_PER_BATCH", "2",
    "SOLVER.WARMUP_ITERS", "2",
    "SOLVER.CHECKPOINT_PERIOD", "1000",
    "TEST.EVAL_PERIOD", "0",
    "DATALOADER.NUM_WORKERS", "0",
    "DATASETS.TRAIN", f'("{DATA}",)',
    "DATASETS.TEST", "()",
    "SEED", "7",
]
QUICK_CONFIGS = {
    "focal_retinanet": "quick_retinanet_R18.yaml",
    "faster_rcnn_rpn": "quick_faster_rcnn_R18.yaml",
    "fl_rpn_sigmoid": "quick_faster_rcnn_R18_FL-RPN_sigmoid.yaml",
    "fl_rpn_softmax": "quick_faster_rcnn_R18_FL-RPN_softmax.yaml",
}


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    """8 generated 64 px images (all square: one aspect-ratio group) registered as DATA."""
    json_file, image_root = make_tiny_coco(tmp_path_factory.mktemp("data"), num_images=8,
                                           image_size=64)
    register_coco_dataset(DATA, json_file, image_root)
    return json_file, image_root


def parse(config, output_dir, *opts, resume=False):
    argv = (["--resume"] if resume else []) + ["--config-file", os.path.join(CONFIGS, config)]
    return build_argument_parser().parse_args(
        argv + TINY_OPTS + list(opts) + ["OUTPUT_DIR", str(output_dir)])


class _Recorder(HookBase):
    """Every loss of every iteration, unsmoothed, as detectron2 logs them."""

    def __init__(self):
        self.losses = {}

    def after_train(self):  # also after an exception (hooks after the failing one skip steps)
        for name, history in self.trainer.storage.histories().items():
            if name.startswith("loss") or name == "total_loss":
                for value, it in history.values():
                    self.losses.setdefault(it, {})[name] = value


def train(config, output_dir, *opts, resume=False, hooks=()):
    """train_net's training path (setup, datasets, Trainer, resume_or_load, train) in this
    process; returns ({iteration: {loss name: value}}, trainer). Exceptions propagate with the
    recorded losses attached as ``.losses``."""
    args = parse(config, output_dir, *opts, resume=resume)
    cfg = setup(args)
    prepare_datasets(cfg, args)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=resume)
    recorder = _Recorder()
    trainer.register_hooks([recorder, *hooks])
    try:
        trainer.train()
    except BaseException as e:
        e.losses = recorder.losses
        raise
    return recorder.losses, trainer


class _SendSignalAt(HookBase):
    """Sends ``signum`` to this process before iteration ``iteration`` (as ``kill`` would)."""

    def __init__(self, iteration, signum=signal.SIGTERM):
        self.iteration, self.signum = iteration, signum

    def before_step(self):
        if self.trainer.iter == self.iteration:
            os.kill(os.getpid(), self.signum)


def read_last_checkpoint(output_dir):
    with open(os.path.join(output_dir, "last_checkpoint")) as f:
        return f.read().strip()


# ----------------------------------------------------------------------------- exact resume


@pytest.mark.parametrize("model,workers", [("focal_retinanet", "1"), ("fl_rpn_sigmoid", "0")])
def test_sigterm_interrupted_and_resumed_loss_curve_equals_uninterrupted(
        tiny_data, tmp_path, model, workers):
    """SIGTERM after iteration 2 of 5, then --resume: iterations 3 and 4 have exactly the
    losses of the run that was never interrupted (data order, augmentation, RPN/ROI sampling,
    optimizer momentum, LR schedule, loss normaliser all restored). With a data loader worker
    for FocalRetinaNet: augmentation must not depend on which process maps a sample."""
    config = QUICK_CONFIGS[model]
    opts = ["SOLVER.MAX_ITER", "5", "DATALOADER.NUM_WORKERS", workers]
    full, _ = train(config, tmp_path / "full", *opts)
    assert sorted(full) == [0, 1, 2, 3, 4]

    out = tmp_path / "interrupted"
    with pytest.raises(TrainingInterrupted) as stop:
        train(config, out, *opts, hooks=[_SendSignalAt(2)])
    assert stop.value.code == INTERRUPTED_EXIT_CODE and stop.value.iteration == 2
    assert sorted(stop.value.losses) == [0, 1, 2]
    assert read_last_checkpoint(out) == "model_0000002.pth"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handler removed after training

    resumed, trainer = train(config, out, *opts, resume=True)
    assert trainer.start_iter == 3 and sorted(resumed) == [3, 4]
    for it in (0, 1, 2):
        assert stop.value.losses[it] == full[it], f"iteration {it} before the interruption"
    for it in (3, 4):
        assert resumed[it] == full[it], f"iteration {it} after --resume"


# ----------------------------------------------------------------------------- determinism


@pytest.mark.parametrize("model", sorted(QUICK_CONFIGS))
def test_same_seed_gives_same_losses(tiny_data, tmp_path, model):
    first, _ = train(QUICK_CONFIGS[model], tmp_path / "a", "SOLVER.MAX_ITER", "3")
    second, _ = train(QUICK_CONFIGS[model], tmp_path / "b", "SOLVER.MAX_ITER", "3")
    assert sorted(first) == [0, 1, 2]
    assert first == second
    if model == "focal_retinanet":  # the seed matters: another one gives other losses
        other, _ = train(QUICK_CONFIGS[model], tmp_path / "c", "SOLVER.MAX_ITER", "1",
                         "SEED", "8")
        assert other[0]["total_loss"] != first[0]["total_loss"]


# ----------------------------------------------------------------------------- NaN / inf


def _poison(monkeypatch, cls, term, value, at_iteration):
    """Make ``cls.losses`` return ``value`` for ``term`` from ``at_iteration`` on."""
    losses = cls.losses

    def poisoned(self, *args, **kwargs):
        out = losses(self, *args, **kwargs)
        from detectron2.utils.events import get_event_storage

        if get_event_storage().iter >= at_iteration:
            out[term] = out[term] * value
        return out

    monkeypatch.setattr(cls, "losses", poisoned)


@pytest.mark.parametrize("model,cls,term,value,shown", [
    ("focal_retinanet", FocalRetinaNet, "loss_cls", float("nan"), "loss_cls is nan"),
    ("fl_rpn_softmax", FocalRPN, "loss_rpn_cls", float("inf"), "loss_rpn_cls is inf"),
])
def test_non_finite_loss_stops_naming_iteration_and_term_and_keeps_checkpoint_finite(
        tiny_data, tmp_path, monkeypatch, model, cls, term, value, shown):
    _poison(monkeypatch, cls, term, value, at_iteration=3)
    with pytest.raises(NonFiniteLossError) as err:
        train(QUICK_CONFIGS[model], tmp_path, "SOLVER.MAX_ITER", "10",
              "SOLVER.CHECKPOINT_PERIOD", "2")
    message = str(err.value)
    assert message.startswith(f"iteration 3: {shown}"), message
    assert "model_0000001.pth" in message  # where to resume from
    assert sorted(err.value.losses) == [0, 1, 2]  # iteration 3 never reached the optimizer
    assert read_last_checkpoint(tmp_path) == "model_0000001.pth"
    assert not os.path.exists(tmp_path / "model_0000003.pth")
    checkpoint = torch.load(tmp_path / "model_0000001.pth", map_location="cpu")
    for name, tensor in checkpoint["model"].items():
        if tensor.is_floating_point():
            assert torch.isfinite(tensor).all(), name


# ----------------------------------------------------------------------------- checkpoints


def _checkpointer(tmp_path, seed=0):
    model = tiny_model("retinanet_R50.yaml", seed=seed)
    return model, AtomicCheckpointer(model, str(tmp_path))


def test_checkpointer_refuses_non_finite_weights_and_keeps_the_previous_one(tmp_path):
    model, checkpointer = _checkpointer(tmp_path)
    checkpointer.save("model_0000001", iteration=1)
    with torch.no_grad():
        model.head.cls_score.bias[3] = float("nan")
    with pytest.raises(NonFiniteWeightsError) as err:
        checkpointer.save("model_0000003", iteration=3)
    assert "'head.cls_score.bias' has 1 NaN/inf values" in str(err.value)
    assert "model_0000001.pth" in str(err.value)
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000001.pth"]


def test_failure_inside_torch_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    """A save that dies half-way (here: torch.save writes part of the file, then raises)
    leaves the previous file of the same name and the last_checkpoint tag intact."""
    model, checkpointer = _checkpointer(tmp_path)
    checkpointer.save("model_final", iteration=1)
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)

    def dying_save(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt("killed while saving")

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        checkpointer.save("model_final", iteration=2)
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_final.pth"]  # no temp
    fresh, loader = _checkpointer(tmp_path, seed=1)
    assert loader.resume_or_load("", resume=True)["iteration"] == 1
    for k, v in fresh.state_dict().items():
        assert torch.equal(v, saved[k]), k


KILL_DURING_SAVE = r"""
import os, signal, sys, torch
sys.path.insert(0, {tests!r})
from tiny_models import tiny_model
from focal_rpn.engine.checkpoint import AtomicCheckpointer
model = tiny_model("retinanet_R50.yaml")
checkpointer = AtomicCheckpointer(model, {out!r})
checkpointer.save("model_final", iteration=1)
with torch.no_grad():
    for p in model.parameters():
        p.add_(1.0)
real_save = torch.save
def save_and_die(obj, f, *args, **kwargs):
    real_save(obj, f, *args, **kwargs)
    f.flush()
    f.truncate(f.tell() // 2)       # the kernel wrote half of it ...
    os.kill(os.getpid(), signal.SIGKILL)  # ... when the process was killed
torch.save = save_and_die
checkpointer.save("model_final", iteration=2)
"""


def test_sigkill_during_checkpoint_save_leaves_the_previous_checkpoint_loadable(tmp_path):
    out = tmp_path / "out"
    script = KILL_DURING_SAVE.format(tests=os.path.dirname(os.path.abspath(__file__)),
                                     out=str(out))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert read_last_checkpoint(out) == "model_final.pth"
    leftovers = [f for f in os.listdir(out) if f.startswith(".")]
    assert len(leftovers) == 1  # the killed save's temporary file, never named as a checkpoint
    model, checkpointer = _checkpointer(out, seed=1)
    expected = tiny_model("retinanet_R50.yaml").state_dict()  # the first save's weights
    assert checkpointer.resume_or_load("", resume=True)["iteration"] == 1
    for k, v in model.state_dict().items():
        assert torch.equal(v, expected[k]), k
    checkpointer.save("model_0000004", iteration=4)  # the next save removes the leftover
    assert not [f for f in os.listdir(out) if f.startswith(".")]


def test_checkpoints_load_under_torch_weights_only_default(tiny_data, tmp_path):
    train(QUICK_CONFIGS["fl_rpn_sigmoid"], tmp_path, "SOLVER.MAX_ITER", "1")
    # torch >= 2.6 defaults to weights_only=True: a checkpoint with arbitrary objects fails it
    checkpoint = torch.load(tmp_path / "model_final.pth")
    assert checkpoint["iteration"] == 0
    assert checkpoint["trainer"]["_trainer"]["optimizer"]["state"]  # momentum is saved
    assert checkpoint["trainer"]["data_seed"] == 7


class _NotATensor:
    pass


def test_checkpoint_with_python_objects_is_refused_not_unpickled(tmp_path):
    model, checkpointer = _checkpointer(tmp_path)
    path = tmp_path / "model_evil.pth"
    torch.save({"model": model.state_dict(), "extra": _NotATensor()}, path)
    with pytest.raises(pickle.UnpicklingError):  # torch >= 2.6's default refuses it too
        torch.load(path)
    with pytest.raises(CheckpointLoadError) as err:
        checkpointer.load(str(path))
    assert str(path) in str(err.value) and "weights_only" in str(err.value)


def test_truncated_checkpoint_names_the_file_and_the_others(tmp_path):
    model, checkpointer = _checkpointer(tmp_path)
    checkpointer.save("model_0000001", iteration=1)
    data = (tmp_path / "model_0000001.pth").read_bytes()
    (tmp_path / "model_0000003.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointLoadError) as err:
        checkpointer.load(str(tmp_path / "model_0000003.pth"))
    assert "model_0000003.pth' is truncated or corrupt" in str(err.value)
    assert "model_0000001.pth" in str(err.value)


# ----------------------------------------------------------------------------- empty images


@pytest.mark.parametrize("config,opts,box_losses", [
    ("retinanet_R50.yaml", [], ["loss_box_reg"]),
    ("retinanet_R50.yaml", ["MODEL.FOCAL_RETINANET.ACTIVATION", "softmax"], ["loss_box_reg"]),
    ("faster_rcnn_R50_FL-RPN_sigmoid.yaml", [], ["loss_rpn_loc", "loss_box_reg"]),
    ("faster_rcnn_R50_FL-RPN_softmax.yaml", [], ["loss_rpn_loc", "loss_box_reg"]),
], ids=["retinanet_sigmoid", "retinanet_softmax", "fl_rpn_sigmoid", "fl_rpn_softmax"])
def test_images_without_annotations_train_as_pure_background(config, opts, box_losses):
    """Zero positives: box regression losses are exactly 0, classification losses are finite
    and positive (they push every anchor / proposal towards background), gradients finite."""
    model = tiny_model(config, opts)
    model.train()
    with EventStorage():
        losses = model(batched_inputs(num_boxes=0))
    for key, value in losses.items():
        assert torch.isfinite(value), f"{key} = {value}"
    for key in box_losses:
        assert losses[key].item() == 0.0, f"{key} = {losses[key]} without positives"
    cls_losses = [k for k in losses if k not in box_losses]
    assert cls_losses and all(losses[k].item() > 0 for k in cls_losses), losses
    sum(losses.values()).backward()
    for name, p in model.named_parameters():
        if p.grad is not None:
            assert torch.isfinite(p.grad).all(), name


# ----------------------------------------------------------------------------- bad input


def test_image_missing_at_training_time_names_the_file(tmp_path):
    """An image deleted after the dataset was registered: training stops at that image with
    an error naming it, also through a data loader worker."""
    json_file, image_root = make_tiny_coco(tmp_path / "data", num_images=2, image_size=64)
    register_coco_dataset("reliability_vanishing", json_file, image_root)
    missing = os.path.join(image_root, sorted(os.listdir(image_root))[1])
    os.remove(missing)
    with pytest.raises(ImageReadError, match=re.escape(missing)):
        train(QUICK_CONFIGS["focal_retinanet"], tmp_path / "out", "SOLVER.MAX_ITER", "2",
              "DATALOADER.NUM_WORKERS", "1", "DATASETS.TRAIN", '("reliability_vanishing",)')


def test_unknown_config_key_names_the_key_and_a_suggestion(tmp_path):
    config = tmp_path / "typo.yaml"
    config.write_text(f'_BASE_: "{os.path.join(CONFIGS, "quick_retinanet_R18.yaml")}"\n'
                      "MODEL:\n  RETINANET:\n    NUM_CLASES: 3\n")
    with pytest.raises(ConfigError) as err:
        build_config(build_argument_parser().parse_args(["--config-file", str(config)]))
    message = str(err.value)
    assert str(config) in message and "'MODEL.RETINANET.NUM_CLASES'" in message
    assert "MODEL.RETINANET.NUM_CLASSES" in message  # the suggestion
    with pytest.raises(ConfigError, match="command-line option.*'SOLVER.BASE_LRR'"):
        build_config(build_argument_parser().parse_args(
            ["--config-file", os.path.join(CONFIGS, "quick_retinanet_R18.yaml"),
             "SOLVER.BASE_LRR", "0.1"]))


def test_missing_config_file_exits_with_a_message_not_a_traceback(tmp_path):
    missing = tmp_path / "no_such_config.yaml"
    proc = subprocess.run([sys.executable, TRAIN_NET, "--config-file", str(missing)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert f"train_net: error: config file '{missing}' does not exist" in proc.stderr

"""focal_rpn.d2_adapter: every private detectron2 name the plugin uses, one test per item, run on
the installed detectron2 (the suite runs on v0.6 and on main: `.ci/run`). Each test checks what
the adapter assumes about the private name, so it fails on a detectron2 where that changes.

Which detectron2 is installed is told by feature (both say ``__version__ = "0.6"``): main has
``comm.create_local_process_group``."""
import importlib
import inspect
import multiprocessing
import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
from detectron2.config import get_cfg
from detectron2.engine import DefaultTrainer, SimpleTrainer, TrainerBase
from detectron2.engine import defaults as d2_defaults
from detectron2.evaluation import coco_evaluation
from detectron2.modeling import RetinaNet
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.structures import Boxes
from detectron2.solver import build_lr_scheduler
from detectron2.utils import comm
from detectron2.utils.events import CommonMetricPrinter, EventStorage

from focal_rpn import d2_adapter
from focal_rpn.engine.launch import create_local_process_group

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tiny_models import tiny_model  # noqa: E402

IS_MAIN = hasattr(comm, "create_local_process_group")
ON_MAIN = pytest.mark.skipif(not IS_MAIN, reason="detectron2 main only (v0.6 installed)")
ON_V06 = pytest.mark.skipif(IS_MAIN, reason="detectron2 v0.6 only (main installed)")


# ----------------------------------------------------------------------------- modeling


def test_dense_box_regression_loss_is_what_stock_retinanet_calls():
    assert "_dense_box_regression_loss" in RetinaNet.losses.__code__.co_names
    anchors = [Boxes(torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 5.0, 20.0, 20.0]]))]
    gt = [torch.tensor([[1.0, 1.0, 11.0, 11.0], [5.0, 5.0, 20.0, 20.0]])]
    deltas = [torch.zeros(1, 2, 4)]
    fg = torch.tensor([[True, True]])
    loss = d2_adapter.dense_box_regression_loss(
        anchors, Box2BoxTransform((1.0, 1.0, 1.0, 1.0)), deltas, gt, fg,
        box_reg_loss_type="smooth_l1", smooth_l1_beta=0.0)
    # anchor 0 is off by 1 px at both corners of a 10 px box: deltas (0.1, 0.1, 0, 0) -> L1 0.2
    assert float(loss) == pytest.approx(0.2, abs=1e-5)


def test_transpose_dense_predictions_gives_hwa_order():
    from detectron2.modeling.meta_arch.dense_detector import DenseDetector

    assert hasattr(DenseDetector, "_transpose_dense_predictions")
    n, a, d, h, w = 2, 3, 4, 5, 6
    x = torch.arange(n * a * d * h * w, dtype=torch.float32).reshape(n, a * d, h, w)
    model = tiny_model("retinanet_R50.yaml")
    (out,) = d2_adapter.transpose_dense_predictions(model, [[x]], [d])
    expected = x.view(n, a, d, h, w).permute(0, 3, 4, 1, 2).reshape(n, h * w * a, d)
    assert len(out) == 1 and torch.equal(out[0], expected)


def test_rpn_samples_anchor_labels_through_subsample_labels():
    from detectron2.modeling.proposal_generator.rpn import RPN

    from focal_rpn.modeling.rpn import FocalRPN

    assert "self._subsample_labels(" in inspect.getsource(RPN.label_and_sample_anchors)
    label = torch.tensor([1, 0, 0, -1, 0, 1])
    assert torch.equal(FocalRPN.sample_anchor_labels(None, label.clone()), label)


def test_every_private_detectron2_name_is_in_the_adapter():
    lister = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools",
                          "list_d2_private_names.py")
    proc = subprocess.run([sys.executable, lister], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "_max_iter" in proc.stdout and "_last_eval_results" in proc.stdout  # it finds them


# ----------------------------------------------------------------------------- trainer


def test_optimizer_state_in_checkpoints_is_detected():
    saves = "_trainer" in inspect.getsource(DefaultTrainer.state_dict)
    assert d2_adapter.DEFAULT_TRAINER_SAVES_OPTIMIZER == saves
    if not saves:  # v0.6: the adapter adds the inner trainer's state, which holds the optimizer
        assert DefaultTrainer.state_dict is TrainerBase.state_dict
        assert "optimizer" in inspect.getsource(SimpleTrainer.state_dict)
        assert "self._trainer = " in inspect.getsource(DefaultTrainer.__init__)


@ON_MAIN
def test_main_saves_the_optimizer_state_itself():
    assert d2_adapter.DEFAULT_TRAINER_SAVES_OPTIMIZER


@ON_V06
def test_v06_leaves_the_optimizer_state_out():
    assert not d2_adapter.DEFAULT_TRAINER_SAVES_OPTIMIZER


def test_last_eval_results_is_where_default_trainer_keeps_them():
    assert "self._last_eval_results = self.test(" in inspect.getsource(DefaultTrainer.build_hooks)
    assert "_last_eval_results" in inspect.getsource(DefaultTrainer.train)


def test_ddp_wrapping_is_looked_up_in_detectron2_defaults_at_construction():
    # the adapter replaces the module global only while DefaultTrainer.__init__ runs
    assert "create_ddp_model" in DefaultTrainer.__init__.__code__.co_names
    assert "device_ids" in inspect.getsource(d2_defaults.create_ddp_model)
    before = d2_defaults.create_ddp_model
    with d2_adapter.ddp_without_device_ids_on_cpu():  # one process: nothing to change
        assert d2_defaults.create_ddp_model is before
    assert d2_defaults.create_ddp_model is before


# ----------------------------------------------------------------------------- run length


def _lr_scheduler(max_iter=100, steps=(80,)):
    cfg = get_cfg()
    cfg.SOLVER.MAX_ITER, cfg.SOLVER.STEPS, cfg.SOLVER.WARMUP_ITERS = max_iter, steps, 0
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    return optimizer, build_lr_scheduler(cfg, optimizer)


def test_shortened_scheduler_moves_the_steps_to_the_same_fraction():
    optimizer, scheduler = _lr_scheduler()
    assert d2_adapter.scheduler_length_settable(scheduler)
    d2_adapter.set_scheduler_length(scheduler, 10)  # the step at 80% is now at iteration 8
    lrs = []
    for _ in range(10):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[:8] == pytest.approx([1.0] * 8) and lrs[8:] == pytest.approx([0.1] * 2)


def test_metric_printer_eta_follows_the_new_length():
    printer = CommonMetricPrinter(max_iter=1000)
    d2_adapter.set_metric_printer_length(printer, 10)
    with EventStorage(0) as storage:
        for it in range(6):
            storage.iter = it
            storage.put_scalar("time", 2.0)
            storage.put_scalar("lr", 0.1)
        printer.write()
        eta = storage.latest()["eta_seconds"][0]
    assert eta == pytest.approx(2.0 * (10 - 5 - 1))


# ----------------------------------------------------------------------------- launch


def _report_world(path):
    with open(f"{path}.{comm.get_rank()}", "w") as f:
        f.write(f"{comm.get_world_size()} {dist.get_backend()} {comm.get_local_size()}")


def test_launch_cpu_support_is_detected(tmp_path):
    """detectron2's own launch with 2 CPU processes: works where the adapter says it does."""
    from detectron2.engine import launch

    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA (launch then picks NCCL)")
    path = str(tmp_path / "world")
    if d2_adapter.LAUNCH_SUPPORTS_CPU:
        launch(_report_world, 2, dist_url="auto", args=(path,))
        for rank in (0, 1):
            with open(f"{path}.{rank}") as f:
                assert f.read() == "2 gloo 2"
    else:
        with pytest.raises(Exception, match="cuda is not available"):
            launch(_report_world, 2, dist_url="auto", args=(path,))


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _local_group_twice(path):
    """In one process: a gloo group, detectron2's local group, destroyed, and again."""
    from focal_rpn.engine import launch as focal_launch

    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1",
                      MASTER_ADDR="127.0.0.1")
    sizes = []
    for _ in range(2):
        os.environ["MASTER_PORT"] = str(_free_port())
        focal_launch._run_distributed(
            lambda args: sizes.append((comm.get_local_rank(), comm.get_local_size())), None)
    with open(path, "w") as f:
        f.write(repr(sizes))


def test_local_process_group_is_made_and_forgotten(tmp_path):
    # a fresh process: torch.distributed state is per process
    path = str(tmp_path / "sizes")
    proc = multiprocessing.get_context("spawn").Process(target=_local_group_twice, args=(path,))
    proc.start()
    proc.join(120)
    assert proc.exitcode == 0
    with open(path) as f:
        assert f.read() == "[(0, 1), (0, 1)]"
    assert d2_adapter.HAS_CREATE_LOCAL_PROCESS_GROUP == IS_MAIN
    if not IS_MAIN:  # v0.6's launch sets the module global that the adapter sets
        launch_module = importlib.import_module("detectron2.engine.launch")
        assert "comm._LOCAL_PROCESS_GROUP = pg" in inspect.getsource(launch_module)


def test_create_local_process_group_checks_the_layout():
    with pytest.raises(ValueError, match="LOCAL_WORLD_SIZE 3"):
        create_local_process_group(4, 3, 0)


# ----------------------------------------------------------------------------- evaluation


def test_coco_evaluator_looks_the_fast_cocoeval_up_in_its_module():
    # the class is chosen at evaluation time from the module global and the instance flag
    assert "COCOeval_opt if " in inspect.getsource(coco_evaluation)
    source = inspect.getsource(coco_evaluation.COCOEvaluator._eval_predictions)
    assert "self._use_fast_impl" in source and "self._derive_coco_results(" in source
    assert hasattr(coco_evaluation, "COCOeval_opt") and hasattr(coco_evaluation, "COCOeval")


@ON_MAIN
def test_main_without_cpp_falls_back_to_pycocotools_unless_the_adapter_switches():
    # the reason the adapter sets _use_fast_impl: main turns it off when COCOeval_opt is missing
    assert coco_evaluation.COCOeval_opt is coco_evaluation.COCOeval
    source = inspect.getsource(coco_evaluation.COCOEvaluator.__init__)
    assert "COCOeval_opt is COCOeval" in source and "use_fast_impl = False" in source


# ----------------------------------------------------------------------------- checkpoints


def test_checkpoint_files_are_read_through_load_file():
    from detectron2.checkpoint import DetectionCheckpointer
    from fvcore.common.checkpoint import Checkpointer

    assert "_load_file" in Checkpointer.load.__code__.co_names
    assert "_load_file" in DetectionCheckpointer.__dict__

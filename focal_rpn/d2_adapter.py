"""Every private detectron2 name that focal_rpn reads or writes, with the reason, in one place.

focal_rpn extends detectron2 through its public seams (``build_*`` classmethods, hooks,
subclasses, constructor arguments). What follows has no public seam in detectron2 v0.6 or in
detectron2 main (commit 02b5c4e, which still says ``__version__ = "0.6"``); each item says why
it is needed and how the two versions differ, which is told by feature, never by version string.
``tests/test_d2_adapter.py`` has a test per item that fails on the detectron2 where the private
name stops meaning what the item assumes.
"""
import contextlib
import functools
import inspect

import torch
from detectron2.engine import DefaultTrainer
from detectron2.engine import defaults as _d2_defaults
from detectron2.engine import launch as d2_launch
from detectron2.evaluation import COCOEvaluator
from detectron2.evaluation import coco_evaluation as _d2_coco_evaluation
from detectron2.modeling.box_regression import _dense_box_regression_loss
from detectron2.utils import comm

# ----------------------------------------------------------------------------- modeling

#: detectron2's dense-detector box loss (smooth L1 / GIoU / DIoU / CIoU by
#: MODEL.*.BBOX_REG_LOSS_TYPE) over all levels. detectron2's RetinaNet, FCOS and RPN call it and
#: it has no public name; FocalRetinaNet and FocalRPN call the same function so that their box
#: loss is stock detectron2's, bit for bit. Same signature in v0.6 and main.
dense_box_regression_loss = _dense_box_regression_loss


def transpose_dense_predictions(model, predictions, dims_per_anchor):
    """``DenseDetector._transpose_dense_predictions``: per-level (N, A*D, Hi, Wi) head outputs
    to (N, Hi*Wi*A, D), the layout detectron2's RetinaNet losses and inference use. It is a
    (private) method of DenseDetector, which FocalRetinaNet subclasses; calling it keeps the
    anchor order identical to stock RetinaNet. Same in v0.6 and main."""
    return model._transpose_dense_predictions(predictions, dims_per_anchor)


class RPNWithAnchorSamplingSeam:
    """Mixin for a subclass of detectron2's ``RPN``: the per-image sampling of anchor labels is
    the public method ``sample_anchor_labels(label)`` (default: detectron2's).

    ``RPN.label_and_sample_anchors`` calls the private ``_subsample_labels(label)`` on each
    image's (R,) label vector (1, 0, -1); it is the only place where the sampling can be
    changed without copying the labelling. FL-RPN trains on every anchor and overrides
    ``sample_anchor_labels``. Same in v0.6 and main.
    """

    def _subsample_labels(self, label):
        return self.sample_anchor_labels(label)

    def sample_anchor_labels(self, label):
        return super()._subsample_labels(label)


# ----------------------------------------------------------------------------- trainer

#: Whether detectron2's DefaultTrainer saves its inner SimpleTrainer's state (the optimizer,
#: AMP's grad scaler) under the checkpoint key "_trainer" (main: yes; v0.6: no, so momentum
#: restarted at zero on --resume). Told by DefaultTrainer defining ``state_dict`` itself.
DEFAULT_TRAINER_SAVES_OPTIMIZER = "state_dict" in DefaultTrainer.__dict__


def inner_trainer_state(trainer):
    """The state of DefaultTrainer's inner SimpleTrainer/AMPTrainer (``trainer._trainer``, no
    public accessor): ``{"optimizer": ...}`` (+ ``"grad_scaler"``). For v0.6 only (see above)."""
    return trainer._trainer.state_dict()


def load_inner_trainer_state(trainer, state):
    trainer._trainer.load_state_dict(state)


def last_eval_results(trainer):
    """The results of the final evaluation: DefaultTrainer stores them in
    ``_last_eval_results`` and returns them from ``train()`` only with TEST.EXPECTED_RESULTS.
    None when no evaluation ran. Same in v0.6 and main."""
    return getattr(trainer, "_last_eval_results", None)


@contextlib.contextmanager
def ddp_without_device_ids_on_cpu():
    """While constructing a DefaultTrainer: on CPU with several processes, wrap the model with
    ``DistributedDataParallel(device_ids=None)``.

    DefaultTrainer.__init__ wraps the model with ``create_ddp_model``, which (v0.6 and main
    alike) passes ``device_ids=[local_rank]``; DDP rejects device_ids for a CPU module, and the
    constructor has no argument for it. So its module-global ``create_ddp_model`` is replaced
    for the span of the constructor (not with unittest.mock), by the same function with
    ``device_ids=None``. Nothing changes with CUDA or a single process.
    """
    if torch.cuda.is_available() or comm.get_world_size() == 1:
        yield
        return
    create = _d2_defaults.create_ddp_model
    _d2_defaults.create_ddp_model = functools.partial(create, device_ids=None)
    try:
        yield
    finally:
        _d2_defaults.create_ddp_model = create


# ----------------------------------------------------------------------------- run length


def scheduler_length_settable(scheduler) -> bool:
    """Whether ``scheduler`` is detectron2's LRMultiplier, whose multiplier is evaluated at
    ``last_epoch / _max_iter``: the only scheduler whose length ``set_scheduler_length`` can
    change."""
    return hasattr(scheduler, "_max_iter")


def set_scheduler_length(scheduler, max_iter: int) -> None:
    """LRMultiplier keeps the run length in ``_max_iter`` (constructor argument, no setter):
    setting it moves STEPS and warm-up to the same fractions of a shorter run (time budget)."""
    scheduler._max_iter = int(max_iter)


def set_metric_printer_length(printer, max_iter: int) -> None:
    """CommonMetricPrinter keeps the run length for its ETA in ``_max_iter`` (constructor
    argument, no setter); the time budget changes the length after it was built."""
    printer._max_iter = int(max_iter)


# ----------------------------------------------------------------------------- launch

#: Whether detectron2's ``launch`` can start CPU processes (gloo): main's worker picks GLOO
#: without CUDA; v0.6's asserts CUDA and always uses NCCL. Told by the module's source naming
#: the gloo backend (launch has no flag or attribute that says it).
LAUNCH_SUPPORTS_CPU = '"GLOO"' in inspect.getsource(inspect.getmodule(d2_launch))

#: main has ``comm.create_local_process_group(num_workers_per_machine)`` (public); v0.6 has none.
HAS_CREATE_LOCAL_PROCESS_GROUP = hasattr(comm, "create_local_process_group")


def set_local_process_group(group) -> None:
    """v0.6 only (no ``comm.create_local_process_group``): detectron2 answers
    ``comm.get_local_rank``/``get_local_size`` from the module global ``_LOCAL_PROCESS_GROUP``,
    which v0.6's own ``launch`` sets directly; a process group made from torchrun's
    environment must set it the same way."""
    comm._LOCAL_PROCESS_GROUP = group


def forget_local_process_group() -> None:
    """After ``destroy_process_group``: detectron2's per-machine group is gone too. Clears
    ``comm._LOCAL_PROCESS_GROUP`` (both versions; main's ``create_local_process_group`` asserts
    it is None) and main's ``lru_cache`` of ``create_local_process_group``, so that a later
    process group in the same process gets a local group again."""
    comm._LOCAL_PROCESS_GROUP = None
    if HAS_CREATE_LOCAL_PROCESS_GROUP and hasattr(comm.create_local_process_group, "cache_clear"):
        comm.create_local_process_group.cache_clear()


# ----------------------------------------------------------------------------- COCO evaluation


class COCOEvaluatorWithCOCOevalClass(COCOEvaluator):
    """detectron2's COCOEvaluator whose AP is computed by ``self.cocoeval_class`` (a class with
    pycocotools' COCOeval interface) when it is not None, by pycocotools' COCOeval otherwise.

    COCOEvaluator takes no COCOeval class: ``_eval_predictions`` looks ``COCOeval_opt`` up in
    its module when ``self._use_fast_impl`` is set. detectron2 main turns ``_use_fast_impl``
    off in the constructor when its C++ ``COCOeval_opt`` is missing (falls back to COCOeval);
    v0.6 keeps it. So for the span of ``_eval_predictions`` the fast path is switched on and
    the module's ``COCOeval_opt`` is this evaluator's class, on both versions. Which class ran
    is recorded in ``self.cocoeval_used`` (its ``__name__``; None before an evaluation or
    without detections).
    """

    cocoeval_class = None

    def _eval_predictions(self, predictions, img_ids=None):
        self.cocoeval_used = None
        cls = self.cocoeval_class
        if cls is None:
            return self._eval_and_record(_d2_coco_evaluation.COCOeval, predictions, img_ids)
        saved_class, saved_fast = _d2_coco_evaluation.COCOeval_opt, self._use_fast_impl
        _d2_coco_evaluation.COCOeval_opt, self._use_fast_impl = cls, True
        try:
            return self._eval_and_record(cls, predictions, img_ids)
        finally:
            _d2_coco_evaluation.COCOeval_opt, self._use_fast_impl = saved_class, saved_fast

    def _eval_and_record(self, expected, predictions, img_ids):
        """Runs detectron2's ``_eval_predictions`` and records the COCOeval class that
        ``_derive_coco_results`` received (what actually computed the AP)."""
        derive = self._derive_coco_results

        def recording(coco_eval, *args, **kwargs):
            if coco_eval is not None:
                self.cocoeval_used = type(coco_eval).__name__
            return derive(coco_eval, *args, **kwargs)

        self._derive_coco_results = recording
        try:
            return super()._eval_predictions(predictions, img_ids=img_ids)
        finally:
            del self._derive_coco_results


# ----------------------------------------------------------------------------- checkpoints


class CheckpointerWithFileReader:
    """Mixin for a ``DetectionCheckpointer`` subclass: every checkpoint file is read by
    ``self.read_checkpoint_file(filename, read)``, where ``read()`` is detectron2's own reader.

    fvcore's ``Checkpointer._load_file`` is its override point for reading one file (detectron2's
    DetectionCheckpointer overrides it for .pkl / .pyth and, on main, URL options such as
    ``?matching_heuristics=True``); there is no public one. Delegating to it keeps all of that.

    Likewise ``_load_model`` (loads the file's state into the model; detectron2 overrides it
    too): its report of what did not load is kept as ``incompatible_keys`` for
    ``focal_rpn.engine.weights``' checks.
    """

    #: what the last ``load`` could not load (fvcore's _IncompatibleKeys), None before a load
    incompatible_keys = None

    def _load_file(self, filename):
        return self.read_checkpoint_file(filename, lambda: super(
            CheckpointerWithFileReader, self)._load_file(filename))

    def read_checkpoint_file(self, filename, read):
        return read()

    def load_file(self, filename):
        """The checkpoint dict of one .pth file (for checks before loading), read by fvcore's
        plain reader: detectron2 main's ``_load_file`` may only run inside ``load`` (it asserts
        the URL it parsed there)."""
        from fvcore.common.checkpoint import Checkpointer

        return self.read_checkpoint_file(filename, lambda: Checkpointer._load_file(self, filename))

    def _load_model(self, checkpoint):
        """fvcore's ``_load_model`` (detectron2 overrides it for name matching of model-zoo
        files), with its report of what did not load kept as ``self.incompatible_keys``
        (missing_keys, unexpected_keys, incorrect_shapes): fvcore only logs it."""
        incompatible = super(CheckpointerWithFileReader, self)._load_model(checkpoint)
        self.incompatible_keys = incompatible
        return incompatible


"""focal_rpn's Trainer and the steps of tools/train_net.py (argument parsing, setup, main)."""
import json
import logging
import os
import re
from collections import OrderedDict

import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, build_detection_test_loader, build_detection_train_loader
from detectron2.engine import DefaultTrainer, default_argument_parser, default_setup, hooks
from detectron2.evaluation import DatasetEvaluators, print_csv_format, verify_results
from detectron2.evaluation.testing import flatten_results_dict
from detectron2.utils import comm
from detectron2.utils.events import CommonMetricPrinter, EventStorage
from detectron2.utils.file_io import PathManager
from detectron2.utils.logger import setup_logger

import focal_rpn  # noqa: F401  (registers FocalRetinaNet and FocalRPN)

from .. import d2_adapter
from ..data import datasets, synthetic
from ..data.resumable import build_resumable_train_loader
from ..evaluation import (
    ProposalRecallEvaluator,
    build_coco_evaluator,
    evaluate_proposals,
    has_proposal_generator,
)
from ..config import channels_last_on
from ..layers import use_fast_roi_align
from .budget import TimeBudget, check_time_budget, scheduler_with_max_iter
from .checkpoint import AtomicCheckpointer
from .config_checks import check_config
from .config_merge import ConfigError, merge_config_file, merge_config_opts
from .dataset_fit import fit_config_to_dataset, log_fit
from .guards import GracefulInterrupt, IterationSeeder, NonFiniteLossGuard
from .hooks import PredictionVisualizer, RunStats
from .optim import build_optimizer, check_optimizer_config
from .output_dir import (
    OutputDirBusyError,
    check_output_dir,
    check_resume,
    claim_output_dir,
    release_output_dir,
)
from .threads import add_threads_argument, configure_threads, thread_hook
from .weights import (
    check_initial_weights,
    check_resumed_weights,
    load_matching_weights,
    write_run_classes,
)

logger = logging.getLogger("focal_rpn.engine")

#: DATASETS names ``<SYNTHETIC_PREFIX>_train`` / ``_val`` are the embedded synthetic dataset.
SYNTHETIC_PREFIX = "focal_synth"
_SYNTHETIC_NAME = re.compile(rf"^({re.escape(SYNTHETIC_PREFIX)})_(train|val)$")


# ----------------------------------------------------------------------------- arguments


def build_argument_parser(epilog=None):
    """detectron2's ``default_argument_parser`` plus ``--dataset NAME=json:imgdir``."""
    parser = default_argument_parser(epilog=epilog)
    parser.add_argument(
        "--dataset", action="append", default=[], metavar="NAME=JSON:IMGDIR",
        help="register a COCO-format dataset NAME (annotations JSON, image folder); repeatable. "
             "Use it with opts, e.g. DATASETS.TRAIN '(\"NAME\",)' DATASETS.TEST '(\"NAME2\",)'",
    )
    add_threads_argument(parser)
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of errors in the input (also: FOCAL_RPN_DEBUG=1)")
    return parser


# ----------------------------------------------------------------------------- setup


def channels_last_wanted(cfg) -> bool:
    """MODEL.CHANNELS_LAST resolved: True / False, or "auto" (None): on a CPU MODEL.DEVICE."""
    return channels_last_on("MODEL.CHANNELS_LAST", cfg.MODEL.CHANNELS_LAST, cfg.MODEL.DEVICE)


def build_config(args):
    """The config of ``args`` (not frozen, no side effects): detectron2 defaults, focal_rpn's
    nodes, the config file, then the trailing opts."""
    cfg = get_cfg()
    focal_rpn.add_focal_rpn_config(cfg)
    if args.config_file:
        merge_config_file(cfg, args.config_file)  # errors: ConfigError naming file and key
    merge_config_opts(cfg, list(args.opts or []))
    try:
        check_optimizer_config(cfg)
        check_time_budget(cfg.SOLVER.TIME_BUDGET_MINUTES)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    check_config(cfg)  # every focal_rpn value, registered model names
    return cfg


def setup(args):
    """Config + detectron2's default_setup (logger, environment, config.yaml in OUTPUT_DIR).

    MODEL.DEVICE "cuda..." falls back to "cpu" when CUDA is unavailable. With
    INPUT.FIT_TO_DATASET the classes, input size and anchors follow the training data
    (focal_rpn.engine.dataset_fit), before config.yaml is written.
    """
    cfg = build_config(args)
    fit = fit_config_to_dataset(cfg, args)  # INPUT.FIT_TO_DATASET: sizes follow the data
    device_note = None
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        device_note = f"CUDA is unavailable: MODEL.DEVICE {cfg.MODEL.DEVICE!r} -> 'cpu'"
        cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    # before default_setup writes config.yaml: never mix a new run into a finished one, nor
    # into a live one (the claim is atomic)
    resume = args.resume or args.eval_only
    claim_output_dir_on_every_rank(cfg.OUTPUT_DIR,
                                   check=lambda: check_output_dir(cfg.OUTPUT_DIR, resume=resume))
    default_setup(cfg, args)
    # focal_rpn's own messages (time budget, dataset generation, ...) beside detectron2's
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="focal_rpn",
                 abbrev_name="focal_rpn")
    configure_threads(getattr(args, "threads", "auto"), processes=comm.get_local_size())
    if device_note:
        logging.getLogger("detectron2").warning(device_note)
    log_fit(fit, logger.info)
    return cfg


def claim_output_dir_on_every_rank(path, check):
    """The main process claims ``path`` (``claim_output_dir``, around ``check``), the others
    run ``check``; a refusal of the claim stops every rank."""
    error = None
    if comm.is_main_process():
        try:
            claim_output_dir(path, check=check)
        except OutputDirBusyError as e:
            error = str(e)
    else:
        check()
    if comm.get_world_size() > 1:
        error = next((e for e in comm.all_gather(error) if e), None)
    if error:
        raise OutputDirBusyError(error)


def config_dataset_names(cfg):
    return list(dict.fromkeys(list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST)))


def register_synthetic_datasets(names):
    """Register the embedded synthetic dataset(s) that ``names`` refer to and are missing.

    The main process generates (and caches) the data first, then the other ranks register it.
    """
    registered = set(DatasetCatalog.list())
    prefixes = sorted({m.group(1) for m in map(_SYNTHETIC_NAME.match, names) if m})
    prefixes = [p for p in prefixes if not {f"{p}_train", f"{p}_val"} <= registered]
    if not prefixes:
        return
    for rank_turn in (True, False):
        if comm.is_main_process() == rank_turn:
            for prefix in prefixes:
                train, val = synthetic.register_synthetic_dataset(name=prefix)
                logger.info("Embedded synthetic dataset registered: %s, %s", train, val)
        comm.synchronize()


def prepare_datasets(cfg, args):
    """Register what the command line and config name; fail early with clear messages."""
    for spec in getattr(args, "dataset", None) or []:
        datasets.parse_dataset_arg(spec)
    names = config_dataset_names(cfg)
    register_synthetic_datasets(names)
    datasets.require_builtin_datasets(cfg)
    datasets.check_num_classes(cfg, names)
    if getattr(args, "eval_only", False):
        datasets.check_test_classes(cfg)
    else:
        datasets.check_trainable(cfg)
        write_run_classes(cfg)  # beside the weights, for tools/predict.py


# ----------------------------------------------------------------------------- trainer


class Trainer(DefaultTrainer):
    """DefaultTrainer with COCO box AP (+ proposal AR@100/AR@1000 for models with an RPN),
    focal_rpn's checked dataset mapper, prediction pictures and run statistics; and (see
    ``focal_rpn.engine.checkpoint``, ``.guards`` and ``focal_rpn.data.resumable``) atomic checkpoints that refuse non-finite weights, a stop
    on NaN/inf losses, a checkpoint + exit on SIGTERM, and a resume that continues the loss
    curve exactly (data stream position, per-sample augmentation seeds, per-iteration RNG seeds).
    """

    #: test images drawn into OUTPUT_DIR/predictions after training
    num_prediction_images = 4
    #: iterations between writes of metrics.json / TensorBoard / console (detectron2: 20)
    writer_period = 20
    #: keyword arguments of the SOLVER.TIME_BUDGET_MINUTES hook (focal_rpn.engine.budget)
    time_budget_options = {}

    def __init__(self, cfg):
        budget_s = check_time_budget(cfg.SOLVER.TIME_BUDGET_MINUTES)
        #: the SOLVER.TIME_BUDGET_MINUTES hook (focal_rpn.engine.budget), None without a budget
        self.time_budget = (TimeBudget(budget_s, **self.time_budget_options)
                            if budget_s is not None else None)
        with d2_adapter.ddp_without_device_ids_on_cpu():
            super().__init__(cfg)
        if self.time_budget is not None:
            scheduler_with_max_iter(self.scheduler)

    def train(self):
        """DefaultTrainer.train; with a time budget the loop's end can move (see
        ``focal_rpn.engine.budget``), which detectron2's fixed ``range`` loop does not allow."""
        if self.time_budget is None:
            return super().train()
        self._train_until_max_iter(self.start_iter)
        if len(self.cfg.TEST.EXPECTED_RESULTS) and comm.is_main_process():
            verify_results(self.cfg, d2_adapter.last_eval_results(self))
        return d2_adapter.last_eval_results(self)

    def _train_until_max_iter(self, start_iter):
        """The training loop of detectron2's TrainerBase.train with ``self.max_iter`` read at
        every iteration: the same hooks in the same order, ``self.iter == self.max_iter`` after
        a finished run (hooks use it to tell a finished run from a failed one)."""
        logger.info("Starting training from iteration %d (time budget %.1f min)", start_iter,
                    self.time_budget.budget_s / 60)
        self.iter = self.start_iter = start_iter
        with EventStorage(start_iter) as self.storage:
            try:
                self.before_train()
                while self.iter < self.max_iter:
                    self.before_step()
                    self.run_step()
                    self.after_step()
                    self.iter += 1
            except Exception:
                logger.exception("Exception during training:")
                raise
            finally:
                self.after_train()

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        if output_folder is None:
            output_folder = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        return build_coco_evaluator(dataset_name, output_dir=output_folder)

    @classmethod
    def build_model(cls, cfg):
        """detectron2's model with ``focal_rpn.layers.FastROIAlign`` in its ROI poolers (the same
        results as detectron2's ROIAlign, a faster CPU path, the GPU path as is) and, per
        MODEL.CHANNELS_LAST ("auto": on CPU), its weights in channels-last memory format (the
        same model up to float rounding; oneDNN then skips its layout reorders). FocalRetinaNet
        keeps the layout its own MODEL.FOCAL_RETINANET.CHANNELS_LAST chose."""
        model = super().build_model(cfg)
        swapped = use_fast_roi_align(model)
        if swapped:
            logger.info("ROIAlign -> FastROIAlign in %d ROI pooler level(s)", swapped)
        if not hasattr(model, "channels_last") and channels_last_wanted(cfg):
            model.to(memory_format=torch.channels_last)
            logger.info("model weights in channels-last memory format (MODEL.CHANNELS_LAST %r, %s)",
                        cfg.MODEL.CHANNELS_LAST, cfg.MODEL.DEVICE)
        return model

    @classmethod
    def build_optimizer(cls, cfg, model):
        """detectron2's SGD, or AdamW with ``SOLVER.OPTIMIZER "AdamW"`` (focal_rpn.engine.optim)."""
        return build_optimizer(cfg, model)

    @classmethod
    def build_train_loader(cls, cfg):
        """detectron2's train loader with focal_rpn's checked mapper; with the default
        DATALOADER.SAMPLER_TRAIN ("TrainingSampler") its stream is resumable (same order)."""
        mapper = datasets.CheckedDatasetMapper(cfg, is_train=True)
        if cfg.DATALOADER.SAMPLER_TRAIN == "TrainingSampler":
            return build_resumable_train_loader(cfg, mapper)
        return build_detection_train_loader(cfg, mapper=mapper)

    @property
    def data_seed(self):
        """Seed of the training data stream and of the per-iteration RNG seeds: SEED, or when
        SEED < 0 a random seed shared by the ranks (saved in checkpoints, so --resume keeps it)."""
        if getattr(self, "_data_seed", None) is None:
            stream = getattr(self.data_loader, "resumable_stream", None)
            self._data_seed = stream.sampler.seed if stream is not None else (
                self.cfg.SEED if self.cfg.SEED >= 0 else comm.shared_random_seed())
        return self._data_seed

    def state_dict(self):
        """detectron2's trainer state (iteration, hooks: LR scheduler, time budget), the
        optimizer state under "_trainer" (detectron2 main saves it; v0.6's DefaultTrainer left it
        out, so momentum restarted at zero on --resume: added here, under main's key) and the
        data seed."""
        ret = super().state_dict()
        if not d2_adapter.DEFAULT_TRAINER_SAVES_OPTIMIZER:
            ret["_trainer"] = d2_adapter.inner_trainer_state(self)
        ret["data_seed"] = int(self.data_seed)
        return ret

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        if "_trainer" in state_dict and not d2_adapter.DEFAULT_TRAINER_SAVES_OPTIMIZER:
            d2_adapter.load_inner_trainer_state(self, state_dict["_trainer"])
        if "data_seed" in state_dict:
            self._data_seed = int(state_dict["data_seed"])

    def resume_or_load(self, resume=True):
        """detectron2's resume_or_load, then the data stream restarts where the checkpoint
        stopped (stream position start_iter x IMS_PER_BATCH, the checkpoint's seed)."""
        # the checkpoint --resume loads (None: MODEL.WEIGHTS); warns / names what is there
        resumed = check_resume(self.cfg.OUTPUT_DIR) if resume else None
        self.checkpointer.incompatible_keys = None
        super().resume_or_load(resume=resume)
        report = self.checkpointer.incompatible_keys  # what the load could not load
        if resumed is not None:
            check_resumed_weights(resumed, report, self.cfg)
        elif self.cfg.MODEL.WEIGHTS:
            check_initial_weights(self.checkpointer.model, self.cfg.MODEL.WEIGHTS, report)
        stream = getattr(self.data_loader, "resumable_stream", None)
        if stream is None:
            if self.start_iter > 0:
                logging.getLogger(__name__).warning(
                    "DATALOADER.SAMPLER_TRAIN %s: the data stream restarts from its beginning "
                    "on resume (only TrainingSampler resumes its position)",
                    self.cfg.DATALOADER.SAMPLER_TRAIN)
            return
        # the loader's stream starts at its first batch, so this is in time however early
        # detectron2 called iter() on it (v0.6: in SimpleTrainer.__init__; main: at first use)
        stream.restart(self.start_iter, seed=self.data_seed)

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        """Box AP on every DATASETS.TEST (detectron2's test), then, for models with a proposal
        generator, its recall with MODEL.RPN.POST_NMS_TOPK_TEST = 1000 (detectron2's AR@100,
        AR@1000, and focal_rpn's recall at 1..1000 proposals, ``proposal_recall/*``)."""
        results = super().test(cfg, model, evaluators)
        if evaluators is not None or not has_proposal_generator(model):
            return results
        proposals = cls.test_proposals(cfg, model)
        if len(cfg.DATASETS.TEST) == 1:  # detectron2's test returns the single dataset unnested
            results = OrderedDict(results or {})
            results.update(next(iter(proposals.values()), {}))
        else:
            for name, res in proposals.items():
                results.setdefault(name, OrderedDict()).update(res)
        return results

    @classmethod
    def test_proposals(cls, cfg, model):
        logger = logging.getLogger(__name__)
        results = OrderedDict()
        for name in cfg.DATASETS.TEST:
            loader = build_detection_test_loader(cfg, name)
            out = os.path.join(cfg.OUTPUT_DIR, "inference", name, "proposals")
            evaluator = DatasetEvaluators(
                [build_coco_evaluator(name, output_dir=out), ProposalRecallEvaluator(name, out)])
            res = evaluate_proposals(model, loader, evaluator)
            results[name] = res
            if comm.is_main_process() and res:
                logger.info("Proposal recall of %s (POST_NMS_TOPK_TEST 1000):", name)
                print_csv_format(res)
        return results

    def build_writers(self):
        """detectron2's writers (console, metrics.json, TensorBoard), remembered so that
        build_hooks can give them a PeriodicWriter of ``writer_period`` and the time budget its
        metric printers."""
        self.writers = super().build_writers()
        return self.writers

    def build_hooks(self):
        # before detectron2's hooks take it: checkpoints written atomically, never non-finite
        if not isinstance(self.checkpointer, AtomicCheckpointer):
            self.checkpointer = AtomicCheckpointer.from_checkpointer(self.checkpointer)
        ret = super().build_hooks()
        ret = [hooks.PeriodicWriter(self.writers, period=self.writer_period)
               if isinstance(h, hooks.PeriodicWriter) else h for h in ret]
        # seeds first; the SIGTERM checkpoint after the periodic one (which it then skips)
        ret.insert(0, IterationSeeder())  # seed: self.data_seed
        ret.insert(1, NonFiniteLossGuard(self.checkpointer))
        after = max((i + 1 for i, h in enumerate(ret)
                     if isinstance(h, (hooks.PeriodicCheckpointer, hooks.LRScheduler, hooks.PreciseBN))),
                    default=1)
        ret.insert(after, GracefulInterrupt(self.checkpointer))
        if self.time_budget is not None:
            # before the LR scheduler and every hook that acts on the last iteration
            first = next(i for i, h in enumerate(ret) if isinstance(h, hooks.LRScheduler))
            ret.insert(first, self.time_budget)
            self.time_budget.checkpointers = [
                h for h in ret if isinstance(h, hooks.PeriodicCheckpointer)]
            self.time_budget.metric_printers = [
                w for w in getattr(self, "writers", ()) if isinstance(w, CommonMetricPrinter)]
        extra = [RunStats(self.cfg.OUTPUT_DIR, self.cfg.MODEL.DEVICE)]
        if comm.is_main_process() and self.cfg.DATASETS.TEST:
            extra.append(PredictionVisualizer(
                self.cfg, self.cfg.DATASETS.TEST[0], os.path.join(self.cfg.OUTPUT_DIR, "predictions"),
                num_images=self.num_prediction_images))
        # before the final evaluation, so that a run ends with the AP table
        index = next((i for i, h in enumerate(ret) if isinstance(h, hooks.EvalHook)), len(ret))
        return ret[:index] + extra + ret[index:]


# ----------------------------------------------------------------------------- main


EVAL_RESULTS_FILE = "eval_results.json"


def save_eval_results(cfg, results):
    """Write the flattened evaluation results ("bbox/AP", "box_proposals/AR@100", ...) to
    OUTPUT_DIR/eval_results.json: one file with the final numbers (metrics.json has them too,
    mixed with the training rows, at iteration MAX_ITER; --eval-only writes no metrics.json)."""
    if not results or not comm.is_main_process():
        return None
    path = os.path.join(cfg.OUTPUT_DIR, EVAL_RESULTS_FILE)
    flat = {k: float(v) for k, v in flatten_results_dict(results).items()}
    with PathManager.open(path, "w") as f:
        json.dump(flat, f, indent=2, sort_keys=True)
    return path


def main(args):
    """train_net: train (or with --eval-only, evaluate) the model of ``args``; returns the
    evaluation results on the main process."""
    cfg = setup(args)
    try:
        return _train_or_evaluate(cfg, args)
    finally:
        if comm.is_main_process():
            release_output_dir(cfg.OUTPUT_DIR)


def _train_or_evaluate(cfg, args):
    prepare_datasets(cfg, args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        weights = (check_resume(cfg.OUTPUT_DIR) if args.resume else None) or cfg.MODEL.WEIGHTS
        load_matching_weights(model, weights, cfg)  # every parameter, same shapes
        results = Trainer.test(cfg, model)
        if comm.is_main_process():
            verify_results(cfg, results)
    else:
        trainer = Trainer(cfg)
        trainer.register_hooks([thread_hook(getattr(args, "threads", "auto"))])
        trainer.resume_or_load(resume=args.resume)
        trainer.train()
        # DefaultTrainer.train returns them only with TEST.EXPECTED_RESULTS set
        results = d2_adapter.last_eval_results(trainer)
    save_eval_results(cfg, results)
    return results

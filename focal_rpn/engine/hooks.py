"""Training hooks of focal_rpn's Trainer: prediction pictures and run statistics."""
import json
import logging
import os
import resource
import time

import numpy as np
import torch
from detectron2.data import DatasetCatalog, DatasetMapper, MetadataCatalog
from detectron2.data import detection_utils
from detectron2.engine import HookBase
from detectron2.utils import comm
from detectron2.utils.file_io import PathManager
from detectron2.utils.visualizer import Visualizer

from ..evaluation.proposals import unwrap_model

logger = logging.getLogger(__name__)


def peak_memory_mb(device="cpu"):
    """Peak memory of this process in MiB: max allocated CUDA memory on GPU; on CPU the peak
    resident set size of this process image (``VmHWM``). Not ``ru_maxrss``: Linux carries it
    over fork and exec, so a subprocess would report at least its parent's size."""
    if str(device).startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def reset_peak_memory(device="cpu"):
    """Start a new peak for :func:`peak_memory_mb` (where the platform allows it)."""
    if str(device).startswith("cuda") and torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
        return
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # Linux >= 4.0: reset VmHWM to the current RSS
    except OSError:
        pass


@torch.no_grad()
def visualize_predictions(cfg, model, dataset_name, output_dir, num_images=4, score_thresh=0.3):
    """Write ``num_images`` PNGs of ``dataset_name`` with ground truth (left) and the model's
    detections scoring >= ``score_thresh`` (right) into ``output_dir``; return their paths."""
    model = unwrap_model(model)
    dicts = DatasetCatalog.get(dataset_name)[:num_images]
    metadata = MetadataCatalog.get(dataset_name)
    mapper = DatasetMapper(cfg, is_train=False)
    PathManager.mkdirs(output_dir)
    was_training = model.training
    model.eval()
    paths = []
    try:
        for d in dicts:
            inputs = mapper(dict(d))
            instances = model([inputs])[0]["instances"].to("cpu")
            instances = instances[instances.scores >= score_thresh]
            image = detection_utils.read_image(d["file_name"], format="RGB")
            pred = Visualizer(image, metadata).draw_instance_predictions(instances).get_image()
            panels = [pred]
            if d.get("annotations"):
                panels.insert(0, Visualizer(image, metadata).draw_dataset_dict(d).get_image())
            picture = np.concatenate(panels, axis=1)
            name = os.path.splitext(os.path.basename(d["file_name"]))[0]
            path = os.path.join(output_dir, f"{name}.png")
            with PathManager.open(path, "wb") as f:
                f.write(_encode_png(picture))
            paths.append(path)
    finally:
        model.train(was_training)
    logger.info("Wrote %d prediction pictures (ground truth | detections with score >= %.2f) "
                "to %s", len(paths), score_thresh, output_dir)
    return paths


def _encode_png(rgb):
    import cv2

    ok, buf = cv2.imencode(".png", np.ascontiguousarray(rgb[:, :, ::-1]))
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


class PredictionVisualizer(HookBase):
    """After a completed training, draw predictions on the first images of a test set."""

    def __init__(self, cfg, dataset_name, output_dir, num_images=4, score_thresh=0.3):
        self.cfg = cfg
        self.dataset_name = dataset_name
        self.output_dir = output_dir
        self.num_images = num_images
        self.score_thresh = score_thresh

    def after_train(self):
        # as detectron2's EvalHook: nothing after a failed (incomplete) training
        if self.trainer.iter + 1 < self.trainer.max_iter or not comm.is_main_process():
            return
        try:
            visualize_predictions(self.cfg, self.trainer.model, self.dataset_name,
                                  self.output_dir, self.num_images, self.score_thresh)
        except Exception:  # pictures are a convenience: never fail a finished training on them
            logger.exception("Could not write prediction pictures")


class RunStats(HookBase):
    """Time per training iteration (the first, warm-up iteration excluded when there are more)
    and peak memory, written to OUTPUT_DIR/run_stats.json by the main process; and every loss
    of every iteration of this run (unsmoothed, averaged over the processes, as detectron2 logs
    them) to OUTPUT_DIR/loss_curves.json: ``{"loss_cls": [[iteration, value], ...], ...}``."""

    def __init__(self, output_dir, device="cpu"):
        self.output_dir = output_dir
        self.device = device
        self.step_seconds = []

    def before_train(self):
        self._train_start = time.perf_counter()

    def before_step(self):
        self._step_start = time.perf_counter()

    def after_step(self):
        self.step_seconds.append(time.perf_counter() - self._step_start)

    def after_train(self):
        steps = self.step_seconds[1:] if len(self.step_seconds) > 1 else self.step_seconds
        stats = {
            "iterations": len(self.step_seconds),
            "start_iter": self.trainer.start_iter,
            "max_iter": self.trainer.max_iter,  # the run's length (a time budget may shorten it)
            "train_seconds": time.perf_counter() - self._train_start,
            "seconds_per_iter": float(np.mean(steps)) if steps else float("nan"),
            "peak_memory_mb": peak_memory_mb(self.device),
            "memory_kind": "cuda_max_allocated" if str(self.device).startswith("cuda")
            else "max_rss",
            "world_size": comm.get_world_size(),
        }
        self.stats = stats
        if comm.is_main_process() and self.output_dir:
            PathManager.mkdirs(self.output_dir)
            with PathManager.open(os.path.join(self.output_dir, "run_stats.json"), "w") as f:
                json.dump(stats, f, indent=2)
            with PathManager.open(os.path.join(self.output_dir, LOSS_CURVES_FILE), "w") as f:
                json.dump(loss_curves(self.trainer.storage), f)


LOSS_CURVES_FILE = "loss_curves.json"


def loss_curves(storage):
    """{name: [[iteration, value], ...]} of every "loss*" and "total_loss" scalar in ``storage``
    (a detectron2 EventStorage; its history keeps every iteration of this run)."""
    return {
        name: [[int(it), float(v)] for v, it in history.values()]
        for name, history in sorted(storage.histories().items())
        if name.startswith("loss") or name == "total_loss"
    }

"""Bootstrap over validation images: intervals for one seed's predictions (n = 1 seed included).

Every model of a comparison is evaluated on the same resampled image sets (a paired bootstrap):
draw ``num_samples`` sets of the N validation images with replacement, evaluate every model on
each set, and the spread of ``variant - baseline`` over the sets is the interval of the
difference that comes from the choice of test images alone (not from training noise: that is
what the seeds measure).

* Box AP: COCO evaluation (faster_coco_eval if importable, else pycocotools) of the run's
  ``coco_instances_results.json`` against the dataset's json, with each drawn copy of an image
  renumbered so that an image drawn twice counts twice.
* Proposal recall: the per-image counts of ``proposal_recall.json`` summed over the drawn images.
"""
import contextlib
import copy
import io
from typing import Dict, List, Sequence

import numpy as np

from ..evaluation.proposal_recall import AREA_RANGES, IOU_THRESHOLDS, LIMITS, recall_from_totals

#: COCOeval's stats[0:6], in percent.
BOX_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def draw_image_sets(num_images: int, num_samples: int, seed: int = 0) -> np.ndarray:
    """(num_samples, num_images) indices into the image list, drawn with replacement."""
    return np.random.default_rng(seed).integers(0, num_images, size=(num_samples, num_images))


def _coco_classes():
    try:
        from faster_coco_eval import COCO, COCOeval_faster

        def make_eval(gt, dt):
            return COCOeval_faster(gt, dt, "bbox", print_function=lambda *a, **k: None)
    except Exception:  # ImportError, or a broken binary wheel
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        def make_eval(gt, dt):
            return COCOeval(gt, dt, "bbox")
    return COCO, make_eval


def box_ap(gt_dataset: dict, detections: List[dict]) -> Dict[str, float]:
    """COCO box AP (percent) of ``detections`` (COCO result dicts) on ``gt_dataset`` (a COCO
    json as a dict)."""
    COCO, make_eval = _coco_classes()
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = gt_dataset
        gt.createIndex()
        dt = gt.loadRes(copy.deepcopy(detections)) if detections else COCO()
        ev = make_eval(gt, dt)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {m: float(100.0 * v) for m, v in zip(BOX_METRICS, ev.stats[: len(BOX_METRICS)])}


def resample_coco(gt_dataset: dict, detections_by_image: Dict[int, List[dict]],
                  image_ids: Sequence[int]) -> tuple:
    """(ground truth, detections) of the image list ``image_ids`` (repeats allowed): the k-th
    drawn image becomes image k + 1, with copies of its annotations and detections."""
    anns_by_image = {}
    for ann in gt_dataset["annotations"]:
        anns_by_image.setdefault(ann["image_id"], []).append(ann)
    images_by_id = {im["id"]: im for im in gt_dataset["images"]}
    images, annotations, detections = [], [], []
    for k, image_id in enumerate(image_ids, start=1):
        images.append({**images_by_id[image_id], "id": k})
        for ann in anns_by_image.get(image_id, ()):
            annotations.append({**ann, "id": len(annotations) + 1, "image_id": k})
        for det in detections_by_image.get(image_id, ()):
            detections.append({**det, "image_id": k})
    gt = {**{key: v for key, v in gt_dataset.items() if key not in ("images", "annotations")},
          "images": images, "annotations": annotations}
    return gt, detections


def bootstrap_box_ap(gt_dataset: dict, detections_by_model: Dict[str, List[dict]],
                     draws: np.ndarray) -> Dict[str, List[Dict[str, float]]]:
    """{model: [box AP results of each drawn image set]}; ``draws`` from
    :func:`draw_image_sets` over ``gt_dataset["images"]``."""
    image_ids = [im["id"] for im in gt_dataset["images"]]
    by_model = {}
    for model, dets in detections_by_model.items():
        per_image = {}
        for det in dets:
            per_image.setdefault(det["image_id"], []).append(det)
        by_model[model] = per_image
    out = {model: [] for model in detections_by_model}
    for draw in draws:
        drawn = [image_ids[i] for i in draw]
        for model, per_image in by_model.items():
            gt, dets = resample_coco(gt_dataset, per_image, drawn)
            out[model].append(box_ap(gt, dets))
    return out


def recall_arrays(images: List[dict], image_ids: Sequence[int]) -> tuple:
    """Per-image counts of proposal_recall.json in the order ``image_ids``: num_gt (N, A) and
    matched (N, A, K, T). An image without an entry counts zero boxes."""
    shape = (len(AREA_RANGES), len(LIMITS), len(IOU_THRESHOLDS))
    by_id = {im["image_id"]: im for im in images}
    num_gt = np.zeros((len(image_ids), shape[0]))
    matched = np.zeros((len(image_ids),) + shape)
    for n, image_id in enumerate(image_ids):
        if image_id in by_id:
            num_gt[n] = by_id[image_id]["num_gt"]
            matched[n] = by_id[image_id]["matched"]
    return num_gt, matched


def bootstrap_recall(images_by_model: Dict[str, List[dict]], image_ids: Sequence[int],
                     draws: np.ndarray) -> Dict[str, List[Dict[str, float]]]:
    """{model: [proposal recall results (AR@10, ARs@100, ...) of each drawn image set]}."""
    out = {}
    for model, images in images_by_model.items():
        num_gt, matched = recall_arrays(images, image_ids)
        out[model] = [recall_from_totals(num_gt[draw].sum(0), matched[draw].sum(0)) for draw in draws]
    return out

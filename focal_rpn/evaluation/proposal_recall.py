"""Proposal recall of an RPN at every number of proposals, per image, for curves and bootstrap.

detectron2's COCOEvaluator reports ``box_proposals`` AR@100 and AR@1000 only, as dataset totals.
``ProposalRecallEvaluator`` measures the same recall (COCO's average recall over IoU thresholds
0.50:0.05:0.95, each ground-truth box matched to at most one proposal by detectron2's greedy
rule: repeatedly take the best-covered box and its best proposal out of the pool) at the
numbers of proposals in ``LIMITS``, for all / small / medium / large boxes, and keeps the
counts per image. The per-image counts are what ``focal_rpn.comparison`` resamples to put
bootstrap intervals on AR, and what ``proposal_recall.png`` draws.

Shapes: G ground-truth boxes of an image, P proposals (sorted by objectness), T = 10 IoU
thresholds, K = len(LIMITS), A = 4 area ranges.
"""
import json
import logging
import os
from collections import OrderedDict
from typing import Dict, List

import numpy as np
import torch
from detectron2.data import MetadataCatalog
from detectron2.data.datasets.coco import convert_to_coco_json
from detectron2.evaluation import DatasetEvaluator
from detectron2.structures import Boxes, BoxMode, pairwise_iou
from detectron2.utils import comm
from detectron2.utils.file_io import PathManager

logger = logging.getLogger(__name__)

#: Numbers of proposals per image at which recall is measured.
LIMITS = (1, 2, 5, 10, 20, 50, 100, 200, 300, 500, 700, 1000)
#: COCO's IoU thresholds of average recall.
IOU_THRESHOLDS = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))
#: Box area ranges (pixels^2), as detectron2's box_proposals evaluation: lo <= area <= hi.
AREA_RANGES = OrderedDict([
    ("all", (0.0, 1e5**2)), ("small", (0.0, 32.0**2)),
    ("medium", (32.0**2, 96.0**2)), ("large", (96.0**2, 1e5**2)),
])
#: Key prefix of the results: {"AR@10", "ARs@100", ...} as detectron2 names them.
AREA_PREFIX = {"all": "AR", "small": "ARs", "medium": "ARm", "large": "ARl"}
RESULTS_FILE = "proposal_recall.json"


def greedy_matched_ious(iou: torch.Tensor) -> torch.Tensor:
    """IoU of each greedy (box, proposal) match of an (G, P) IoU matrix: at each step the box
    whose best remaining proposal overlaps most is matched to it, and both leave the pool.
    Returns a (min(G, P),) tensor: one entry per matched box (unmatched boxes count as 0)."""
    iou = iou.clone()
    matched = torch.zeros(min(iou.shape), dtype=iou.dtype)
    for j in range(matched.numel()):
        best_per_box, best_proposal = iou.max(dim=1)
        box = int(best_per_box.argmax())
        matched[j] = best_per_box[box]
        proposal = int(best_proposal[box])
        iou[box, :] = -1
        iou[:, proposal] = -1
    return matched


def image_recall_counts(gt_boxes: torch.Tensor, gt_areas: torch.Tensor,
                        proposal_boxes: torch.Tensor) -> Dict[str, object]:
    """Recall counts of one image.

    Args:
        gt_boxes: (G, 4) XYXY non-crowd ground truth; gt_areas: (G,) their COCO areas.
        proposal_boxes: (P, 4) XYXY, best first.
    Returns:
        {"num_gt": [A], "matched": [A][K][T]}: boxes of each area range, and how many of them
        are matched at IoU >= each threshold when the first LIMITS[k] proposals are used.
    """
    thresholds = torch.tensor(IOU_THRESHOLDS, dtype=torch.float64)
    num_gt, matched = [], []
    for lo, hi in AREA_RANGES.values():
        keep = (gt_areas >= lo) & (gt_areas <= hi)
        boxes = gt_boxes[keep]
        num_gt.append(int(keep.sum()))
        rows = []
        for limit in LIMITS:
            props = proposal_boxes[:limit]
            if len(boxes) == 0 or len(props) == 0:
                rows.append([0] * len(IOU_THRESHOLDS))
                continue
            ious = greedy_matched_ious(pairwise_iou(Boxes(boxes), Boxes(props)).double())
            rows.append([int((ious >= t).sum()) for t in thresholds])
        matched.append(rows)
    return {"num_gt": num_gt, "matched": matched}


def average_recall(images: List[Dict[str, object]]) -> Dict[str, float]:
    """{"AR@10": ..., "ARs@100": ..., ...} in percent over per-image counts (as COCO: matched
    boxes over all boxes, pooled over images, then averaged over the IoU thresholds)."""
    num_gt = np.array([im["num_gt"] for im in images], dtype=np.float64).reshape(-1, len(AREA_RANGES))
    matched = np.array([im["matched"] for im in images], dtype=np.float64).reshape(
        -1, len(AREA_RANGES), len(LIMITS), len(IOU_THRESHOLDS))
    return recall_from_totals(num_gt.sum(0), matched.sum(0))


def recall_from_totals(num_gt: np.ndarray, matched: np.ndarray) -> Dict[str, float]:
    """AR results from totals over images: num_gt (A,), matched (A, K, T)."""
    out = OrderedDict()
    for a, area in enumerate(AREA_RANGES):
        for k, limit in enumerate(LIMITS):
            recall = matched[a, k] / num_gt[a] if num_gt[a] > 0 else np.full(len(IOU_THRESHOLDS), np.nan)
            out[f"{AREA_PREFIX[area]}@{limit}"] = float(100.0 * recall.mean())
    return out


class ProposalRecallEvaluator(DatasetEvaluator):
    """Proposal recall at LIMITS proposals, for outputs holding "proposals" (detectron2's
    ``ProposalNetwork``). Writes OUTPUT_DIR/proposal_recall.json (the per-image counts) and
    returns {"proposal_recall": {"AR@10": ..., "AR@100": ..., "ARs@100": ..., ...}}."""

    def __init__(self, dataset_name: str, output_dir: str = None, distributed: bool = True):
        self._dataset_name = dataset_name
        self._output_dir = output_dir
        self._distributed = distributed
        self._gt = None

    def reset(self):
        self._images = []

    def _ground_truth(self):
        """{image_id: ((G, 4) XYXY boxes, (G,) areas)} of the non-crowd annotations."""
        if self._gt is None:
            from pycocotools.coco import COCO

            meta = MetadataCatalog.get(self._dataset_name)
            json_file = getattr(meta, "json_file", None)
            if not json_file:
                json_file = os.path.join(self._output_dir or ".", f"{self._dataset_name}_coco_format.json")
                convert_to_coco_json(self._dataset_name, json_file)
            import contextlib
            import io

            with contextlib.redirect_stdout(io.StringIO()):
                coco = COCO(PathManager.get_local_path(json_file))
            gt = {}
            for image_id in coco.getImgIds():
                anns = [a for a in coco.imgToAnns[image_id] if not a.get("iscrowd", 0)]
                boxes = torch.tensor([BoxMode.convert(a["bbox"], BoxMode.XYWH_ABS, BoxMode.XYXY_ABS)
                                      for a in anns], dtype=torch.float32).reshape(-1, 4)
                areas = torch.tensor([a["area"] for a in anns], dtype=torch.float64)
                gt[image_id] = (boxes, areas)
            self._gt = gt
        return self._gt

    def process(self, inputs, outputs):
        gt = self._ground_truth()
        for inp, out in zip(inputs, outputs):
            proposals = out["proposals"].to("cpu")
            order = proposals.objectness_logits.argsort(descending=True)
            boxes, areas = gt.get(inp["image_id"], (torch.zeros(0, 4), torch.zeros(0, dtype=torch.float64)))
            counts = image_recall_counts(boxes, areas, proposals.proposal_boxes.tensor[order])
            counts["image_id"] = inp["image_id"]
            self._images.append(counts)

    def evaluate(self):
        images = self._images
        if self._distributed:
            comm.synchronize()
            images = [im for part in comm.gather(images, dst=0) for im in part]
            if not comm.is_main_process():
                return {}
        if not images:
            logger.warning("ProposalRecallEvaluator got no images with proposals")
            return {}
        results = average_recall(images)
        if self._output_dir:
            PathManager.mkdirs(self._output_dir)
            with PathManager.open(os.path.join(self._output_dir, RESULTS_FILE), "w") as f:
                json.dump({"limits": list(LIMITS), "iou_thresholds": list(IOU_THRESHOLDS),
                           "areas": list(AREA_RANGES), "images": images}, f)
        return {"proposal_recall": results}

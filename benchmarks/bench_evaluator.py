"""Benchmark of COCO box evaluation: faster_coco_eval (what focal_rpn's evaluator uses) against
pycocotools' COCOeval (detectron2's path without its C++ ``COCOeval_opt``).

The case is generated in memory, deterministic: ``num_images`` 256 px images with 1..8
ground-truth boxes of 6 classes (8..128 px, as the embedded dataset) and 100 detections per
image (every ground-truth box jittered, the rest random boxes, random scores), as a detector's
output after NMS. Timed: ``evaluate() + accumulate() + summarize()`` of each, alternately, median
of ``repeats``. The 12 summary numbers of both must agree (checked, reported as ``max |dAP|``).

    .venv/bin/python benchmarks/bench_evaluator.py [--images 500] [--repeats 3]
"""
import argparse
import contextlib
import io
import statistics
import time
from typing import Dict, List

import numpy as np

NUM_CLASSES = 6
DETECTIONS_PER_IMAGE = 100
IMAGE_SIZE = 256


def make_case(num_images: int, seed: int = 0):
    """(COCO-format ground-truth dict, list of detection dicts)."""
    rng = np.random.default_rng(seed)
    images, annotations, detections = [], [], []
    for image_id in range(1, num_images + 1):
        images.append({"id": image_id, "width": IMAGE_SIZE, "height": IMAGE_SIZE})
        n = int(rng.integers(1, 9))
        wh = rng.uniform(8, 128, size=(n, 2))
        xy = rng.uniform(0, 1, size=(n, 2)) * (IMAGE_SIZE - wh)
        classes = rng.integers(1, NUM_CLASSES + 1, size=n)
        for box_xy, box_wh, c in zip(xy, wh, classes):
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": int(c),
                "bbox": [*map(float, box_xy), *map(float, box_wh)],
                "area": float(box_wh[0] * box_wh[1]), "iscrowd": 0,
            })
            jitter = rng.normal(0, 0.1, size=4) * np.r_[box_wh, box_wh]
            detections.append({
                "image_id": image_id, "category_id": int(c),
                "bbox": [float(box_xy[0] + jitter[0]), float(box_xy[1] + jitter[1]),
                         float(max(1.0, box_wh[0] + jitter[2])),
                         float(max(1.0, box_wh[1] + jitter[3]))],
                "score": float(rng.uniform(0.3, 1.0)),
            })
        for _ in range(DETECTIONS_PER_IMAGE - n):
            w, h = rng.uniform(4, 128, size=2)
            x, y = rng.uniform(0, IMAGE_SIZE - w), rng.uniform(0, IMAGE_SIZE - h)
            detections.append({
                "image_id": image_id, "category_id": int(rng.integers(1, NUM_CLASSES + 1)),
                "bbox": [float(x), float(y), float(w), float(h)],
                "score": float(rng.uniform(0.0, 0.6)),
            })
    gt = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": c, "name": f"class_{c}"} for c in range(1, NUM_CLASSES + 1)],
    }
    return gt, detections


def _load(coco_cls, gt: Dict, detections: List[Dict]):
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = coco_cls()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(detections)
    return coco_gt, coco_dt


def _evaluate(eval_cls, coco_gt, coco_dt) -> np.ndarray:
    """The 12 COCO box summary numbers (AP, AP50, ..., AR_large)."""
    with contextlib.redirect_stdout(io.StringIO()):
        ev = eval_cls(coco_gt, coco_dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return np.asarray(ev.stats[:12], dtype=np.float64)


def run(num_images: int = 500, repeats: int = 3) -> List[Dict]:
    """One row {case, ours_ms, baseline, baseline_ms, ratio, ours_peak_mb, baseline_peak_mb,
    max_abs_ap_diff}; peak memory is not measured here (NaN)."""
    from faster_coco_eval import COCO as FasterCOCO
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from focal_rpn.evaluation.coco import _faster_cocoeval_class

    faster_eval = _faster_cocoeval_class()
    if faster_eval is None:
        raise RuntimeError("faster_coco_eval is not importable; `make install` installs it")
    gt, dets = make_case(num_images)
    ours_gt, ours_dt = _load(FasterCOCO, gt, dets)
    base_gt, base_dt = _load(COCO, gt, dets)
    times = {"ours": [], "base": []}
    stats = {}
    for r in range(repeats):
        order = [("ours", faster_eval, ours_gt, ours_dt), ("base", COCOeval, base_gt, base_dt)]
        for name, cls, g, d in order if r % 2 == 0 else order[::-1]:
            t0 = time.perf_counter()
            stats[name] = _evaluate(cls, g, d)
            times[name].append((time.perf_counter() - t0) * 1e3)
    ours_ms, base_ms = statistics.median(times["ours"]), statistics.median(times["base"])
    return [{
        "case": f"COCO bbox eval {num_images} img x {DETECTIONS_PER_IMAGE} det",
        "ours_ms": ours_ms,
        "baseline": "pycocotools COCOeval",
        "baseline_ms": base_ms,
        "ratio": ours_ms / base_ms,
        "ours_peak_mb": float("nan"),
        "baseline_peak_mb": float("nan"),
        "max_abs_ap_diff": float(np.max(np.abs(stats["ours"] - stats["base"]))),
        "ap": float(stats["ours"][0]),
    }]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    for row in run(args.images, args.repeats):
        print(row)

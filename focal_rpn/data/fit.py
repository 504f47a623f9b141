"""A recipe fitted to the dataset it trains on (``INPUT.FIT_TO_DATASET``).

The CPU recipes (``configs/quick_*.yaml``) were sized on the embedded dataset: 256 px squares
with objects of 8-128 px. User photographs are 300-1000 px, portrait and landscape, with
objects from a few percent of the image to most of it, and 1-20 classes. With
``INPUT.FIT_TO_DATASET True`` the trainer reads the training json once and sets, from its
statistics (every step is logged at the start of the run and lands in ``config.yaml``):

* **the number of classes** of the model (``MODEL.RETINANET.NUM_CLASSES`` or
  ``MODEL.ROI_HEADS.NUM_CLASSES``): the categories of the training data;
* **the input size** (``INPUT.MIN_SIZE_TRAIN`` / ``MAX_SIZE_TRAIN`` / ``*_TEST``): the config's
  own sizes are read as a pixel budget per image (256 x 256 for the quick recipes). The
  shorter side is the one that spends that budget on the data's median aspect ratio, raised
  (up to ``MAX_PIXEL_FACTOR`` times the pixels) until the small objects (10th percentile) reach
  ``SMALL_OBJECT_PX``, never past the data's own median shorter side (no upscaling for
  nothing), rounded down to a multiple of 32. The longer side may follow the data's wider images
  up to ``MAX_ASPECT``;
* **the anchor sizes** (``MODEL.ANCHOR_GENERATOR.SIZES``): kept when at least
  ``GOOD_COVERAGE`` of the resized training boxes have an anchor of IoU >= 0.5 by shape
  (both centred: an upper bound of what the matcher sees), or when no other size covers
  ``MIN_COVERAGE_GAIN`` more; otherwise scaled by the first factor of ``ANCHOR_SCALES`` that
  reaches it (or covers the most boxes).

Options given on the command line win: a key the user set there is never changed (the log
says so). The embedded dataset and datasets without a COCO json (the builtin COCO 2017 ones)
are left alone: the recipe was tuned on the former and the latter have their own configs.
"""
import dataclasses
import logging
import math
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

logger = logging.getLogger(__name__)

#: the size the small objects (10th percentile of box sides) should reach after the resize
SMALL_OBJECT_PX = 16.0
#: the input may spend at most this many times the config's pixel budget to get there. Not
#: more: the CPU recipes train from scratch for minutes, where iterations buy more AP than
#: pixels (the step time grows with the pixels)
MAX_PIXEL_FACTOR = 1.5
#: longest/shortest side of the resized input (detectron2's COCO recipe: 1333 / 800 = 1.67)
MAX_ASPECT = 1.8
#: input sides are multiples of this (the stride of P5; P6/P7 round up from there)
SIZE_MULTIPLE = 32
#: anchors are kept when this share of the resized training boxes has one at IoU >= 0.5 by
#: shape. Not more: the demo recipe's anchors (16-406 px) cover 87% of the embedded data's
#: boxes and reached box AP 53.5 where 12-305 px (97%) reached 40.7 (750 iterations, seed 0):
#: a box without such an anchor still gets its best one, and larger anchors give the others
#: more positives.
GOOD_COVERAGE = 0.8
#: ... and changed only for a factor that covers at least this much more of the boxes
#: (boxes of aspect ratios beyond the anchors' lower every factor's coverage alike)
MIN_COVERAGE_GAIN = 0.1
#: the factors the anchor sizes may be scaled by: the smallest changes first, larger before
#: smaller (the measurement above)
ANCHOR_SCALES = (1.0, 1.5, 0.75, 2.0, 0.5)


@dataclasses.dataclass
class DataStats:
    """What the fit reads from the training json(s).

    image_sizes: (N, 2) float, (width, height) of each image.
    box_sizes: (M, 2) float, (width, height) of each usable box.
    box_image: (M,) int, the row of ``image_sizes`` each box belongs to.
    """
    image_sizes: np.ndarray
    box_sizes: np.ndarray
    box_image: np.ndarray
    class_names: List[str]

    @property
    def short_sides(self) -> np.ndarray:
        return self.image_sizes.min(axis=1)

    @property
    def aspects(self) -> np.ndarray:
        return self.image_sizes.max(axis=1) / self.image_sizes.min(axis=1)


def data_stats(cocos: Sequence[dict]) -> DataStats:
    """Statistics of the COCO dicts ``cocos`` (the training datasets, already validated).
    Boxes of at most ``MIN_BOX_SIDE`` are left out as the loader leaves them out; categories
    are united by name."""
    from .coco_checks import MIN_BOX_SIDE

    sizes, boxes, owner, names = [], [], [], []
    for coco in cocos:
        row = {}
        for im in coco["images"]:
            row[im["id"]] = len(sizes)
            sizes.append((float(im["width"]), float(im["height"])))
        for ann in coco["annotations"]:
            w, h = float(ann["bbox"][2]), float(ann["bbox"][3])
            if ann.get("iscrowd", 0) or min(w, h) <= MIN_BOX_SIDE or ann["image_id"] not in row:
                continue
            boxes.append((w, h))
            owner.append(row[ann["image_id"]])
        for cat in sorted(coco["categories"], key=lambda c: c["id"]):
            if cat["name"] not in names:
                names.append(cat["name"])
    return DataStats(np.asarray(sizes, dtype=np.float64).reshape(-1, 2),
                     np.asarray(boxes, dtype=np.float64).reshape(-1, 2),
                     np.asarray(owner, dtype=np.int64), names)


def _round_to(value: float, multiple: int = SIZE_MULTIPLE) -> int:
    return max(multiple, int(round(value / multiple)) * multiple)


def fit_input_size(stats: DataStats, budget_pixels: float) -> Tuple[int, int]:
    """(shorter side, longest side) of the resized input; see the module docstring."""
    aspect = float(np.median(stats.aspects))
    short_budget = math.sqrt(budget_pixels / aspect)
    short = short_budget
    if len(stats.box_sizes):
        # box sides as a fraction of their image's shorter side
        relative = np.sqrt(stats.box_sizes.prod(axis=1)) / stats.short_sides[stats.box_image]
        short = max(short, SMALL_OBJECT_PX / float(np.percentile(relative, 10)))
    short = min(short, short_budget * math.sqrt(MAX_PIXEL_FACTOR))
    short = min(short, max(float(np.median(stats.short_sides)), short_budget))
    short = max(SIZE_MULTIPLE, int(short // SIZE_MULTIPLE) * SIZE_MULTIPLE)  # never above the caps
    wide = min(float(np.percentile(stats.aspects, 95)), MAX_ASPECT)
    return short, max(short, _round_to(short * wide))


def resized_box_sizes(stats: DataStats, short: int, longest: int) -> np.ndarray:
    """(M, 2) box (width, height) after detectron2's ResizeShortestEdge(short, longest)."""
    scale = np.minimum(short / stats.short_sides, longest / stats.image_sizes.max(axis=1))
    return stats.box_sizes * scale[stats.box_image][:, None]


def anchor_shapes(sizes: Sequence[Sequence[float]], ratios: Sequence[Sequence[float]]) -> np.ndarray:
    """(A, 2) (width, height) of every anchor of detectron2's DefaultAnchorGenerator
    (ratio = height / width, area = size**2), over all levels."""
    ratios = list(ratios) * len(sizes) if len(ratios) == 1 else list(ratios)
    shapes = []
    for level_sizes, level_ratios in zip(sizes, ratios):
        for size in level_sizes:
            for ratio in level_ratios:
                w = math.sqrt(size * size / ratio)
                shapes.append((w, w * ratio))
    return np.asarray(shapes, dtype=np.float64)


def anchor_coverage(box_sizes: np.ndarray, anchors: np.ndarray, iou: float = 0.5) -> float:
    """Share of boxes (M, 2) with an anchor (A, 2) of IoU >= ``iou`` when both are centred
    on one point (the best any anchor position can do; 1.0 for no boxes)."""
    if not len(box_sizes):
        return 1.0
    bw, bh = box_sizes[:, None, 0], box_sizes[:, None, 1]
    aw, ah = anchors[None, :, 0], anchors[None, :, 1]
    inter = np.minimum(bw, aw) * np.minimum(bh, ah)
    best = (inter / (bw * bh + aw * ah - inter)).max(axis=1)
    return float((best >= iou).mean())


def fit_anchor_scale(box_sizes: np.ndarray, sizes, ratios) -> Tuple[float, Dict[float, float]]:
    """(factor, {factor: coverage}) for the anchor sizes: 1.0 (the config's) while its
    coverage is at least ``GOOD_COVERAGE`` or no factor gains ``MIN_COVERAGE_GAIN`` on it;
    else the first factor of ``ANCHOR_SCALES`` that reaches ``GOOD_COVERAGE``, or failing
    that the one with the best coverage."""
    coverage = {f: anchor_coverage(box_sizes, anchor_shapes([[s * f for s in lv] for lv in sizes],
                                                           ratios))
                for f in ANCHOR_SCALES}
    best = max(ANCHOR_SCALES, key=lambda f: coverage[f])
    if coverage[1.0] >= GOOD_COVERAGE or coverage[best] < coverage[1.0] + MIN_COVERAGE_GAIN:
        return 1.0, coverage
    good = [f for f in ANCHOR_SCALES if coverage[f] >= GOOD_COVERAGE]
    return (good[0] if good else best), coverage


@dataclasses.dataclass
class Fit:
    """The options the fit chose (``options``: KEY -> value) and what it logs."""
    options: Dict[str, object]
    lines: List[str]
    kept: List[str]  # keys the user set on the command line, left as given


def fit_recipe(cfg, stats: DataStats, num_classes_key: Optional[str],
               user_keys: Sequence[str] = ()) -> Fit:
    """The options that fit ``cfg``'s recipe to ``stats``; ``user_keys`` are never changed.
    Data without an image or a usable box gets no options (the trainer's dataset checks then
    refuse it by name)."""
    if not len(stats.image_sizes) or not len(stats.box_sizes):
        return Fit({}, ["nothing fitted: the training data has no image or no usable box"], [])
    lines = [f"{len(stats.image_sizes)} training images, shorter side median "
             f"{np.median(stats.short_sides):.0f} px ({stats.short_sides.min():.0f}-"
             f"{stats.short_sides.max():.0f}), aspect median {np.median(stats.aspects):.2f} "
             f"(max {stats.aspects.max():.2f}; {_portrait_share(stats):.0%} portrait), "
             f"{len(stats.box_sizes)} boxes, {len(stats.class_names)} classes"]
    options: Dict[str, object] = {}
    if num_classes_key:
        options[num_classes_key] = len(stats.class_names)
    budget = float(max(cfg.INPUT.MIN_SIZE_TRAIN)) * float(cfg.INPUT.MAX_SIZE_TRAIN)
    short, longest = fit_input_size(stats, budget)
    options.update({"INPUT.MIN_SIZE_TRAIN": (short,), "INPUT.MAX_SIZE_TRAIN": longest,
                    "INPUT.MIN_SIZE_TEST": short, "INPUT.MAX_SIZE_TEST": longest})
    short = short if "INPUT.MIN_SIZE_TRAIN" not in user_keys else max(cfg.INPUT.MIN_SIZE_TRAIN)
    longest = longest if "INPUT.MAX_SIZE_TRAIN" not in user_keys else cfg.INPUT.MAX_SIZE_TRAIN
    resized = resized_box_sizes(stats, short, longest)
    if len(resized):
        sides = np.sqrt(resized.prod(axis=1))
        lines.append(f"input {short} px shorter side, at most {longest} px (pixel budget of the "
                     f"config {budget:.0f}): box sides {np.percentile(sides, 10):.0f} / "
                     f"{np.median(sides):.0f} / {np.percentile(sides, 90):.0f} px (10th / 50th "
                     "/ 90th percentile)")
    sizes = [list(map(float, lv)) for lv in cfg.MODEL.ANCHOR_GENERATOR.SIZES]
    ratios = [list(map(float, lv)) for lv in cfg.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS]
    factor, coverage = fit_anchor_scale(resized, sizes, ratios)
    if factor != 1.0:
        options["MODEL.ANCHOR_GENERATOR.SIZES"] = [[round(s * factor, 4) for s in lv] for lv in sizes]
    which = "the config's sizes" if factor == 1.0 else f"the config's sizes x {factor}"
    lines.append(f"anchors {min(map(min, sizes)) * factor:.0f}-{max(map(max, sizes)) * factor:.0f} "
                 f"px ({which}): {coverage[factor]:.0%} of the resized boxes have one at IoU >= "
                 "0.5 by shape (" + ", ".join(f"x{f}: {c:.0%}" for f, c in coverage.items()) + ")")
    kept = [k for k in options if k in user_keys]
    return Fit({k: v for k, v in options.items() if k not in user_keys}, lines, kept)


def _portrait_share(stats: DataStats) -> float:
    return float((stats.image_sizes[:, 1] > stats.image_sizes[:, 0]).mean())


def apply_fit(cfg, fit: Fit) -> None:
    """Set ``fit.options`` in ``cfg`` (not frozen)."""
    for key, value in fit.options.items():
        node = cfg
        *parents, leaf = key.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = type(node[leaf])(value) if isinstance(node[leaf], (tuple, list)) else value

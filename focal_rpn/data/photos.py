"""Photo-like detection test material: real photographs composed into a COCO dataset.

No download: every pixel comes from photographs that installed packages ship,
``skimage.data`` (astronaut, coffee, chelsea, rocket, the stereo motorcycle, camera, coins,
brick, grass, gravel, moon, page, hubble_deep_field, retina, immunohistochemistry, the horse
silhouette) and matplotlib's ``sample_data/grace_hopper.jpg``.

* Backgrounds are random crops of photo regions that hold none of the classes (rescaled to
  the image size, grey ones made RGB), with brightness, contrast and per-channel colour
  jitter; some images join two such crops at a soft horizon.
* Objects are fixed cut-outs of real photo content (``PHOTO_CLASS_SOURCES``: the cat's head,
  the coffee cup, ...), each pasted with a random scale (longer side log-uniform between
  ``MIN_OBJECT_FRACTION`` and ``MAX_OBJECT_FRACTION`` of the image's short side), aspect
  jitter, horizontal flip, brightness jitter and a feathered alpha mask (an ellipse, a rounded
  box or the silhouette, blurred), so no hard rectangular edge is left.
* A new object may cover at most ``MAX_COVER_FRACTION`` of the box of an earlier one (else it
  is placed elsewhere, or skipped); each COCO box is the tight box of the object's visible
  pixels (alpha > 0.5, not covered by a later object).
* Image sizes vary like user photos (``draw_image_size``); images are JPEG, quality 75-95.

``write_photo_dataset(output_dir)`` writes ``images/<split>_<index:05d>.jpg``, ``train.json`` and
``val.json``; ``tools/make_photo_dataset.py`` is its command line. Image ``i`` of split ``s`` is
drawn from ``numpy.random.default_rng([seed, s, i])``, so a seed gives the same files.
"""
import functools
import io
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

import cv2
import numpy as np

PathLike = Union[str, os.PathLike]

#: (x, y, w, h) of one object box in pixels, floats as COCO stores them.
Box = List[float]

MIN_OBJECTS = 1
MAX_OBJECTS = 8
#: Object size: its longer side, as a fraction of the image's short side (log-uniform).
MIN_OBJECT_FRACTION = 0.04
MAX_OBJECT_FRACTION = 0.60
#: ... but never fewer pixels than this.
MIN_OBJECT_PIXELS = 8
#: Aspect jitter: width / height is multiplied by a log-uniform factor in this range.
ASPECT_JITTER = (0.75, 4.0 / 3.0)
#: A new object may cover at most this fraction of the box of any earlier object.
MAX_COVER_FRACTION = 0.3
#: Placement attempts per object before it is skipped.
MAX_PLACEMENT_TRIES = 10
#: Image long side in pixels, uniform in [min, max].
LONG_SIDE_RANGE = (300, 1000)
#: Aspect ratios (long : short) of the images; each portrait or landscape with probability 1/2.
ASPECT_RATIOS = ((1, 1), (4, 3), (3, 2), (16, 9))
#: JPEG quality, uniform in [min, max].
JPEG_QUALITY_RANGE = (75, 95)
SPLITS = ("train", "val")
#: Width of a mask's blurred edge, as a fraction of the object's short side.
FEATHER_FRACTION = 0.03


class ClassSource(NamedTuple):
    """Where one class's cut-out comes from.

    ``image``: a key of ``_SOURCE_LOADERS``; ``rect``: (x0, y0, x1, y1) in that image's pixels;
    ``mask``: "ellipse", "rounded" (a rounded box) or "silhouette" (the image is a mask, filled
    with the texture ``texture_image`` at ``texture_rect``, tinted by ``tint``); ``tint``: RGB
    gains applied to the cut-out (grey sources get colour this way).
    """

    name: str
    image: str
    rect: Tuple[int, int, int, int]
    mask: str
    tint: Tuple[float, float, float] = (1.0, 1.0, 1.0)
    texture_image: Optional[str] = None
    texture_rect: Optional[Tuple[int, int, int, int]] = None


#: The classes, in order: ``num_classes=N`` uses the first N (COCO category id = index + 1).
PHOTO_CLASS_SOURCES: Tuple[ClassSource, ...] = (
    ClassSource("cat", "chelsea", (75, 0, 415, 300), "ellipse"),  # the cat's head
    ClassSource("cup", "coffee", (65, 0, 490, 400), "ellipse"),  # cup, spoon and saucer
    ClassSource("motorcycle", "motorcycle", (85, 95, 715, 475), "rounded"),
    ClassSource(
        "horse", "horse", (8, 0, 398, 322), "silhouette", (0.85, 0.62, 0.42),
        texture_image="gravel", texture_rect=(40, 60, 430, 382),
    ),  # fmt: skip
    ClassSource("rocket", "rocket", (292, 118, 350, 405), "rounded"),  # the rocket on its pad
    ClassSource("astronaut", "astronaut", (140, 5, 310, 190), "ellipse"),  # her face and hair
    ClassSource("admiral", "grace_hopper", (150, 15, 380, 340), "ellipse"),  # Grace Hopper
    ClassSource("coin", "coins", (299, 5, 371, 79), "ellipse", (1.0, 0.82, 0.58)),
    ClassSource("shuttle", "astronaut", (360, 10, 470, 285), "rounded"),  # the shuttle model
    ClassSource("patch", "astronaut", (128, 343, 214, 429), "ellipse"),  # the mission patch
    ClassSource("photographer", "camera", (20, 55, 340, 500), "rounded", (0.95, 0.95, 1.05)),
)
#: All available class names, in order.
PHOTO_CLASSES: Tuple[str, ...] = tuple(c.name for c in PHOTO_CLASS_SOURCES)

#: Background regions (image, (x0, y0, x1, y1) or None for the whole image): none holds a class.
BACKGROUND_REGIONS: Tuple[Tuple[str, Optional[Tuple[int, int, int, int]]], ...] = (
    ("brick", None),
    ("grass", None),
    ("gravel", None),
    ("moon", None),
    ("page", None),
    ("hubble_deep_field", None),
    ("retina", None),
    ("immunohistochemistry", None),
    ("rocket", (0, 0, 285, 427)),  # launch towers, lights and dusk sky
    ("rocket", (355, 0, 640, 427)),
    ("coffee", (485, 0, 600, 400)),  # the wooden table
    ("grace_hopper", (385, 0, 512, 330)),  # blue studio backdrop
    ("grace_hopper", (0, 0, 145, 330)),  # the flag
    ("camera", (400, 100, 512, 512)),  # buildings and lawn
    ("motorcycle", (0, 0, 320, 110)),  # the garage wall
)


def _grace_hopper() -> np.ndarray:
    from matplotlib import cbook
    from PIL import Image

    with Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)) as im:
        return np.asarray(im.convert("RGB"))


def _skimage(name: str):
    def load() -> np.ndarray:
        import skimage.data

        return getattr(skimage.data, name)()

    return load


def _motorcycle() -> np.ndarray:
    import skimage.data

    return skimage.data.stereo_motorcycle()[0]  # the left view


def _horse() -> np.ndarray:
    import skimage.data

    return ~skimage.data.horse()  # skimage: True is the white surround; here True is the horse


_SOURCE_LOADERS = {
    "grace_hopper": _grace_hopper,
    "motorcycle": _motorcycle,
    "horse": _horse,
    **{
        name: _skimage(name)
        for name in (
            "astronaut", "coffee", "chelsea", "rocket", "camera", "coins", "brick", "grass",
            "gravel", "moon", "page", "hubble_deep_field", "retina", "immunohistochemistry",
        )
    },  # fmt: skip
}


class ObjectPatch(NamedTuple):
    """A class's cut-out at source resolution: ``rgb`` (h, w, 3) float32 in [0, 255] and
    ``mask`` (h, w) float32 in {0, 1} (1: the object)."""

    rgb: np.ndarray
    mask: np.ndarray


class PhotoSources(NamedTuple):
    """Everything rendering needs, loaded once (``load_photo_sources``).

    ``objects[k]``: the patch of ``PHOTO_CLASSES[k]``; ``backgrounds``: RGB uint8 (h, w, 3)
    arrays, each a background region.
    """

    objects: Tuple[ObjectPatch, ...]
    backgrounds: Tuple[np.ndarray, ...]


def _as_rgb(image: np.ndarray) -> np.ndarray:
    """(h, w) grey, (h, w, 3) RGB or (h, w, 4) RGBA uint8 -> (h, w, 3) uint8 RGB."""
    if image.ndim == 2:
        return np.repeat(image[:, :, None], 3, axis=2)
    return np.ascontiguousarray(image[:, :, :3])


def _crop(image: np.ndarray, rect: Optional[Tuple[int, int, int, int]]) -> np.ndarray:
    if rect is None:
        return image
    x0, y0, x1, y1 = rect
    assert 0 <= x0 < x1 <= image.shape[1] and 0 <= y0 < y1 <= image.shape[0], (rect, image.shape)
    return image[y0:y1, x0:x1]


def _shape_mask(kind: str, h: int, w: int) -> np.ndarray:
    """An ellipse (``kind="ellipse"``) or rounded box ("rounded") filling an (h, w) box, inset
    by 2 feather widths so that the blurred edge fits: (h, w) float32 in {0, 1}."""
    power = {"ellipse": 2.0, "rounded": 6.0}[kind]
    inset = 2.0 * FEATHER_FRACTION
    ys = (np.arange(h, dtype=np.float32) + 0.5) / h * 2.0 - 1.0
    xs = (np.arange(w, dtype=np.float32) + 0.5) / w * 2.0 - 1.0
    r = np.abs(xs[None, :] / (1.0 - inset)) ** power + np.abs(ys[:, None] / (1.0 - inset)) ** power
    return (r <= 1.0).astype(np.float32)


def _object_patch(spec: ClassSource, images: Dict[str, np.ndarray]) -> ObjectPatch:
    """The cut-out of one class (see ``ClassSource``)."""
    if spec.mask == "silhouette":
        mask = _crop(images[spec.image], spec.rect).astype(np.float32)
        rgb = _as_rgb(_crop(images[spec.texture_image], spec.texture_rect))
        assert rgb.shape[:2] == mask.shape, (spec.name, rgb.shape, mask.shape)
    else:
        rgb = _as_rgb(_crop(images[spec.image], spec.rect))
        mask = _shape_mask(spec.mask, *rgb.shape[:2])
    rgb = rgb.astype(np.float32) * np.asarray(spec.tint, dtype=np.float32)
    return ObjectPatch(np.clip(rgb, 0, 255), mask)


@functools.lru_cache(maxsize=1)
def load_photo_sources() -> PhotoSources:
    """Load the source photographs once (cached) and cut out the classes and backgrounds."""
    names = {s.image for s in PHOTO_CLASS_SOURCES} | {n for n, _ in BACKGROUND_REGIONS}
    names |= {s.texture_image for s in PHOTO_CLASS_SOURCES if s.texture_image}
    images = {name: _SOURCE_LOADERS[name]() for name in sorted(names)}
    objects = tuple(_object_patch(spec, images) for spec in PHOTO_CLASS_SOURCES)
    backgrounds = tuple(
        np.ascontiguousarray(_as_rgb(_crop(images[name], rect)))
        for name, rect in BACKGROUND_REGIONS
    )
    return PhotoSources(objects, backgrounds)


# ----------------------------------------------------------------------------- rendering


def draw_image_size(rng: np.random.Generator) -> Tuple[int, int]:
    """(width, height) of one image: long side uniform in ``LONG_SIDE_RANGE``, aspect ratio
    one of ``ASPECT_RATIOS``, portrait or landscape with probability 1/2 each."""
    long_side = int(rng.integers(LONG_SIDE_RANGE[0], LONG_SIDE_RANGE[1] + 1))
    a, b = ASPECT_RATIOS[int(rng.integers(len(ASPECT_RATIOS)))]
    short_side = int(round(long_side * b / a))
    if rng.random() < 0.5:
        return short_side, long_side  # portrait
    return long_side, short_side


def _random_crop(rng: np.random.Generator, source: np.ndarray, width: int, height: int):
    """A random crop of ``source`` with the aspect of (width, height), resized to it: (height,
    width, 3) float32. The crop covers 40-100% of the largest such crop, at a random place."""
    sh, sw = source.shape[:2]
    scale = min(sw / width, sh / height) * rng.uniform(0.4, 1.0)
    cw, ch = max(int(width * scale), 2), max(int(height * scale), 2)
    x0, y0 = int(rng.integers(0, sw - cw + 1)), int(rng.integers(0, sh - ch + 1))
    crop = source[y0 : y0 + ch, x0 : x0 + cw]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    interpolation = cv2.INTER_AREA if cw > width else cv2.INTER_LINEAR
    out = cv2.resize(np.ascontiguousarray(crop), (width, height), interpolation=interpolation)
    return out.astype(np.float32)


def _colour_jitter(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """Brightness, contrast and per-channel gain jitter of a float32 (h, w, 3) image."""
    gain = rng.uniform(0.65, 1.35) * rng.uniform(0.85, 1.15, 3).astype(np.float32)
    contrast = np.float32(rng.uniform(0.7, 1.3))
    mean = np.float32(image.mean())
    return (image - mean) * contrast + mean * gain.astype(np.float32)


def render_background(
    rng: np.random.Generator, sources: PhotoSources, width: int, height: int
) -> np.ndarray:
    """A background of real photo content: (height, width, 3) float32 RGB, about [0, 255].

    One jittered crop of a background region; in 30% of the images its lower part is another
    crop, joined at a soft horizontal boundary.
    """
    pick = lambda: sources.backgrounds[int(rng.integers(len(sources.backgrounds)))]  # noqa: E731
    image = _colour_jitter(rng, _random_crop(rng, pick(), width, height))
    if rng.random() < 0.3:
        lower = _colour_jitter(rng, _random_crop(rng, pick(), width, height))
        horizon, soft = rng.uniform(0.3, 0.7) * height, max(0.05 * height, 1.0)
        t = np.clip((np.arange(height, dtype=np.float32) - horizon) / soft + 0.5, 0, 1)
        image += (lower - image) * t[:, None, None]
    return image


def _object_layers(
    rng: np.random.Generator, patch: ObjectPatch, long_side: int
) -> Tuple[np.ndarray, np.ndarray]:
    """One scaled, aspect-jittered, maybe flipped, brightness-jittered copy of ``patch``:
    (rgb (h, w, 3) float32, alpha (h, w) float32 in [0, 1] with a blurred edge)."""
    ph, pw = patch.mask.shape
    aspect = pw / ph * np.exp(rng.uniform(np.log(ASPECT_JITTER[0]), np.log(ASPECT_JITTER[1])))
    if aspect >= 1.0:
        w, h = long_side, max(int(round(long_side / aspect)), 2)
    else:
        w, h = max(int(round(long_side * aspect)), 2), long_side
    interpolation = cv2.INTER_AREA if w < pw else cv2.INTER_LINEAR
    rgb = cv2.resize(patch.rgb, (w, h), interpolation=interpolation)
    alpha = cv2.resize(patch.mask, (w, h), interpolation=cv2.INTER_LINEAR)
    sigma = max(FEATHER_FRACTION * min(w, h) / 2.0, 0.5)
    alpha = cv2.GaussianBlur(alpha, (0, 0), sigmaX=sigma, borderType=cv2.BORDER_CONSTANT)
    if rng.random() < 0.5:
        rgb, alpha = rgb[:, ::-1], alpha[:, ::-1]
    return rgb * np.float32(rng.uniform(0.7, 1.3)), alpha


def _cover_fraction(new: Tuple[int, int, int, int], old: Tuple[int, int, int, int]) -> float:
    """Fraction of box ``old`` covered by box ``new`` (both x0, y0, x1, y1, exclusive ends)."""
    iw = min(new[2], old[2]) - max(new[0], old[0])
    ih = min(new[3], old[3]) - max(new[1], old[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    return iw * ih / float((old[2] - old[0]) * (old[3] - old[1]))


def _tight_box(mask: np.ndarray) -> Optional[Tuple[int, int, int, int]]:
    """(x0, y0, x1, y1), exclusive ends, of the True pixels of a (h, w) bool array, or None."""
    cols, rows = np.flatnonzero(mask.any(axis=0)), np.flatnonzero(mask.any(axis=1))
    if len(cols) == 0:
        return None
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def render_photo(
    rng: np.random.Generator, sources: PhotoSources, num_classes: int
) -> Tuple[np.ndarray, List[Tuple[int, Box]]]:
    """Render one photo with ``MIN_OBJECTS``..``MAX_OBJECTS`` objects of the first
    ``num_classes`` classes.

    Returns:
        image: (H, W, 3) uint8 RGB, size from ``draw_image_size``;
        objects: [(class_index, [x, y, w, h])] in drawing order, ``class_index`` 0-based into
        ``PHOTO_CLASSES``, the box (floats, pixels) the tight box of the visible pixels.
    """
    width, height = draw_image_size(rng)
    image = render_background(rng, sources, width, height)
    owner = np.zeros((height, width), dtype=np.int16)  # 0: background, k: object k
    placed: List[Tuple[int, Tuple[int, int, int, int]]] = []  # (class, paste box)
    short = min(width, height)
    lo = max(MIN_OBJECT_FRACTION * short, MIN_OBJECT_PIXELS)
    for _ in range(int(rng.integers(MIN_OBJECTS, MAX_OBJECTS + 1))):
        category = int(rng.integers(num_classes))
        size = int(round(np.exp(rng.uniform(np.log(lo), np.log(MAX_OBJECT_FRACTION * short)))))
        rgb, alpha = _object_layers(rng, sources.objects[category], size)
        visible = alpha > 0.5
        tight = _tight_box(visible)
        if tight is None:
            continue
        h, w = alpha.shape
        for _ in range(MAX_PLACEMENT_TRIES):
            x0, y0 = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
            box = (x0 + tight[0], y0 + tight[1], x0 + tight[2], y0 + tight[3])
            if all(_cover_fraction(box, old) <= MAX_COVER_FRACTION for _, old in placed):
                break
        else:
            continue  # no room for this object
        region = image[y0 : y0 + h, x0 : x0 + w]
        region += (rgb - region) * alpha[:, :, None]
        owner[y0 : y0 + h, x0 : x0 + w][visible] = len(placed) + 1
        placed.append((category, box))

    objects = []
    for k, (category, (x0, y0, x1, y1)) in enumerate(placed, start=1):
        vis = _tight_box(owner[y0:y1, x0:x1] == k)
        if vis is not None:
            bx0, by0, bx1, by1 = vis
            objects.append(
                (category, [float(x0 + bx0), float(y0 + by0), float(bx1 - bx0), float(by1 - by0)])
            )
    return np.clip(image, 0, 255).astype(np.uint8), objects


# ----------------------------------------------------------------------------- files


def _encode_jpeg(image: np.ndarray, quality: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _check_arguments(num_images: Dict[str, int], num_classes: int, seed: int) -> None:
    if set(num_images) != set(SPLITS):
        raise ValueError(f"num_images must give the splits {list(SPLITS)}, got {num_images!r}")
    for split, n in num_images.items():
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"number of {split} images must be an int >= 1, got {n!r}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or not (
        1 <= num_classes <= len(PHOTO_CLASSES)
    ):
        raise ValueError(
            f"num_classes must be an int from 1 to {len(PHOTO_CLASSES)} (the first N of "
            f"{', '.join(PHOTO_CLASSES)}), got {num_classes!r}"
        )
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")


def _write_split(
    out_dir: Path, split: str, num_images: int, num_classes: int, seed: int
) -> dict:
    """Render one split's images into ``out_dir/images``; return its COCO dict."""
    sources = load_photo_sources()
    split_index = SPLITS.index(split)
    images, annotations = [], []
    for index in range(num_images):
        rng = np.random.default_rng([seed, split_index, index])
        image, objects = render_photo(rng, sources, num_classes)
        quality = int(rng.integers(JPEG_QUALITY_RANGE[0], JPEG_QUALITY_RANGE[1] + 1))
        file_name = f"{split}_{index:05d}.jpg"
        (out_dir / "images" / file_name).write_bytes(_encode_jpeg(image, quality))
        height, width = image.shape[:2]
        image_id = index + 1
        images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
        for category, bbox in objects:
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": category + 1,
                "bbox": bbox, "area": bbox[2] * bbox[3], "iscrowd": 0,
            })  # fmt: skip
    return {
        "info": {"description": "focal_rpn photo-like test material (skimage/matplotlib "
                 "sample photographs)", "seed": seed, "split": split},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [
            {"id": i + 1, "name": name, "supercategory": "photo"}
            for i, name in enumerate(PHOTO_CLASSES[:num_classes])
        ],
    }


def write_photo_dataset(
    output_dir: PathLike,
    num_images: Optional[Dict[str, int]] = None,
    num_classes: int = 5,
    seed: int = 0,
) -> Dict[str, str]:
    """Write a photo-like COCO detection dataset into ``output_dir`` (new or empty)::

        output_dir/images/train_00000.jpg ... val_00000.jpg ...
        output_dir/train.json, output_dir/val.json

    ``num_images``: images per split, default ``{"train": 300, "val": 100}``; ``num_classes``:
    the first N of ``PHOTO_CLASSES``. Everything is written into a temporary folder beside
    ``output_dir`` and renamed into place at the end, so an interrupted run leaves no partial
    dataset. Raises ValueError for bad arguments or an ``output_dir`` that is not empty.

    Returns:
        {"train": train_json_path, "val": val_json_path, "image_dir": images_path}
    """
    num_images = dict(num_images if num_images is not None else {"train": 300, "val": 100})
    _check_arguments(num_images, num_classes, seed)
    final = Path(output_dir).expanduser().absolute()
    if final.exists() and (not final.is_dir() or any(final.iterdir())):
        what = "a directory" if final.is_dir() else "a file"
        raise ValueError(
            f"output folder {str(final)!r} already exists and is not empty ({what}); give a "
            "new or empty folder"
        )
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private; the dataset is not
        (tmp / "images").mkdir()
        for split in SPLITS:
            coco = _write_split(tmp, split, num_images[split], num_classes, seed)
            (tmp / f"{split}.json").write_text(json.dumps(coco, separators=(",", ":")))
        if final.exists():
            final.rmdir()  # empty (checked above); rename cannot replace a folder
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {
        "train": str(final / "train.json"),
        "val": str(final / "val.json"),
        "image_dir": str(final / "images"),
    }


def dataset_summary(paths: Dict[str, str]) -> Dict[str, object]:
    """Counts of a written dataset: {"images", "boxes", "classes", "min_size", "max_size"}
    (sizes as (width, height) of the smallest and largest image by area)."""
    images, boxes, classes = [], 0, set()
    for split in SPLITS:
        coco = json.loads(Path(paths[split]).read_text())
        images += [(im["width"], im["height"]) for im in coco["images"]]
        boxes += len(coco["annotations"])
        classes |= {c["name"] for c in coco["categories"]}
    by_area = sorted(images, key=lambda s: s[0] * s[1])
    return {
        "images": len(images), "boxes": boxes, "classes": len(classes),
        "min_size": by_area[0], "max_size": by_area[-1],
    }  # fmt: skip


def class_sources_table(names: Sequence[str] = PHOTO_CLASSES) -> List[str]:
    """One line per class: its name, source image and rectangle (for docs and reports)."""
    by_name = {s.name: s for s in PHOTO_CLASS_SOURCES}
    lines = []
    for name in names:
        s = by_name[name]
        extra = f", texture {s.texture_image} {s.texture_rect}" if s.texture_image else ""
        lines.append(f"{name}: {s.image} x0,y0,x1,y1={s.rect} ({s.mask}{extra})")
    return lines

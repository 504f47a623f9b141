"""Checks of a COCO dataset at registration that detectron2 would only fail (or get silently
wrong) later, in the middle of training.

* ``check_unique_images``: two ``images`` entries with the same ``id`` (detectron2 would move
  the annotations of one onto the other) or the same ``file_name`` under two ids: an error
  naming both entries.
* ``inspect_image_files``: every image file's header (no pixel decoding): width and height,
  after EXIF orientation, must equal the json's (else detectron2's ``SizeMismatchError`` at
  the first epoch); the PIL mode must be readable (``focal_rpn.data.image_io``). Returns the
  files whose mode detectron2's reader would misread (16-bit, 32-bit, float...).
* ``is_degenerate_box`` (the one definition of an unusable box, ``MIN_BOX_SIDE``) and
  ``usable_annotation_count``: annotations that are neither degenerate nor crowd; a training
  dataset with none would end in detectron2's ``AssertionError: No valid data found``
  (``check_trainable`` says which dataset and why).
* ``convert_to_8bit_cache`` / ``use_8bit_copies``: such images are converted once to 8-bit
  PNG copies in ``$FOCAL_RPN_DATA/8bit-copies`` (default ``~/.cache/focal_rpn/datasets``) and
  the dataset's records point at the copies, so that training, evaluation and the
  prediction pictures all see correctly scaled pixels. One warning per dataset says how many.
"""
import hashlib
import logging
import os
from typing import Dict, List, Optional, Sequence

from PIL import Image, UnidentifiedImageError

from .errors import DatasetError
from .image_io import (
    ImageModeError,
    ImageTooLargeError,
    check_mode,
    exif_transposed,
    needs_8bit_conversion,
    open_image,
    to_rgb8,
)

logger = logging.getLogger(__name__)

#: at most this many problems of one kind are listed in an error
MAX_LISTED = 5
#: EXIF orientations that swap width and height
_TRANSPOSING = {5, 6, 7, 8}


def _listed(items: List[str]) -> str:
    more = f"; and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else ""
    return "; ".join(items[:MAX_LISTED]) + more


def check_unique_images(images: List[dict], json_file: str) -> None:
    """Raise DatasetError for a duplicate image ``id`` or ``file_name`` (both entries named)."""
    by_id: Dict[object, int] = {}
    by_name: Dict[object, int] = {}
    for i, img in enumerate(images):
        image_id, name = img.get("id"), img.get("file_name")
        if image_id in by_id:
            j = by_id[image_id]
            raise DatasetError(
                f"{json_file!r}: image id {image_id} appears twice in 'images': images[{j}] "
                f"(file_name {images[j].get('file_name')!r}) and images[{i}] (file_name "
                f"{name!r}); annotations would be drawn on the wrong image. Give every image "
                "a unique id")
        if name in by_name:
            j = by_name[name]
            raise DatasetError(
                f"{json_file!r}: file_name {name!r} appears twice in 'images': images[{j}] "
                f"(id {images[j].get('id')}) and images[{i}] (id {image_id}); one picture "
                "would be trained twice under two sets of boxes. Merge the two entries")
        by_id[image_id], by_name[name] = i, i


def oriented_size(image: Image.Image):
    """(width, height) of ``image`` as detectron2 reads it (EXIF orientation applied)."""
    width, height = image.size
    try:
        orientation = image.getexif().get(0x0112)
    except Exception:  # a broken EXIF block: detectron2 ignores it as well
        orientation = None
    return (height, width) if orientation in _TRANSPOSING else (width, height)


def inspect_image_files(images: List[dict], json_file: str, image_root: str) -> Dict[str, str]:
    """Check the header of every image file (see the module docstring).

    Returns ``{path: mode}`` of the files whose mode needs an 8-bit conversion. Raises
    DatasetError listing size mismatches, unreadable files or unsupported modes.
    """
    mismatched, unreadable, to_convert = [], [], {}
    for img in images:
        path = os.path.join(image_root, img["file_name"])
        try:
            with open_image(path) as image:
                mode, (width, height) = image.mode, oriented_size(image)
        except ImageTooLargeError as e:
            raise DatasetError(f"{json_file!r}: image id {img['id']}: {e}") from None
        except (OSError, UnidentifiedImageError, SyntaxError) as e:
            unreadable.append(f"{path!r} ({type(e).__name__}: {e})")
            continue
        try:
            check_mode(mode, path)
        except ImageModeError as e:
            raise DatasetError(f"{json_file!r}: image id {img['id']}: {e}") from None
        if (width, height) != (img["width"], img["height"]):
            mismatched.append(f"image id {img['id']} {path!r}: json {img['width']}x"
                              f"{img['height']}, file {width}x{height}")
        if needs_8bit_conversion(mode):
            to_convert[path] = mode
    if unreadable:
        raise DatasetError(f"{json_file!r}: {len(unreadable)} image files cannot be opened as images: "
                     f"{_listed(unreadable)}. Restore them, or remove them from the json")
    if mismatched:
        raise DatasetError(
            f"{json_file!r}: {len(mismatched)} images have a width x height in the json that "
            f"differs from the file (EXIF orientation applied): {_listed(mismatched)}. Fix "
            "'width' and 'height' in the json (boxes are in the file's pixels)")
    return to_convert


#: A box is usable when, clipped to its image, both of its sides are longer than this (pixels
#: of the file). detectron2's DatasetMapper clips the resized box to the image and drops it when
#: a side is <= 1e-5 px (``utils.filter_empty_instances``); 1e-2 px stays above that for any
#: resize that shrinks an image less than 1000-fold, so registration, the load-time filter
#: and the loader agree: a box counted as usable here is a box the model trains on.
MIN_BOX_SIDE = 1e-2
#: how a degenerate box is described in warnings and errors
DEGENERATE_BOX_RULE = (f"clipped to the image, a side of at most {MIN_BOX_SIDE:g} px: zero, "
                       "negative or vanishing width or height, or outside the image")


def is_degenerate_box(bbox: Sequence[float], width: int, height: int) -> bool:
    """True when the XYWH box ``bbox`` in an image of ``width`` x ``height`` pixels is not
    usable: clipped to the image, its width or height is at most ``MIN_BOX_SIDE``."""
    x, y, w, h = bbox
    clipped_w = min(x + w, width) - max(x, 0)
    clipped_h = min(y + h, height) - max(y, 0)
    return not (clipped_w > MIN_BOX_SIDE and clipped_h > MIN_BOX_SIDE)


def usable_annotation_count(coco: dict) -> Dict[str, int]:
    """{"usable", "degenerate", "crowd", "total"} annotation counts of a parsed COCO dict
    (degenerate: ``is_degenerate_box``)."""
    sizes = {img["id"]: (img["width"], img["height"]) for img in coco["images"]}
    counts = {"usable": 0, "degenerate": 0, "crowd": 0, "total": len(coco["annotations"])}
    for ann in coco["annotations"]:
        if ann.get("iscrowd", 0):
            counts["crowd"] += 1
        elif is_degenerate_box(ann["bbox"], *sizes[ann["image_id"]]):
            counts["degenerate"] += 1
        else:
            counts["usable"] += 1
    return counts


def check_trainable(dataset_names, metadata_of) -> None:
    """Raise DatasetError if a training dataset registered by focal_rpn has no usable box.

    ``metadata_of(name)``: the dataset's metadata (its ``annotation_counts``, set at
    registration; datasets without it are skipped)."""
    for name in dataset_names:
        counts = getattr(metadata_of(name), "annotation_counts", None)
        if counts is None or counts["usable"] > 0:
            continue
        json_file = getattr(metadata_of(name), "json_file", "?")
        raise DatasetError(
            f"training dataset {name!r} ({json_file}) has no usable annotation: of "
            f"{counts['total']} annotations, {counts['degenerate']} have degenerate boxes "
            f"({DEGENERATE_BOX_RULE}) and {counts['crowd']} are crowd "
            "regions (iscrowd=1), which detectron2 does not train on. Check the boxes' format: "
            "COCO 'bbox' is [x, y, width, height] in pixels")


def cache_root() -> str:
    from .synthetic import default_data_root

    return os.path.join(str(default_data_root()), "8bit-copies")


def _copy_path(path: str, root: str) -> str:
    stat = os.stat(path)
    key = f"{os.path.abspath(path)}|{stat.st_size}|{stat.st_mtime_ns}".encode()
    stem = os.path.splitext(os.path.basename(path))[0]
    return os.path.join(root, f"{stem}-{hashlib.sha1(key).hexdigest()[:16]}.png")


def convert_to_8bit_cache(path: str, root: Optional[str] = None) -> str:
    """The 8-bit RGB PNG copy of image ``path`` (made once; keyed by path, size and mtime)."""
    root = root or cache_root()
    target = _copy_path(path, root)
    if os.path.isfile(target):
        return target
    os.makedirs(root, exist_ok=True)
    with open_image(path) as image:
        image.load()
        rgb = exif_transposed(image, to_rgb8(image, path))
    tmp = f"{target}.tmp-{os.getpid()}"
    rgb.save(tmp, format="PNG")
    os.replace(tmp, target)
    return target


def use_8bit_copies(dataset_dicts: List[dict], modes: Dict[str, str], dataset_name, json_file,
                    root: Optional[str] = None) -> List[dict]:
    """Records of ``dataset_dicts`` whose ``file_name`` is in ``modes`` point at 8-bit copies
    (``original_file_name`` keeps the original); one warning per call."""
    if not modes:
        return dataset_dicts
    out = []
    for record in dataset_dicts:
        path = record["file_name"]
        if path in modes:
            record = dict(record, file_name=convert_to_8bit_cache(path, root),
                          original_file_name=path)
        out.append(record)
    counts = {m: sum(v == m for v in modes.values()) for m in sorted(set(modes.values()))}
    kinds = ", ".join(f"{m}: {n}" for m, n in counts.items())
    logger.warning(
        f"Dataset {dataset_name!r} ({json_file}): {len(modes)} images are not 8 bits per channel "
        f"(PIL modes {kinds}); they are read from 8-bit copies scaled to 0..255 (see "
        f"focal_rpn.data.image_io) in {root or cache_root()}")
    return out

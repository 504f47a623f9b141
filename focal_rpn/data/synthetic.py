"""The embedded default dataset: deterministic synthetic shapes, as real COCO files on disk.

``register_synthetic_dataset()`` makes (on first use) and registers two detectron2 datasets,
``focal_synth_train`` and ``focal_synth_val``, so a config can train and evaluate with no
download::

    from focal_rpn.data import register_synthetic_dataset
    train_name, val_name = register_synthetic_dataset()  # ("focal_synth_train", "focal_synth_val")

On disk (``root`` is ``$FOCAL_RPN_DATA``, else ``~/.cache/focal_rpn/datasets``)::

    root/synth-v2-256px-train1000-val200-seed0-jpg/   # the name encodes every parameter
        annotations/instances_train.json              # COCO: images, annotations, categories
        annotations/instances_val.json
        train/000001.jpg ...
        val/000001.jpg ...
        params.json                                   # written last: marks a complete dataset

A dataset is generated into a temporary folder beside it and renamed into place, so an
interrupted generation is never reused. The same parameters give byte-identical files (each
image is drawn from its own seed ``(seed, split, index)``, so e.g. the val images do not depend
on ``num_train``). What the images contain is described in ``shapes.py``; changing what they
contain must bump ``GENERATOR_VERSION`` so that caches made by older code are not reused.
"""
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Dict, Optional, Tuple, Union

import cv2
import numpy as np

from .shapes import SHAPE_CLASSES, render_image

logger = logging.getLogger(__name__)

#: Bump when the images or annotations produced for given parameters change.
GENERATOR_VERSION = 2
#: Default dataset name prefix: datasets ``focal_synth_train`` and ``focal_synth_val``.
DEFAULT_NAME = "focal_synth"
SPLITS = ("train", "val")
IMAGE_FORMATS = ("jpg", "png")
_COMPLETE_MARKER = "params.json"

PathLike = Union[str, os.PathLike]


def synthetic_class_names() -> Tuple[str, ...]:
    """Class names of the synthetic datasets, in contiguous-id order (COCO id = index + 1)."""
    return SHAPE_CLASSES


def default_data_root() -> Path:
    """``$FOCAL_RPN_DATA`` if set, else ``~/.cache/focal_rpn/datasets``."""
    env = os.environ.get("FOCAL_RPN_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "focal_rpn" / "datasets"


def _check_params(num_images: Dict[str, int], image_size: int, seed: int, image_format: str):
    for split, n in num_images.items():
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"number of {split} images must be an int >= 1, got {n!r}")
    if not isinstance(image_size, int) or image_size < 32:
        raise ValueError(f"image_size must be an int >= 32 (pixels), got {image_size!r}")
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")
    if image_format not in IMAGE_FORMATS:
        raise ValueError(f"image_format must be one of {IMAGE_FORMATS}, got {image_format!r}")


def _encode(image: np.ndarray, image_format: str) -> bytes:
    if image_format == "jpg":
        ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 95])
    else:
        ok, data = cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    assert ok, f"OpenCV could not encode a {image_format} image"
    return data.tobytes()


def write_synthetic_split(
    json_file: PathLike,
    image_root: PathLike,
    num_images: int,
    image_size: int = 256,
    seed: int = 0,
    split_index: int = 0,
    image_format: str = "jpg",
    progress=None,
) -> None:
    """Render ``num_images`` images into ``image_root`` and their COCO json into ``json_file``.

    Image ``i`` (1-based, file ``{i:06d}.{image_format}``, COCO image id ``i``) is drawn from
    ``numpy.random.default_rng([seed, split_index, i])``. ``progress``: an optional tqdm bar
    advanced once per image.
    """
    _check_params({"split": num_images}, image_size, seed, image_format)
    image_root, json_file = Path(image_root), Path(json_file)
    image_root.mkdir(parents=True, exist_ok=True)
    json_file.parent.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for image_id in range(1, num_images + 1):
        rng = np.random.default_rng([seed, split_index, image_id])
        image, objects = render_image(rng, image_size)
        file_name = f"{image_id:06d}.{image_format}"
        (image_root / file_name).write_bytes(_encode(image, image_format))
        images.append(
            {"id": image_id, "file_name": file_name, "width": image_size, "height": image_size}
        )
        for obj in objects:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": obj.category_index + 1,
                    "bbox": [float(v) for v in obj.bbox],  # tight box of the visible pixels
                    "area": float(obj.area),  # visible pixels, as COCO's area ranges expect
                    "iscrowd": 0,
                }
            )
        if progress is not None:
            progress.update(1)
    coco = {
        "info": {
            "description": "focal_rpn synthetic shapes",
            "version": str(GENERATOR_VERSION),
            "image_size": image_size,
            "seed": seed,
            "split_index": split_index,
        },
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [
            {"id": i + 1, "name": name, "supercategory": "shape"}
            for i, name in enumerate(SHAPE_CLASSES)
        ],
    }
    json_file.write_text(json.dumps(coco, separators=(",", ":")))


def generate_synthetic_coco(
    out_dir: PathLike,
    num_train: int = 1000,
    num_val: int = 200,
    image_size: int = 256,
    seed: int = 0,
    image_format: str = "jpg",
    progress: bool = True,
    desc: Optional[str] = None,
) -> Dict[str, Tuple[str, str]]:
    """Write the train and val splits into ``out_dir`` (created if needed, written in place).

    ``progress``: show a tqdm bar (``desc`` labels it, default: the folder name).
    Returns ``{"train": (json_file, image_root), "val": (json_file, image_root)}``. Use
    ``ensure_synthetic_coco`` for the cached, atomically written version.
    """
    num_images = {"train": num_train, "val": num_val}
    _check_params(num_images, image_size, seed, image_format)
    from tqdm import tqdm

    out_dir = Path(out_dir)
    paths = {}
    with tqdm(
        total=num_train + num_val,
        desc=desc or f"synthetic dataset {out_dir.name}",
        unit="img",
        mininterval=0.5,
        disable=not progress,
    ) as bar:
        for split_index, split in enumerate(SPLITS):
            json_file = out_dir / "annotations" / f"instances_{split}.json"
            image_root = out_dir / split
            write_synthetic_split(
                json_file, image_root, num_images[split], image_size, seed, split_index,
                image_format, progress=bar,
            )  # fmt: skip
            paths[split] = (str(json_file), str(image_root))
    return paths


def synthetic_dataset_dir(
    root: Optional[PathLike] = None,
    num_train: int = 1000,
    num_val: int = 200,
    image_size: int = 256,
    seed: int = 0,
    image_format: str = "jpg",
) -> Path:
    """The cache folder of a parameter set; its name encodes the parameters and the version."""
    root = Path(root).expanduser() if root is not None else default_data_root()
    name = (
        f"synth-v{GENERATOR_VERSION}-{image_size}px-train{num_train}-val{num_val}"
        f"-seed{seed}-{image_format}"
    )
    return root / name


def ensure_synthetic_coco(
    root: Optional[PathLike] = None,
    num_train: int = 1000,
    num_val: int = 200,
    image_size: int = 256,
    seed: int = 0,
    image_format: str = "jpg",
    progress: bool = True,
) -> Path:
    """Return the cache folder of these parameters, generating it first if it is not complete."""
    _check_params({"train": num_train, "val": num_val}, image_size, seed, image_format)
    params = dict(
        num_train=num_train, num_val=num_val, image_size=image_size, seed=seed,
        image_format=image_format,
    )  # fmt: skip
    final = synthetic_dataset_dir(root, **params)
    if (final / _COMPLETE_MARKER).is_file():
        return final
    if final.exists():  # not made by this code (no marker): never reuse a partial dataset
        logger.warning(f"Removing incomplete synthetic dataset {final}")
        shutil.rmtree(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(final)
    logger.info(f"Generating the synthetic dataset into {final} (done once, then cached)")
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the dataset is not
    try:
        generate_synthetic_coco(tmp, progress=progress, desc=final.name, **params)
        marker = dict(params, generator_version=GENERATOR_VERSION, classes=list(SHAPE_CLASSES))
        (tmp / _COMPLETE_MARKER).write_text(json.dumps(marker, indent=2) + "\n")
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / _COMPLETE_MARKER).is_file():
                raise
            shutil.rmtree(tmp)  # another process finished the same dataset first
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _remove_stale_temporaries(final: Path, max_age_s: float = 3600.0) -> None:
    """Delete temporary folders of ``final`` left by generations killed over an hour ago."""
    now = time.time()
    for tmp in final.parent.glob(f".{final.name}.tmp-*"):
        try:
            if now - tmp.stat().st_mtime > max_age_s:
                shutil.rmtree(tmp, ignore_errors=True)
        except OSError:
            pass  # removed meanwhile by another process


def register_synthetic_dataset(
    name: str = DEFAULT_NAME,
    root: Optional[PathLike] = None,
    num_train: int = 1000,
    num_val: int = 200,
    image_size: int = 256,
    seed: int = 0,
    image_format: str = "jpg",
    progress: bool = True,
) -> Tuple[str, str]:
    """Generate (if not cached) and register ``{name}_train`` and ``{name}_val``.

    They are registered with ``register_coco_instances`` (so ``COCOEvaluator`` reads their
    json) and metadata ``thing_classes``. Calling it again with the same arguments does
    nothing; with other arguments the names are re-registered to the new files.

    Returns:
        (train_name, val_name), e.g. ``("focal_synth_train", "focal_synth_val")``.
    """
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.datasets import register_coco_instances

    out_dir = ensure_synthetic_coco(
        root, num_train, num_val, image_size, seed, image_format, progress=progress
    )
    metadata = {
        "thing_classes": list(SHAPE_CLASSES),
        "thing_dataset_id_to_contiguous_id": {i + 1: i for i in range(len(SHAPE_CLASSES))},
    }
    names = []
    for split in SPLITS:
        dataset_name = f"{name}_{split}"
        json_file = str(out_dir / "annotations" / f"instances_{split}.json")
        image_root = str(out_dir / split)
        names.append(dataset_name)
        if dataset_name in DatasetCatalog.list():
            meta = MetadataCatalog.get(dataset_name)
            if getattr(meta, "json_file", None) == json_file and (
                getattr(meta, "image_root", None) == image_root
            ):
                continue
            logger.info(f"Re-registering dataset {dataset_name!r} to {json_file}")
            DatasetCatalog.remove(dataset_name)
            MetadataCatalog.remove(dataset_name)
        register_coco_instances(dataset_name, metadata, json_file, image_root)
    return tuple(names)


def make_tiny_coco(
    out_dir: PathLike, num_images: int = 4, image_size: int = 64, seed: int = 0
) -> Tuple[str, str]:
    """A tiny synthetic COCO dataset for tests: ``out_dir/instances.json`` + ``out_dir/images/``.

    Returns (json_file, image_root). Not cached, not registered.
    """
    json_file = Path(out_dir) / "instances.json"
    image_root = Path(out_dir) / "images"
    write_synthetic_split(json_file, image_root, num_images, image_size, seed, image_format="png")
    return str(json_file), str(image_root)

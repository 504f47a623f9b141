"""User datasets in COCO format, registered without code, with errors that say what is wrong.

Command-line form (``tools/train_net.py --dataset``, ``tools/predict.py --dataset-name``)::

    NAME=JSON:IMAGE_DIR        e.g.  mine_train=data/ann/train.json:data/images

``NAME`` ends at the first ``=``; ``JSON`` ends at the first ``.json:`` (the annotation file
must be named ``*.json``), so both paths may contain ``:`` and ``=``.

Registration (``parse_dataset_arg`` / ``register_coco_dataset``) reads the json once and fails
early, naming the file, the key or id and the value, when: the json or the image folder is
missing; the json is truncated or malformed; ``images``, ``annotations`` or ``categories`` is
missing or not a list; an annotation's ``category_id`` is not among the categories; an image
file is missing; two categories share a name; an object in the json repeats a key. Annotations
with degenerate boxes (``coco_checks.is_degenerate_box``: clipped to the image, a side of at
most ``MIN_BOX_SIDE`` = 0.01 px, the one definition that registration, the load-time filter and
detectron2's loader agree on) are dropped when the dataset is loaded, with one warning per
dataset that counts them; a training dataset with no usable box is refused.

The dataset is loaded by detectron2's ``load_coco_json`` and then filtered
(``load_checked_coco_json``); its metadata has ``json_file``, ``image_root``,
``evaluator_type="coco"`` and ``thing_classes``, so detectron2's ``COCOEvaluator`` works.

Also here: ``check_num_classes`` (config vs dataset classes), ``require_builtin_datasets``
(COCO 2017 and other file-based datasets of a config are on disk) and
``CheckedDatasetMapper`` (an unreadable image names its file).
"""
import json
import logging
import math
import os
import warnings
from typing import Dict, Iterable, List, Optional, Sequence

from detectron2.data import DatasetCatalog, DatasetMapper, MetadataCatalog
from detectron2.data.datasets import load_coco_json
from detectron2.structures import BoxMode
from PIL import Image

from . import coco_checks, image_io
from .errors import DatasetError, DatasetFileNotFoundError, ImageReadError  # noqa: F401 (re-exported)

logger = logging.getLogger(__name__)

#: How to run without any downloaded data (quoted by errors about missing datasets).
EMBEDDED_DEFAULT_HINT = (
    "To run on the embedded synthetic dataset instead (generated on first use, no download), "
    "run `make demo`, or `python tools/train_net.py --config-file configs/quick_retinanet_R18.yaml`."
)
#: At most this many missing image files are listed in an error.
MAX_LISTED = 5


# ----------------------------------------------------------------------------- registration


def parse_dataset_arg(arg: str) -> str:
    """Register the dataset described by ``"NAME=JSON:IMAGE_DIR"`` and return NAME.

    See the module docstring for the rule that splits the argument. Registering the same NAME
    again with the same paths does nothing; with other paths it is an error.
    """
    form = "NAME=JSON:IMAGE_DIR (e.g. mine=annotations/train.json:images/train)"
    if "=" not in arg:
        raise DatasetError(f"--dataset {arg!r}: expected {form}; there is no '='")
    name, rest = arg.split("=", 1)
    name = name.strip()
    if not name:
        raise DatasetError(f"--dataset {arg!r}: expected {form}; NAME is empty")
    sep = rest.lower().find(".json:")
    if sep < 0:
        raise DatasetError(
            f"--dataset {arg!r}: expected {form}; found no '.json:' after '=' "
            "(the annotation file must end in .json, followed by ':' and the image folder)"
        )
    json_file, image_root = rest[: sep + len(".json")], rest[sep + len(".json:") :]
    if not image_root:
        raise DatasetError(f"--dataset {arg!r}: expected {form}; IMAGE_DIR is empty")
    return register_coco_dataset(name, json_file, image_root)


def register_coco_dataset(name: str, json_file: str, image_root: str) -> str:
    """Check a COCO-format dataset (see the module docstring) and register it as ``name``."""
    json_file = os.path.abspath(os.path.expanduser(str(json_file)))
    image_root = os.path.abspath(os.path.expanduser(str(image_root)))
    if name in DatasetCatalog.list():
        meta = MetadataCatalog.get(name)
        old = (getattr(meta, "json_file", None), getattr(meta, "image_root", None))
        if old == (json_file, image_root):
            return name
        raise DatasetError(
            f"dataset {name!r} is already registered with json {old[0]!r} and images "
            f"{old[1]!r}; cannot register it again with json {json_file!r} and images "
            f"{image_root!r}: choose another name"
        )
    coco = read_coco_json(json_file)
    if not os.path.isdir(image_root):
        raise DatasetFileNotFoundError(
            f"dataset {name!r}: image folder {image_root!r} (given with {json_file!r}) "
            "does not exist or is not a folder"
        )
    num_degenerate = validate_coco_json(coco, json_file, image_root)
    if num_degenerate:
        _warn_degenerate(name, json_file, num_degenerate)
    # sizes and modes of the image files (headers only); 16-bit etc. are read from 8-bit copies
    modes = coco_checks.inspect_image_files(coco["images"], json_file, image_root)

    categories = sorted(coco["categories"], key=lambda c: c["id"])
    DatasetCatalog.register(name, lambda: coco_checks.use_8bit_copies(
        load_checked_coco_json(json_file, image_root, name), modes, name, json_file))
    MetadataCatalog.get(name).set(
        json_file=json_file,
        image_root=image_root,
        evaluator_type="coco",
        thing_classes=[c["name"] for c in categories],
        thing_dataset_id_to_contiguous_id={c["id"]: i for i, c in enumerate(categories)},
        annotation_counts=coco_checks.usable_annotation_count(coco),
    )
    logger.info(
        f"Registered dataset {name!r}: {len(coco['images'])} images, "
        f"{len(coco['annotations'])} annotations, {len(categories)} classes from {json_file}"
    )
    return name


# ----------------------------------------------------------------------------- checks of the json


class _RepeatedKeyError(ValueError):
    def __init__(self, key, pairs):
        values = [v for k, v in pairs if k == key]
        self.key, self.count = key, len(values)
        self.values = ", ".join(_short(v) for v in values[:3])
        ident = next((f"{k}={v!r}" for k, v in pairs if k in ("id", "file_name", "name")
                      and k != key and not isinstance(v, (dict, list))), None)
        self.shown = f"with {ident}" if ident else "{" + ", ".join(
            f"{k!r}: {_short(v)}" for k, v in pairs[:4]) + (", ...}" if len(pairs) > 4 else "}")
        super().__init__(key)


def _short(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _object_without_repeated_keys(pairs):
    """``json.load``'s ``object_pairs_hook``: a dict, or ``_RepeatedKeyError`` for a key that
    appears twice in one object (``json`` would silently keep the last value)."""
    out = dict(pairs)
    if len(out) != len(pairs):
        seen = set()
        repeated = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise _RepeatedKeyError(repeated, pairs)
    return out


def read_coco_json(json_file: str) -> dict:
    """Parse a COCO json file; errors name the file and, for bad JSON, the position."""
    if not os.path.isfile(json_file):
        raise DatasetFileNotFoundError(f"annotation file {json_file!r} does not exist")
    try:
        with open(json_file, encoding="utf-8") as f:
            coco = json.load(f, object_pairs_hook=_object_without_repeated_keys)
    except _RepeatedKeyError as e:
        raise DatasetError(
            f"annotation file {json_file!r}: the JSON object {e.shown} has the key {e.key!r} "
            f"{e.count} times (values {e.values}); a JSON reader keeps only the last one, so "
            "the others would be lost without a word. Keep one value per key") from None
    except json.JSONDecodeError as e:
        raise DatasetError(
            f"annotation file {json_file!r} is not valid JSON (truncated or malformed?): "
            f"{e.msg} at line {e.lineno} column {e.colno} (char {e.pos})"
        ) from e
    except UnicodeDecodeError as e:
        raise DatasetError(f"annotation file {json_file!r} is not UTF-8 text: {e}") from e
    if not isinstance(coco, dict):
        raise DatasetError(
            f"annotation file {json_file!r}: the top level must be a JSON object with lists "
            f"'images', 'annotations' and 'categories', got a {type(coco).__name__}"
        )
    for key, what in (("images", "image"), ("annotations", "annotation"), ("categories", "category")):
        if key not in coco:
            raise DatasetError(
                f"annotation file {json_file!r}: missing key {key!r} (expected a list of "
                f"{what} objects; keys present: {sorted(coco)})"
            )
        if not isinstance(coco[key], list):
            raise DatasetError(
                f"annotation file {json_file!r}: {key!r} must be a list of {what} objects, "
                f"got a {type(coco[key]).__name__}"
            )
    return coco


def _require(json_file: str, what: str, obj, key: str, kind, positive=False):
    """``obj[key]`` of type ``kind`` (and > 0 if ``positive``), else a DatasetError."""
    if not isinstance(obj, dict):
        raise DatasetError(f"{json_file!r}: {what} must be a JSON object, got {obj!r}")
    if key not in obj:
        raise DatasetError(f"{json_file!r}: {what} has no {key!r} (keys: {sorted(obj)})")
    value = obj[key]
    ok = isinstance(value, kind) and not isinstance(value, bool)
    if not ok or (positive and value <= 0):
        expected = f"a positive {kind.__name__}" if positive else f"a {kind.__name__}"
        raise DatasetError(f"{json_file!r}: {what} has {key}={value!r}, expected {expected}")
    return value


def validate_coco_json(coco: dict, json_file: str, image_root: Optional[str] = None) -> int:
    """Check the content of a parsed COCO dict (see the module docstring).

    Raises DatasetError naming the json file, the id and the bad value for: malformed
    categories, images or annotations; an annotation whose ``category_id`` is not among the
    categories (the allowed ids are listed) or whose ``image_id`` is not among the images.
    With ``image_root``, raises DatasetFileNotFoundError listing missing image files.

    Returns:
        the number of annotations with degenerate boxes (they are dropped at load time).
    """
    category_ids = set()
    id_of_name: Dict[str, int] = {}
    for i, cat in enumerate(coco["categories"]):
        cid = _require(json_file, f"categories[{i}]", cat, "id", int)
        name = _require(json_file, f"category id {cid}", cat, "name", str)
        if cid in category_ids:
            raise DatasetError(f"{json_file!r}: category id {cid} appears twice in 'categories'")
        category_ids.add(cid)
        key = " ".join(name.split()).casefold()  # "Car", "car " and "car" read as one name
        if not key:
            raise DatasetError(f"{json_file!r}: category id {cid} has an empty name {name!r}; "
                               "give every category a name")
        if key in id_of_name:
            other = id_of_name[key]
            other_name = next(c["name"] for c in coco["categories"] if c.get("id") == other)
            raise DatasetError(
                f"{json_file!r}: categories id {other} ({other_name!r}) and id {cid} "
                f"({name!r}) have the same name: predictions of the two classes could not be "
                "told apart by name (classes.json, prediction pictures, COCO results). Merge "
                "them into one category (and re-map the annotations' category_id), or rename "
                "one")
        id_of_name[key] = cid
    if not category_ids:
        raise DatasetError(f"{json_file!r}: 'categories' is empty (at least one class needed)")

    sizes: Dict[int, tuple] = {}
    coco_checks.check_unique_images(coco["images"], json_file)
    for i, img in enumerate(coco["images"]):
        image_id = _require(json_file, f"images[{i}]", img, "id", int)
        what = f"image id {image_id}"
        _require(json_file, what, img, "file_name", str)
        sizes[image_id] = (
            _require(json_file, what, img, "width", int, positive=True),
            _require(json_file, what, img, "height", int, positive=True),
        )

    num_degenerate = 0
    ann_index: Dict[int, int] = {}
    for i, ann in enumerate(coco["annotations"]):
        ann_id = _require(json_file, f"annotations[{i}]", ann, "id", int)
        what = f"annotation id {ann_id}"
        if ann_id in ann_index:
            j = ann_index[ann_id]
            raise DatasetError(
                f"{json_file!r}: annotation id {ann_id} appears twice: annotations[{j}] "
                f"(image_id {coco['annotations'][j].get('image_id')}) and annotations[{i}] "
                f"(image_id {ann.get('image_id')}); give every annotation a unique id")
        ann_index[ann_id] = i
        cid = _require(json_file, what, ann, "category_id", int)
        if cid not in category_ids:
            raise DatasetError(
                f"{json_file!r}: annotation id {ann_id} has category_id {cid}, which is not "
                f"the id of any category; allowed ids: {sorted(category_ids)}"
            )
        image_id = _require(json_file, what, ann, "image_id", int)
        if image_id not in sizes:
            raise DatasetError(
                f"{json_file!r}: annotation id {ann_id} has image_id {image_id}, which is not "
                "the id of any image in 'images'"
            )
        bbox = ann.get("bbox")
        if not (
            isinstance(bbox, list)
            and len(bbox) == 4
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in bbox)
            and all(math.isfinite(v) for v in bbox)
        ):
            raise DatasetError(
                f"{json_file!r}: annotation id {ann_id} has bbox={bbox!r}, expected "
                "[x, y, width, height] (4 finite numbers, pixels)"
            )
        num_degenerate += coco_checks.is_degenerate_box(bbox, *sizes[image_id])

    if image_root is not None:
        _check_image_files(coco["images"], json_file, image_root)
    return num_degenerate


def _check_image_files(images: List[dict], json_file: str, image_root: str) -> None:
    missing = [
        os.path.join(image_root, img["file_name"])
        for img in images
        if not os.path.isfile(os.path.join(image_root, img["file_name"]))
    ]
    if missing:
        listed = ", ".join(repr(p) for p in missing[:MAX_LISTED])
        more = f" and {len(missing) - MAX_LISTED} more" if len(missing) > MAX_LISTED else ""
        raise DatasetFileNotFoundError(
            f"{json_file!r}: {len(missing)} of {len(images)} image files are missing under "
            f"{image_root!r}: {listed}{more}"
        )


# ----------------------------------------------------------------------------- loading

#: Datasets whose degenerate boxes were already reported in this process (one warning each).
_WARNED_DEGENERATE = set()


def _warn_degenerate(dataset_name: Optional[str], json_file: str, count: int) -> None:
    key = (dataset_name, json_file)
    if key in _WARNED_DEGENERATE:
        return
    _WARNED_DEGENERATE.add(key)
    logger.warning(
        f"Dataset {dataset_name!r} ({json_file}): dropping {count} annotations with degenerate "
        f"boxes ({coco_checks.DEGENERATE_BOX_RULE})"
    )


def validate_coco_dicts(
    dataset_dicts: List[dict], dataset_name: Optional[str] = None, json_file: str = ""
) -> List[dict]:
    """Drop annotations with degenerate boxes from detectron2 dataset dicts (one warning).

    ``json_file`` only labels the warning. Returns new records; the input is not modified.
    """
    out, dropped = [], 0
    for record in dataset_dicts:
        kept = []
        for ann in record.get("annotations", []):
            box = BoxMode.convert(list(ann["bbox"]), ann["bbox_mode"], BoxMode.XYWH_ABS)
            if coco_checks.is_degenerate_box(box, record["width"], record["height"]):
                dropped += 1
            else:
                kept.append(ann)
        out.append(dict(record, annotations=kept) if "annotations" in record else record)
    if dropped:
        _warn_degenerate(dataset_name, json_file, dropped)
    return out


def load_checked_coco_json(json_file: str, image_root: str, dataset_name: Optional[str] = None):
    """``detectron2.data.datasets.load_coco_json``, then ``validate_coco_dicts``.

    An unknown category id (detectron2 raises a bare KeyError) is reported as a DatasetError
    naming the annotation id, its category id and the allowed ids.
    """
    try:
        dicts = load_coco_json(json_file, image_root, dataset_name)
    except KeyError:
        validate_coco_json(read_coco_json(json_file), json_file)  # raises the clear error
        raise
    return validate_coco_dicts(dicts, dataset_name, json_file)


# ----------------------------------------------------------------------------- config checks


def num_classes_key(cfg) -> Optional[str]:
    """The config key holding the number of classes of ``cfg``'s model (None: class-agnostic)."""
    arch = cfg.MODEL.META_ARCHITECTURE
    if "RetinaNet" in arch:
        return "MODEL.RETINANET.NUM_CLASSES"
    if arch == "ProposalNetwork":
        return None
    return "MODEL.ROI_HEADS.NUM_CLASSES"


def num_classes_value(cfg) -> Optional[int]:
    """The number of classes ``cfg``'s model predicts (None: class-agnostic)."""
    key = num_classes_key(cfg)
    if key is None:
        return None
    value = cfg
    for part in key.split("."):
        value = getattr(value, part)
    return value


def check_num_classes(cfg, dataset_names: Iterable[str]) -> None:
    """Raise ValueError if the model predicts fewer classes than a dataset has.

    The number of classes is ``MODEL.RETINANET.NUM_CLASSES`` for RetinaNet meta-architectures,
    ``MODEL.ROI_HEADS.NUM_CLASSES`` otherwise. More classes than the data is allowed (logged).
    Datasets without ``thing_classes`` metadata are skipped.
    """
    key, value = num_classes_key(cfg), num_classes_value(cfg)
    if key is None:
        return
    for name in dataset_names:
        if name not in MetadataCatalog.list():
            continue
        classes = getattr(MetadataCatalog.get(name), "thing_classes", None)
        if classes is None:
            continue
        if value < len(classes):
            shown = ", ".join(classes[:10]) + (", ..." if len(classes) > 10 else "")
            raise DatasetError(
                f"{key} is {value}, but dataset {name!r} has {len(classes)} classes ({shown}): "
                f"set {key} to {len(classes)} (e.g. append `{key} {len(classes)}` to the command)"
            )
        if value > len(classes):
            logger.warning(
                f"{key} is {value}, but dataset {name!r} has only {len(classes)} classes: "
                "the extra classes are never trained"
            )


def builtin_datasets_root() -> str:
    """Where detectron2's builtin datasets live: ``$DETECTRON2_DATASETS``, default ``./datasets``."""
    return os.path.abspath(os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets")))


def coco_2017_paths(root: Optional[str] = None) -> Dict[str, str]:
    """The COCO 2017 files detectron2 expects (train and val json and image folders)."""
    coco = os.path.join(root or builtin_datasets_root(), "coco")
    return {
        "train_json": os.path.join(coco, "annotations", "instances_train2017.json"),
        "train_images": os.path.join(coco, "train2017"),
        "val_json": os.path.join(coco, "annotations", "instances_val2017.json"),
        "val_images": os.path.join(coco, "val2017"),
    }


def coco_2017_available(root: Optional[str] = None) -> bool:
    """Whether ``root/coco`` (default ``$DETECTRON2_DATASETS/coco``) holds COCO 2017 train."""
    paths = coco_2017_paths(root)
    return os.path.isfile(paths["train_json"]) and os.path.isdir(paths["train_images"])


def require_builtin_datasets(cfg) -> None:
    """Fail early, with the expected paths, if a dataset of ``cfg`` is missing.

    Every name in ``DATASETS.TRAIN`` and ``DATASETS.TEST`` must be registered, and the
    ``json_file`` and ``image_root`` of its metadata (set for detectron2's builtin COCO-format
    datasets such as ``coco_2017_train``, and for datasets registered here) must exist.
    Raises DatasetFileNotFoundError / DatasetError that say where the data must be and how to
    run the embedded synthetic dataset instead.
    """
    registered = set(DatasetCatalog.list())
    for name in list(dict.fromkeys(list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST))):
        if name not in registered:
            raise DatasetError(
                f"dataset {name!r} (in DATASETS.TRAIN or DATASETS.TEST) is not registered. "
                "Register your own COCO-format data with --dataset NAME=JSON:IMAGE_DIR. "
                + EMBEDDED_DEFAULT_HINT
            )
        meta = MetadataCatalog.get(name)
        needed = [getattr(meta, "json_file", None), getattr(meta, "image_root", None)]
        needed = [os.path.abspath(p) for p in needed if p]
        if all(os.path.exists(p) for p in needed):
            continue
        status = ", ".join(
            f"{p} ({'found' if os.path.exists(p) else 'MISSING'})" for p in needed
        )
        where = ""
        if "coco" in name or "coco" in os.path.normpath(needed[0]).split(os.sep):
            where = (
                " detectron2 looks for COCO in $DETECTRON2_DATASETS/coco (default "
                "./datasets/coco; here the paths above): download COCO 2017 from "
                "https://cocodataset.org/#download (annotations/instances_{train,val}2017.json, "
                "train2017/, val2017/) there, or set DETECTRON2_DATASETS to the folder that "
                "contains coco/."
            )
            root = builtin_datasets_root()
            if not needed[0].startswith(root + os.sep):
                where += (
                    f" (DETECTRON2_DATASETS now gives {root}, but detectron2 registered its "
                    "datasets when it was imported: set the variable before starting Python.)"
                )
        raise DatasetFileNotFoundError(
            f"dataset {name!r} is not on disk; it needs: {status}.{where} {EMBEDDED_DEFAULT_HINT}"
        )


# ----------------------------------------------------------------------------- mapper


class CheckedDatasetMapper(DatasetMapper):
    """detectron2's DatasetMapper, but an image that cannot be read (or is too large to decode)
    names its file.

    Errors of reading the image (missing, truncated or corrupt file: OSError, or SyntaxError,
    which PIL raises for some broken PNGs) become an ``ImageReadError`` naming ``file_name``.
    """

    def __call__(self, dataset_dict):
        try:
            with warnings.catch_warnings():
                # named once per file at registration (image_io.open_image), not at every read
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                return super().__call__(dataset_dict)
        except Image.DecompressionBombError as e:
            file_name = dataset_dict.get("file_name", "<record without file_name>")
            raise ImageReadError(
                f"image file {file_name!r} (image_id {dataset_dict.get('image_id')!r}) is too "
                f"large to decode: {e}. Downscale it, or raise the limit with "
                f"{image_io.MAX_PIXELS_ENV}=<pixels> (0: no limit)") from None
        except (OSError, SyntaxError) as e:
            file_name = dataset_dict.get("file_name", "<record without file_name>")
            raise ImageReadError(
                f"cannot read image file {file_name!r} (image_id "
                f"{dataset_dict.get('image_id')!r}): {type(e).__name__}: {e}. The file is "
                "missing or corrupt: restore it, or remove it from the dataset's json."
            ) from e


def check_trainable(cfg) -> None:
    """Raise DatasetError if a DATASETS.TRAIN dataset registered here has no usable box
    (all degenerate or crowd): detectron2 would stop with ``AssertionError: No valid data``."""
    coco_checks.check_trainable(list(cfg.DATASETS.TRAIN), MetadataCatalog.get)


def check_test_classes(cfg) -> None:
    """Raise DatasetError if the model predicts more classes than a DATASETS.TEST dataset has
    (``--eval-only``): detectron2's COCO evaluator would stop at the first prediction of another
    class with ``AssertionError: A prediction has class=...``."""
    key, value = num_classes_key(cfg), num_classes_value(cfg)
    if key is None:
        return
    for name in cfg.DATASETS.TEST:
        if name not in MetadataCatalog.list():
            continue
        classes = getattr(MetadataCatalog.get(name), "thing_classes", None)
        if classes is not None and value > len(classes):
            raise DatasetError(
                f"{key} is {value}, but test dataset {name!r} has {len(classes)} classes "
                f"({', '.join(classes[:10])}): predictions of the other classes cannot be "
                "evaluated. Evaluate weights trained on data with these classes, with the config "
                f"of that run (its {key})")

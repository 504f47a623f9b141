"""focal_rpn.data: the synthetic dataset and the checked registration of user COCO datasets.

Everything runs on tiny images (64 to 128 px) in a temporary folder: seconds on a CPU.
"""
import collections
import filecmp
import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog

from focal_rpn.data import datasets as D
from focal_rpn.data import shapes, synthetic
from focal_rpn.data import (
    CheckedDatasetMapper,
    DatasetError,
    ImageReadError,
    check_num_classes,
    coco_2017_available,
    generate_synthetic_coco,
    load_checked_coco_json,
    make_tiny_coco,
    parse_dataset_arg,
    register_synthetic_dataset,
    require_builtin_datasets,
)

_counter = iter(range(10**6))


@pytest.fixture(autouse=True)
def propagating_logs(monkeypatch):
    """caplog listens on the root logger: undo a setup_logger(name="focal_rpn") of another test."""
    for name in ("focal_rpn", "focal_rpn.data", "focal_rpn.data.datasets"):
        monkeypatch.setattr(logging.getLogger(name), "propagate", True)


def unique_name(prefix="t"):
    """A dataset name not registered yet (DatasetCatalog is process-global)."""
    return f"{prefix}_{os.getpid()}_{next(_counter)}"


def tree_files(root: Path):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


# ----------------------------------------------------------------------------- synthetic data


def test_generation_is_deterministic(tmp_path):
    kwargs = dict(num_train=3, num_val=2, image_size=64, seed=7, progress=False)
    generate_synthetic_coco(tmp_path / "a", **kwargs)
    generate_synthetic_coco(tmp_path / "b", **kwargs)
    files = tree_files(tmp_path / "a")
    assert files == tree_files(tmp_path / "b")
    assert len([f for f in files if f.endswith(".jpg")]) == 5
    match, mismatch, errors = filecmp.cmpfiles(tmp_path / "a", tmp_path / "b", files, shallow=False)
    assert mismatch == [] and errors == []

    generate_synthetic_coco(tmp_path / "c", **dict(kwargs, seed=8))
    a = (tmp_path / "a" / "annotations" / "instances_train.json").read_bytes()
    assert a != (tmp_path / "c" / "annotations" / "instances_train.json").read_bytes()


def test_val_images_do_not_depend_on_num_train(tmp_path):
    generate_synthetic_coco(tmp_path / "a", 2, 2, image_size=64, progress=False)
    generate_synthetic_coco(tmp_path / "b", 5, 2, image_size=64, progress=False)
    for name in ("val/000001.jpg", "val/000002.jpg", "annotations/instances_val.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_generated_dataset_meets_the_spec(tmp_path):
    from pycocotools.coco import COCO

    size = 128
    paths = generate_synthetic_coco(tmp_path, 40, 1, image_size=size, progress=False)
    json_file, image_root = paths["train"]
    coco = COCO(json_file)

    cats = coco.loadCats(coco.getCatIds())
    assert len(cats) >= 5
    assert [c["id"] for c in cats] == list(range(1, len(cats) + 1))
    assert [c["name"] for c in cats] == list(synthetic.synthetic_class_names())

    per_image = collections.Counter(a["image_id"] for a in coco.dataset["annotations"])
    assert set(per_image) == set(coco.getImgIds())  # every image has an object
    assert all(1 <= n <= 8 for n in per_image.values())
    used = collections.Counter(a["category_id"] for a in coco.dataset["annotations"])
    assert set(used) == {c["id"] for c in cats}

    longest = []
    for ann in coco.dataset["annotations"]:
        x, y, w, h = ann["bbox"]
        assert 0 <= x and 0 <= y and x + w <= size and y + h <= size
        assert 0 < ann["area"] <= w * h
        longest.append(max(w, h))
        assert 8 <= max(w, h) <= size // 2
    assert min(longest) < 16 and max(longest) > size // 4  # the range is used

    def overlap(a, b):
        return (min(a[0] + a[2], b[0] + b[2]) > max(a[0], b[0])
                and min(a[1] + a[3], b[1] + b[3]) > max(a[1], b[1]))

    overlapping = 0  # images with at least two overlapping objects
    for image_id in coco.getImgIds():
        boxes = [a["bbox"] for a in coco.imgToAnns[image_id]]
        overlapping += any(overlap(a, b) for i, a in enumerate(boxes) for b in boxes[:i])
    assert overlapping >= 4

    for img in coco.dataset["images"]:
        assert os.path.isfile(os.path.join(image_root, img["file_name"]))
        assert (img["width"], img["height"]) == (size, size)


def test_shapes_stand_upright():
    """Upright shapes: a square fills its box, a triangle is narrow at the top; in rendered
    images the squares that nothing hides fill their boxes (a tilted square never does)."""
    assert shapes.shape_mask("square", 20, 0.0).all()
    triangle = shapes.shape_mask("triangle", 20, 0.0)
    assert triangle[0].sum() < triangle[-1].sum()
    rotated = shapes.shape_mask("square", 20, np.pi / 4)
    assert not rotated.all()  # the angle is honoured: a diamond does not fill its box
    rng = np.random.default_rng(5)
    square = shapes.SHAPE_CLASSES.index("square")
    filled = [o.area == o.bbox[2] * o.bbox[3]
              for _ in range(30) for o in shapes.render_image(rng, 96)[1]
              if o.category_index == square]
    assert sum(filled) >= len(filled) / 2


def test_render_boxes_are_tight_around_visible_pixels():
    """Occluded objects: the box is the visible part, which keeps at least half its pixels."""
    rng = np.random.default_rng(3)
    for _ in range(20):
        image, objects = shapes.render_image(rng, 96)
        assert image.shape == (96, 96, 3) and image.dtype == np.uint8
        for obj in objects:
            assert obj.area <= obj.bbox[2] * obj.bbox[3]
            assert max(obj.bbox[2:]) >= shapes.MIN_OBJECT_SIZE


def test_cache_folder_and_idempotent_registration(tmp_path, monkeypatch):
    monkeypatch.setenv("FOCAL_RPN_DATA", str(tmp_path))
    name = unique_name("synth")
    kwargs = dict(num_train=3, num_val=2, image_size=64, progress=False)
    names = register_synthetic_dataset(name, **kwargs)
    assert names == (f"{name}_train", f"{name}_val")
    assert register_synthetic_dataset(name, **kwargs) == names  # no "already registered"

    (folder,) = [p for p in tmp_path.iterdir()]
    assert folder.name == f"synth-v{synthetic.GENERATOR_VERSION}-64px-train3-val2-seed0-jpg"
    assert (folder / "params.json").is_file()

    meta = MetadataCatalog.get(names[1])
    assert meta.thing_classes == list(synthetic.synthetic_class_names())
    assert meta.evaluator_type == "coco" and meta.json_file.startswith(str(folder))
    dicts = DatasetCatalog.get(names[0])
    assert len(dicts) == 3 and all(d["annotations"] for d in dicts)
    assert {a["category_id"] for d in dicts for a in d["annotations"]} <= set(range(6))

    # other parameters: another folder, and the names now point to it
    register_synthetic_dataset(name, **dict(kwargs, num_train=4))
    assert len(list(tmp_path.iterdir())) == 2
    assert len(DatasetCatalog.get(names[0])) == 4


def test_interrupted_generation_leaves_nothing_reusable(tmp_path, monkeypatch):
    real = synthetic.write_synthetic_split

    def fail_on_val(json_file, image_root, num_images, image_size, seed, split_index, *a, **k):
        if split_index == 1:
            raise KeyboardInterrupt  # e.g. Ctrl-C while the val split is written
        return real(json_file, image_root, num_images, image_size, seed, split_index, *a, **k)

    monkeypatch.setattr(synthetic, "write_synthetic_split", fail_on_val)
    with pytest.raises(KeyboardInterrupt):
        synthetic.ensure_synthetic_coco(tmp_path, 2, 1, image_size=64, progress=False)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(synthetic, "write_synthetic_split", real)

    # a generation killed outright (no cleanup) more than an hour ago
    folder = synthetic.synthetic_dataset_dir(tmp_path, 2, 1, image_size=64)
    stale = tmp_path / f".{folder.name}.tmp-killed"
    (stale / "train").mkdir(parents=True)
    os.utime(stale, (0, 0))
    assert synthetic.ensure_synthetic_coco(tmp_path, 2, 1, 64, progress=False) == folder
    assert [p.name for p in tmp_path.iterdir()] == [folder.name]


def test_bad_generation_parameters():
    with pytest.raises(ValueError, match="image_size"):
        synthetic.ensure_synthetic_coco("/nonexistent", 2, 1, image_size=8)
    with pytest.raises(ValueError, match="train"):
        synthetic.ensure_synthetic_coco("/nonexistent", 0, 1)


# ----------------------------------------------------------------------------- user datasets


@pytest.fixture
def tiny(tmp_path):
    """A tiny COCO dataset: (json_file, image_root, parsed json)."""
    json_file, image_root = make_tiny_coco(tmp_path / "tiny", num_images=3, image_size=64)
    return json_file, image_root, json.loads(Path(json_file).read_text())


def write_json(path, coco):
    Path(path).write_text(json.dumps(coco))
    return str(path)


def test_parse_dataset_arg_registers_and_is_idempotent(tiny):
    json_file, image_root, coco = tiny
    name = unique_name()
    assert parse_dataset_arg(f"{name}={json_file}:{image_root}") == name
    assert parse_dataset_arg(f"{name}={json_file}:{image_root}") == name
    meta = MetadataCatalog.get(name)
    assert meta.json_file == json_file and meta.image_root == image_root
    assert meta.evaluator_type == "coco"
    assert meta.thing_classes == [c["name"] for c in coco["categories"]]
    dicts = DatasetCatalog.get(name)
    assert len(dicts) == 3
    assert sum(len(d["annotations"]) for d in dicts) == len(coco["annotations"])

    other = Path(json_file).with_name("copy.json")
    other.write_text(Path(json_file).read_text())
    with pytest.raises(ValueError, match="already registered"):
        parse_dataset_arg(f"{name}={other}:{image_root}")


def test_parse_dataset_arg_paths_with_colons_and_equals(tmp_path):
    json_file, image_root = make_tiny_coco(tmp_path / "a:b=c", num_images=1, image_size=64)
    name = unique_name()
    assert parse_dataset_arg(f"{name}={json_file}:{image_root}") == name
    assert MetadataCatalog.get(name).image_root == image_root


@pytest.mark.parametrize(
    "arg, match",
    [
        ("no_equals_sign", "no '='"),
        ("=a.json:imgs", "NAME is empty"),
        ("x=annotations.txt:imgs", "no '.json:'"),
        ("x=a.json:", "IMAGE_DIR is empty"),
    ],
)
def test_parse_dataset_arg_malformed(arg, match):
    with pytest.raises(ValueError, match=match):
        parse_dataset_arg(arg)


def test_missing_json_is_named(tmp_path):
    missing = tmp_path / "nope" / "instances.json"
    with pytest.raises(FileNotFoundError, match="nope") as e:
        parse_dataset_arg(f"{unique_name()}={missing}:{tmp_path}")
    assert str(missing) in str(e.value)
    assert isinstance(e.value, ValueError)


def test_missing_image_folder_is_named(tiny, tmp_path):
    json_file = tiny[0]
    with pytest.raises(FileNotFoundError, match="no_images"):
        parse_dataset_arg(f"{unique_name()}={json_file}:{tmp_path / 'no_images'}")


def test_truncated_json(tiny, tmp_path):
    json_file, image_root, _ = tiny
    bad = tmp_path / "truncated.json"
    bad.write_text(Path(json_file).read_text()[:100])
    with pytest.raises(ValueError, match="not valid JSON") as e:
        parse_dataset_arg(f"{unique_name()}={bad}:{image_root}")
    assert str(bad) in str(e.value) and "line 1 column" in str(e.value)


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda c: c.pop("annotations"), "missing key 'annotations'"),
        (lambda c: c.update(categories={}), "'categories' must be a list"),
        (lambda c: c["images"][0].pop("width"), "image id 1 has no 'width'"),
        (lambda c: c["annotations"][0].update(bbox=[1, 2, 3]), r"annotation id 1 has bbox"),
        (lambda c: c["annotations"][0].update(image_id=99), "image_id 99"),
    ],
)
def test_malformed_json_content(tiny, tmp_path, edit, match):
    json_file, image_root, coco = tiny
    edit(coco)
    bad = write_json(tmp_path / "bad.json", coco)
    with pytest.raises(ValueError, match=match) as e:
        parse_dataset_arg(f"{unique_name()}={bad}:{image_root}")
    assert bad in str(e.value)


def test_unknown_category_id(tiny, tmp_path):
    json_file, image_root, coco = tiny
    coco["annotations"][1]["category_id"] = 42
    bad = write_json(tmp_path / "bad.json", coco)
    with pytest.raises(ValueError) as e:
        parse_dataset_arg(f"{unique_name()}={bad}:{image_root}")
    msg = str(e.value)
    ann_id = coco["annotations"][1]["id"]
    assert bad in msg and f"annotation id {ann_id}" in msg and "category_id 42" in msg
    assert "[1, 2, 3, 4, 5, 6]" in msg  # the allowed ids

    # the loader alone (detectron2 would raise a bare KeyError) says the same
    with pytest.raises(DatasetError, match="category_id 42"):
        load_checked_coco_json(bad, image_root, unique_name())


def test_degenerate_boxes_dropped_with_one_warning(tiny, tmp_path, caplog):
    json_file, image_root, coco = tiny
    coco["annotations"][0]["bbox"][2] = 0  # zero width
    coco["annotations"][1]["bbox"] = [500.0, 10.0, 5.0, 5.0]  # outside the 64 px image
    coco["annotations"][2]["bbox"][3] = -3  # negative height
    bad = write_json(tmp_path / "degenerate.json", coco)
    name = unique_name()
    with caplog.at_level(logging.WARNING):
        parse_dataset_arg(f"{name}={bad}:{image_root}")
        dicts = DatasetCatalog.get(name)
        DatasetCatalog.get(name)  # loading again does not warn again
    assert sum(len(d["annotations"]) for d in dicts) == len(coco["annotations"]) - 3
    warnings = [r for r in caplog.records if "degenerate" in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "dropping 3 annotations" in warnings[0].getMessage()
    assert name in warnings[0].getMessage()


def test_missing_image_files_are_listed(tiny):
    json_file, image_root, coco = tiny
    os.remove(os.path.join(image_root, coco["images"][1]["file_name"]))
    with pytest.raises(FileNotFoundError) as e:
        parse_dataset_arg(f"{unique_name()}={json_file}:{image_root}")
    assert "1 of 3 image files are missing" in str(e.value)
    assert os.path.join(image_root, coco["images"][1]["file_name"]) in str(e.value)


def test_corrupt_image_names_its_file(tiny):
    json_file, image_root, coco = tiny
    name = unique_name()
    parse_dataset_arg(f"{name}={json_file}:{image_root}")
    record = DatasetCatalog.get(name)[0]
    cfg = get_cfg()
    cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN = (64,), 64
    mapper = CheckedDatasetMapper(cfg, is_train=True)
    assert mapper(record)["image"].shape[-2:] == (64, 64)

    Path(record["file_name"]).write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    with pytest.raises(ImageReadError) as e:
        mapper(record)
    assert record["file_name"] in str(e.value)


# ----------------------------------------------------------------------------- config checks


def test_check_num_classes(tiny):
    json_file, image_root, _ = tiny
    name = parse_dataset_arg(f"{unique_name()}={json_file}:{image_root}")  # 6 classes
    cfg = get_cfg()
    cfg.MODEL.META_ARCHITECTURE = "RetinaNet"
    cfg.MODEL.RETINANET.NUM_CLASSES = 3
    with pytest.raises(ValueError) as e:
        check_num_classes(cfg, [name])
    msg = str(e.value)
    assert "MODEL.RETINANET.NUM_CLASSES is 3" in msg and name in msg and "6 classes" in msg
    cfg.MODEL.RETINANET.NUM_CLASSES = 6
    check_num_classes(cfg, [name])

    cfg.MODEL.META_ARCHITECTURE = "GeneralizedRCNN"
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 5
    with pytest.raises(ValueError, match="MODEL.ROI_HEADS.NUM_CLASSES is 5"):
        check_num_classes(cfg, [name])
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 80
    check_num_classes(cfg, [name, "coco_2017_train"])  # more classes than the data: allowed


def test_coco_2017_available(tmp_path):
    assert not coco_2017_available(str(tmp_path))
    (tmp_path / "coco" / "annotations").mkdir(parents=True)
    (tmp_path / "coco" / "annotations" / "instances_train2017.json").write_text("{}")
    assert not coco_2017_available(str(tmp_path))
    (tmp_path / "coco" / "train2017").mkdir()
    assert coco_2017_available(str(tmp_path))


def test_require_builtin_datasets_explains_missing_coco(tiny):
    cfg = get_cfg()
    cfg.DATASETS.TRAIN = ("coco_2017_train",)
    cfg.DATASETS.TEST = ()
    meta = MetadataCatalog.get("coco_2017_train")
    if os.path.exists(meta.json_file) and os.path.exists(meta.image_root):
        pytest.skip("COCO 2017 is installed here")
    with pytest.raises(FileNotFoundError) as e:
        require_builtin_datasets(cfg)
    msg = str(e.value)
    assert os.path.abspath(meta.json_file) in msg and os.path.abspath(meta.image_root) in msg
    assert "make demo" in msg and "configs/quick_retinanet_R18.yaml" in msg

    json_file, image_root, _ = tiny
    cfg.DATASETS.TRAIN = (parse_dataset_arg(f"{unique_name()}={json_file}:{image_root}"),)
    require_builtin_datasets(cfg)
    cfg.DATASETS.TEST = ("never_registered",)
    with pytest.raises(ValueError, match="'never_registered'.*not registered"):
        require_builtin_datasets(cfg)


def test_validate_coco_dicts_does_not_modify_its_input():
    from detectron2.structures import BoxMode

    record = {
        "file_name": "x.png", "height": 10, "width": 10, "image_id": 1,
        "annotations": [
            {"bbox": [0, 0, 5, 5], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 0},
            {"bbox": [3, 3, 3, 9], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 0},
        ],
    }  # fmt: skip
    (out,) = D.validate_coco_dicts([record], "unit")
    assert len(out["annotations"]) == 1 and len(record["annotations"]) == 2

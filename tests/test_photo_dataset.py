"""focal_rpn.data.photos and tools/make_photo_dataset.py: the photo-like COCO test material.

A 12 + 4 image dataset is written once per module (about a second); the rest are smaller.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from focal_rpn.data import photos
from focal_rpn.data.datasets import validate_coco_json
from focal_rpn.data.photos import PHOTO_CLASSES, draw_image_size, write_photo_dataset

REPO = Path(__file__).resolve().parents[1]
NUM_CLASSES = 6


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """{"paths": returned paths, "coco": {split: parsed json}} of a 12 + 4 image dataset."""
    out = tmp_path_factory.mktemp("photos") / "ds"
    paths = write_photo_dataset(out, {"train": 12, "val": 4}, num_classes=NUM_CLASSES, seed=3)
    coco = {split: json.loads(Path(paths[split]).read_text()) for split in ("train", "val")}
    return {"paths": paths, "coco": coco, "root": out}


def _annotations(dataset):
    """[(annotation, its image)] over both splits."""
    out = []
    for coco in dataset["coco"].values():
        images = {im["id"]: im for im in coco["images"]}
        out += [(ann, images[ann["image_id"]]) for ann in coco["annotations"]]
    return out


def test_layout_and_return_value(dataset):
    paths, root = dataset["paths"], dataset["root"]
    assert paths == {
        "train": str(root / "train.json"),
        "val": str(root / "val.json"),
        "image_dir": str(root / "images"),
    }
    assert os.path.isabs(paths["train"])
    names = sorted(os.listdir(paths["image_dir"]))
    assert names == [f"train_{i:05d}.jpg" for i in range(12)] + [
        f"val_{i:05d}.jpg" for i in range(4)
    ]
    assert sorted(os.listdir(root)) == ["images", "train.json", "val.json"]
    assert not [p for p in root.parent.iterdir() if ".tmp-" in p.name]  # no temporary left


def test_json_passes_the_project_checker(dataset):
    for split, coco in dataset["coco"].items():
        num_degenerate = validate_coco_json(coco, dataset["paths"][split],
                                            dataset["paths"]["image_dir"])
        assert num_degenerate == 0
        assert [c["name"] for c in coco["categories"]] == list(PHOTO_CLASSES[:NUM_CLASSES])
        assert [c["id"] for c in coco["categories"]] == list(range(1, NUM_CLASSES + 1))
        assert len(coco["annotations"]) >= len(coco["images"])  # at least one object each


def test_boxes_inside_images_and_not_degenerate(dataset):
    anns = _annotations(dataset)
    assert anns
    for ann, image in anns:
        x, y, w, h = ann["bbox"]
        assert all(isinstance(v, float) for v in ann["bbox"])
        assert x >= 0 and y >= 0 and x + w <= image["width"] and y + h <= image["height"], ann
        assert w >= 2 and h >= 2, ann
        assert ann["area"] == pytest.approx(w * h)
        assert ann["iscrowd"] == 0
        assert 1 <= ann["category_id"] <= NUM_CLASSES


def test_objects_per_image_and_classes_used(dataset):
    for coco in dataset["coco"].values():
        counts = {im["id"]: 0 for im in coco["images"]}
        for ann in coco["annotations"]:
            counts[ann["image_id"]] += 1
        assert all(photos.MIN_OBJECTS <= n <= photos.MAX_OBJECTS for n in counts.values())
    used = {ann["category_id"] for ann, _ in _annotations(dataset)}
    assert len(used) >= NUM_CLASSES - 1  # ~70 objects of 6 classes: (nearly) all appear


def test_objects_span_small_and_large_sizes(dataset):
    rel = [max(a["bbox"][2:]) / min(im["width"], im["height"]) for a, im in _annotations(dataset)]
    assert min(rel) < 0.1, sorted(rel)[:5]
    assert max(rel) > 0.35, sorted(rel)[-5:]
    assert max(rel) <= photos.MAX_OBJECT_FRACTION + 0.01


def test_files_are_jpegs_of_the_json_size(dataset):
    sizes = set()
    for coco in dataset["coco"].values():
        for image in coco["images"]:
            with Image.open(os.path.join(dataset["paths"]["image_dir"], image["file_name"])) as im:
                assert im.format == "JPEG"
                assert im.mode == "RGB"
                assert im.size == (image["width"], image["height"])
            sizes.add(im.size)
    assert len(sizes) >= 8  # 16 images: sizes vary


def test_image_sizes_vary_like_photos():
    sizes = [draw_image_size(np.random.default_rng([7, i])) for i in range(200)]
    ratios = set()
    for w, h in sizes:
        long_side, short_side = max(w, h), min(w, h)
        assert photos.LONG_SIDE_RANGE[0] <= long_side <= photos.LONG_SIDE_RANGE[1]
        ratio = long_side / short_side
        allowed = [a / b for a, b in photos.ASPECT_RATIOS]
        assert min(abs(ratio - r) for r in allowed) < 0.02, (w, h)
        ratios.add(min(allowed, key=lambda r: abs(ratio - r)))
    assert len(ratios) == len(photos.ASPECT_RATIOS)
    assert any(w > h for w, h in sizes) and any(h > w for w, h in sizes)  # both orientations
    longs = [max(s) for s in sizes]
    assert min(longs) < 400 and max(longs) > 900


def test_render_photo_shapes_and_determinism():
    sources = photos.load_photo_sources()
    image, objects = photos.render_photo(np.random.default_rng(5), sources, 3)
    again, objects_again = photos.render_photo(np.random.default_rng(5), sources, 3)
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    assert np.array_equal(image, again) and objects == objects_again
    assert all(0 <= k < 3 and len(box) == 4 for k, box in objects)


@pytest.mark.parametrize("seed", range(6))
def test_box_is_the_tight_box_of_the_visible_object(monkeypatch, seed):
    """One grey ellipse on a black background: the box is exactly where alpha > 0.5."""
    monkeypatch.setattr(photos, "MAX_OBJECTS", 1)
    mask = photos._shape_mask("ellipse", 60, 60)
    sources = photos.PhotoSources(
        objects=(photos.ObjectPatch(np.full((60, 60, 3), 100, np.float32), mask),),
        backgrounds=(np.zeros((120, 160, 3), np.uint8),),
    )
    image, objects = photos.render_photo(np.random.default_rng(seed), sources, 1)
    assert len(objects) == 1 and objects[0][0] == 0
    x, y, w, h = objects[0][1]
    grey = image[:, :, 0].astype(np.float32)
    ys, xs = np.nonzero(grey > grey.max() / 2)
    x0, y0, x1, y1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
    expected = [float(x0), float(y0), float(x1 - x0), float(y1 - y0)]
    assert [x, y, w, h] == expected, expected


def test_pasted_objects_have_a_feathered_edge():
    patch = photos.load_photo_sources().objects[PHOTO_CLASSES.index("motorcycle")]
    rgb, alpha = photos._object_layers(np.random.default_rng(0), patch, 200)
    assert rgb.shape[:2] == alpha.shape and max(alpha.shape) == 200
    assert alpha.max() == pytest.approx(1.0, abs=1e-3)
    assert alpha[0].max() < 0.5 and alpha[:, 0].max() < 0.5  # no hard rectangular edge
    soft = ((alpha > 0.05) & (alpha < 0.95)).sum()
    assert soft > 2 * sum(alpha.shape)  # a band of partial transparency all round


def test_same_seed_same_files_other_seed_different(tmp_path):
    args = dict(num_images={"train": 3, "val": 2}, num_classes=4)
    a = write_photo_dataset(tmp_path / "a", seed=1, **args)
    b = write_photo_dataset(tmp_path / "b", seed=1, **args)
    c = write_photo_dataset(tmp_path / "c", seed=2, **args)
    for split in ("train", "val"):
        assert Path(a[split]).read_text() == Path(b[split]).read_text()
        assert Path(a[split]).read_text() != Path(c[split]).read_text()
    for name in os.listdir(a["image_dir"]):
        assert (Path(a["image_dir"]) / name).read_bytes() == (
            Path(b["image_dir"]) / name).read_bytes()
    # train and val are different streams
    assert (Path(a["image_dir"]) / "train_00000.jpg").read_bytes() != (
        Path(a["image_dir"]) / "val_00000.jpg").read_bytes()


def test_non_empty_output_dir_is_refused_and_left_untouched(tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty") as info:
        write_photo_dataset(out, {"train": 1, "val": 1})
    assert str(out) in str(info.value)
    assert os.listdir(out) == ["keep.txt"] and (out / "keep.txt").read_text() == "mine"
    assert sorted(os.listdir(tmp_path)) == ["taken"]


def test_empty_output_dir_is_used(tmp_path):
    out = tmp_path / "empty"
    out.mkdir()
    paths = write_photo_dataset(out, {"train": 1, "val": 1}, num_classes=1)
    assert os.path.isfile(paths["train"]) and os.path.isfile(paths["val"])


def test_interrupted_run_leaves_no_partial_dataset(tmp_path, monkeypatch):
    calls = []

    def failing_encode(image, quality):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return b"x"

    monkeypatch.setattr(photos, "_encode_jpeg", failing_encode)
    with pytest.raises(KeyboardInterrupt):
        write_photo_dataset(tmp_path / "ds", {"train": 4, "val": 1})
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("bad", [0, len(PHOTO_CLASSES) + 1, -2, "3", 2.0, True])
def test_bad_num_classes_is_refused(tmp_path, bad):
    with pytest.raises(ValueError, match="num_classes") as info:
        write_photo_dataset(tmp_path / "ds", {"train": 1, "val": 1}, num_classes=bad)
    assert repr(bad) in str(info.value)
    assert f"1 to {len(PHOTO_CLASSES)}" in str(info.value)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    "num_images", [{"train": 0, "val": 1}, {"train": 2, "val": -1}, {"train": 1}]
)
def test_bad_image_counts_are_refused(tmp_path, num_images):
    with pytest.raises(ValueError, match="images"):
        write_photo_dataset(tmp_path / "ds", num_images)
    assert os.listdir(tmp_path) == []


def test_at_least_ten_plain_word_classes():
    assert len(PHOTO_CLASSES) >= 10
    assert len(set(PHOTO_CLASSES)) == len(PHOTO_CLASSES)
    assert all(name.isalpha() and name.islower() for name in PHOTO_CLASSES)
    assert len(photos.load_photo_sources().objects) == len(PHOTO_CLASSES)


def _run_cli(*args):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, str(REPO / "tools" / "make_photo_dataset.py"), *args],
        capture_output=True, text=True, env=env, timeout=300,
    )


def test_cli_writes_and_prints_the_dataset_arguments(tmp_path):
    out = tmp_path / "cli"
    proc = _run_cli("--output", str(out), "--train", "2", "--val", "1", "--classes", "3")
    assert proc.returncode == 0, proc.stderr
    d = str(out)
    expected = (
        f"--dataset photos_train={d}/train.json:{d}/images "
        f"--dataset photos_val={d}/val.json:{d}/images "
        "--dataset-train photos_train --dataset-test photos_val"
    )
    lines = proc.stdout.splitlines()
    assert expected in lines, proc.stdout
    summary = [line for line in lines if line.startswith("make_photo_dataset: wrote")]
    assert summary and "3 images" in summary[0] and "3 classes" in summary[0], proc.stdout
    coco = json.loads((out / "train.json").read_text())
    assert len(coco["images"]) == 2 and len(coco["categories"]) == 3


def test_cli_error_exit_status_2(tmp_path):
    (tmp_path / "x").write_text("")
    proc = _run_cli("--output", str(tmp_path), "--train", "1", "--val", "1")
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith(
        "make_photo_dataset: error: output folder")]  # (torch may warn before it)
    assert len(errors) == 1 and str(tmp_path) in errors[0], proc.stderr
    assert os.listdir(tmp_path) == ["x"]

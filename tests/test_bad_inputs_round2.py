"""Issue 27: silent wrong results and unclear endings found by trying bad inputs (round 2).

Each test is named by what it guards. Shared helpers come from test_bad_inputs."""
import json
import os

import pytest

from focal_rpn.data import coco_checks
from focal_rpn.data.datasets import DatasetError, register_coco_dataset, validate_coco_dicts
from focal_rpn.engine import prepare_datasets, setup

from test_bad_inputs import RETINANET, args_for, tiny_coco, unique_name, write_json

# ----------------------------------------------------------------------------- 1. vanishing boxes


@pytest.mark.parametrize("bbox", [
    [10, 10, 1e-9, 1e-9],      # the reported case: every side vanishing
    [10, 10, 20, 1e-9],        # one side vanishing
    [-30, 10, 30.000001, 20],  # sticks out of the left edge: inside by 1e-6 px
    [63.999999, 10, 20, 20],   # sticks out of the right edge of a 64 px image
])
def test_vanishing_boxes_are_degenerate_by_the_one_definition(bbox):
    assert coco_checks.is_degenerate_box(bbox, 64, 64)


@pytest.mark.parametrize("bbox", [[10, 10, 0.5, 0.5], [-5, -5, 10, 10], [60, 60, 100, 100]])
def test_small_or_partly_outside_boxes_stay_usable(bbox):
    assert not coco_checks.is_degenerate_box(bbox, 64, 64)


def test_a_dataset_of_vanishing_boxes_is_refused_not_trained_on_nothing(tmp_path):
    json_file, image_root, coco = tiny_coco(tmp_path / "d")
    for ann in coco["annotations"]:
        ann["bbox"][2] = ann["bbox"][3] = 1e-9
    bad = write_json(tmp_path / "tiny_boxes.json", coco)
    name = unique_name()
    args = args_for(RETINANET, tmp_path / "out", "DATASETS.TRAIN", f'("{name}",)')
    args.dataset = [f"{name}={bad}:{image_root}"]
    cfg = setup(args)
    with pytest.raises(DatasetError) as err:
        prepare_datasets(cfg, args)
    n = len(coco["annotations"])
    assert f"{n} have degenerate boxes" in str(err.value) and bad in str(err.value)


def test_registration_counts_what_the_loader_drops(tmp_path, caplog):
    """The counts at registration and the records of the load-time filter agree."""
    json_file, image_root, coco = tiny_coco(tmp_path / "d", num_images=3)
    anns = coco["annotations"]
    anns[0]["bbox"][2] = 1e-9
    anns[1]["bbox"][3] = 1e-4
    bad = write_json(tmp_path / "some_tiny.json", coco)
    name = unique_name()
    register_coco_dataset(name, bad, image_root)
    from detectron2.data import DatasetCatalog, MetadataCatalog

    counts = MetadataCatalog.get(name).annotation_counts
    assert counts["degenerate"] == 2 and counts["usable"] == len(anns) - 2
    kept = sum(len(r["annotations"]) for r in DatasetCatalog.get(name))
    assert kept == counts["usable"]
    # and detectron2's own filter keeps every one of them after a 64 -> 16 px resize
    from detectron2.data import detection_utils as utils
    from detectron2.data import transforms as T

    for record in validate_coco_dicts(DatasetCatalog.get(name)):
        tfm = T.ResizeTransform(64, 64, 16, 16)
        annos = [utils.transform_instance_annotations(dict(a), T.TransformList([tfm]), (16, 16))
                 for a in record["annotations"]]
        instances = utils.annotations_to_instances(annos, (16, 16))
        assert len(utils.filter_empty_instances(instances)) == len(annos)


# ----------------------------------------------------------------------------- 2. duplicate names


@pytest.mark.parametrize("second", ["a", "A", " a "])
def test_one_category_name_under_two_ids_is_refused_naming_both(tmp_path, second):
    json_file, image_root, coco = tiny_coco(tmp_path / "d")
    coco["categories"][0]["name"] = "a"
    coco["categories"][1]["name"] = second
    first_id, second_id = coco["categories"][0]["id"], coco["categories"][1]["id"]
    bad = write_json(tmp_path / "dup_names.json", coco)
    with pytest.raises(DatasetError) as err:
        register_coco_dataset(unique_name(), bad, image_root)
    message = str(err.value)
    assert f"id {first_id} ('a')" in message and f"id {second_id} ({second!r})" in message
    assert bad in message and "same name" in message


def test_a_key_repeated_in_one_json_object_is_refused_naming_the_key(tmp_path):
    json_file, image_root, coco = tiny_coco(tmp_path / "d")
    text = json.dumps(coco)
    first = json.dumps(coco["annotations"][0])
    repeated = first[:-1] + ', "category_id": 99}'
    bad = tmp_path / "repeated_key.json"
    bad.write_text(text.replace(first, repeated, 1))
    with pytest.raises(DatasetError) as err:
        register_coco_dataset(unique_name(), str(bad), image_root)
    message = str(err.value)
    assert "'category_id' 2 times" in message and str(bad) in message
    assert f"id={coco['annotations'][0]['id']}" in message

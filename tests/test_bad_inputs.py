"""Fault injection with bad inputs (issue 17): every one must end in a clear error, or in a
corrected and logged result, never in a silent wrong result or lost work.

Images of every PIL mode, duplicate ids in a COCO json, json sizes that differ from the files,
datasets without a usable box, config values of the other model, unknown registered names,
command-line key typos, training into a finished OUTPUT_DIR, --resume into a wrong folder,
predict.py with weights of another model or class count, and the one-line message that the
tools print instead of a traceback. Runs are tiny (64 px images, a few iterations, ResNet-18
with 32 FPN channels)."""
import errno
import json
import logging
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.checkpoint import DetectionCheckpointer

from focal_rpn.data import image_io
from focal_rpn.data.datasets import CheckedDatasetMapper, DatasetError, register_coco_dataset
from focal_rpn.data.synthetic import make_tiny_coco
from focal_rpn.engine import build_argument_parser, build_config, main, prepare_datasets, setup
from focal_rpn.engine.config_checks import VALUE_CHECKS, plugin_keys
from focal_rpn.engine.output_dir import OutputDirError, check_output_dir, check_resume
from focal_rpn.engine.checkpoint import CheckpointLoadError
from focal_rpn.engine.config_merge import ConfigError
from focal_rpn.engine.threads import StepTimeWatch, auto_threads, configure_threads, parse_threads
from focal_rpn.engine.user_errors import find_user_error
from focal_rpn.engine.weights import WeightsMismatchError, load_matching_weights, weights_mismatch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tiny_models import tiny_cfg  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(REPO, "configs")
TRAIN_NET = os.path.join(REPO, "tools", "train_net.py")
PREDICT = os.path.join(REPO, "tools", "predict.py")
RETINANET = os.path.join(CONFIGS, "quick_retinanet_R18.yaml")
FASTER_RCNN = os.path.join(CONFIGS, "quick_faster_rcnn_R18.yaml")

TINY_OPTS = [
    "MODEL.DEVICE", "cpu",
    "MODEL.FPN.OUT_CHANNELS", "32",
    "MODEL.RETINANET.NUM_CONVS", "1",
    "INPUT.MIN_SIZE_TRAIN", "(64,)",
    "INPUT.MAX_SIZE_TRAIN", "128",
    "INPUT.MIN_SIZE_TEST", "64",
    "INPUT.MAX_SIZE_TEST", "128",
    "SOLVER.IMS_PER_BATCH", "2",
    "SOLVER.MAX_ITER", "2",
    "SOLVER.WARMUP_ITERS", "1",
    "SOLVER.CHECKPOINT_PERIOD", "1000",
    "TEST.EVAL_PERIOD", "0",
    "DATALOADER.NUM_WORKERS", "0",
    "DATASETS.TEST", "()",
    "MODEL.RETINANET.NUM_CLASSES", "6",
]
_counter = [0]


@pytest.fixture
def focal_log(caplog):
    """caplog that also sees focal_rpn's loggers (setup_logger stops their propagation)."""
    logger = logging.getLogger("focal_rpn")
    added = not logger.propagate
    if added:
        logger.addHandler(caplog.handler)
    caplog.set_level(logging.INFO)
    yield caplog
    if added:
        logger.removeHandler(caplog.handler)


def unique_name(prefix="bad_inputs"):
    _counter[0] += 1
    return f"{prefix}_{os.getpid()}_{_counter[0]}"


def tiny_coco(root, num_images=2):
    """(json file, image root, parsed json) of a generated 64 px dataset with 6 classes."""
    json_file, image_root = make_tiny_coco(root, num_images=num_images, image_size=64)
    with open(json_file) as f:
        return json_file, image_root, json.load(f)


def write_json(path, coco):
    with open(path, "w") as f:
        json.dump(coco, f)
    return str(path)


def args_for(config, output_dir, *opts, resume=False, eval_only=False):
    argv = (["--resume"] if resume else []) + (["--eval-only"] if eval_only else [])
    return build_argument_parser().parse_args(
        argv + ["--config-file", config] + TINY_OPTS + list(opts) + ["OUTPUT_DIR", str(output_dir)])


def run_tool(script, *argv, env=None, cwd=None):
    full_env = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, script, *argv], capture_output=True, text=True,
                          timeout=600, env=full_env, cwd=cwd)


# ----------------------------------------------------------------------------- images


def _gradient(mode):
    """A 4x16 image of ``mode`` holding a ramp over the mode's full range, and the 8-bit gray
    values it must be read as."""
    ramp8 = np.linspace(0, 255, 16).round().astype(np.uint8)
    if mode.startswith("I;16"):
        values = np.tile(ramp8.astype(np.uint16) * 257, (4, 1))  # 0..65535
        order = ">u2" if mode == "I;16B" else "<u2"
        image = Image.frombytes(mode, (16, 4), values.astype(order).tobytes())
    elif mode == "I":
        image = Image.fromarray(np.tile(ramp8.astype(np.int32) * 257, (4, 1)), "I")
        image.format = "PNG"  # as a 16-bit PNG opens: 0..65535
    elif mode == "F":
        image = Image.fromarray(np.tile(ramp8.astype(np.float32) / 255.0, (4, 1)), "F")
    elif mode in ("P", "PA"):  # a gray palette (PIL's own L -> P would quantize to 6 levels)
        image = Image.fromarray(np.tile(np.arange(16, dtype=np.uint8), (4, 1)), "P")
        image.putpalette(np.repeat(ramp8, 3).tolist())
        image = image.convert(mode) if mode == "PA" else image
    elif mode == "1":
        image = Image.fromarray(np.tile(ramp8, (4, 1)), "L").convert("1", dither=Image.NONE)
    else:  # through RGB or LA: PIL converts L to neither LAB nor La directly
        via = "LA" if mode == "La" else "RGB"
        image = Image.fromarray(np.tile(ramp8, (4, 1)), "L").convert(via).convert(mode)
    return image, np.tile(ramp8, (4, 1))


@pytest.mark.parametrize("mode", ["1", "L", "P", "LA", "PA", "RGB", "RGBA", "RGBX", "CMYK",
                                  "YCbCr", "HSV", "LAB", "La", "I", "I;16", "I;16B", "I;16L", "F"])
def test_every_pil_mode_reads_as_8bit_rgb_of_the_same_picture(mode):
    image, expected = _gradient(mode)
    assert image.mode == mode
    rgb = np.asarray(image_io.to_rgb8(image, f"ramp.{mode}"))
    assert rgb.shape == (4, 16, 3) and rgb.dtype == np.uint8
    if mode == "1":  # 1 bit: black below the middle, white above
        expected = np.where(expected >= 128, 255, 0)
    tolerance = 12 if mode in ("YCbCr", "LAB", "CMYK", "HSV") else 1  # colour-space rounding
    assert np.abs(rgb.astype(int) - expected[..., None]).max() <= tolerance, rgb[0, :, 0]


def test_high_bit_depth_files_are_scaled_not_clipped(tmp_path):
    """The issue's case: a 16-bit grayscale PNG read as all white by detectron2's reader."""
    values = (np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) * 16).astype(np.uint16)
    png = tmp_path / "g16.png"
    Image.fromarray(values, "I;16").save(png)
    tif = tmp_path / "f32.tif"
    Image.fromarray(values.astype(np.float32) / 65535.0, "F").save(tif)
    for path in (png, tif):
        rgb = image_io.read_image_rgb8(str(path), format="BGR")
        assert rgb.shape == (64, 64, 3)
        assert np.abs(rgb[..., 0].astype(int) - (values.astype(int) * 255 // 65535)).max() <= 1
        assert 100 < rgb.mean() < 155  # a ramp, not a white picture


def test_unsupported_mode_is_refused_naming_file_and_mode():
    with pytest.raises(image_io.ImageModeError) as err:
        image_io.check_mode("I;32S", "/data/x.tif")
    assert "'/data/x.tif'" in str(err.value) and "'I;32S'" in str(err.value)
    assert "supported modes" in str(err.value)


def test_dataset_of_16bit_images_trains_on_scaled_pixels(tmp_path, focal_log):
    caplog = focal_log
    json_file, image_root, coco = tiny_coco(tmp_path / "d")
    first = os.path.join(image_root, coco["images"][0]["file_name"])
    gray = np.asarray(Image.open(first).convert("L")).astype(np.uint16) * 257
    Image.fromarray(gray, "I;16").save(first)  # a 16-bit grayscale PNG, same picture
    name = unique_name()
    register_coco_dataset(name, json_file, image_root)
    record = next(r for r in DatasetCatalog.get(name) if r["image_id"] == coco["images"][0]["id"])
    assert record["original_file_name"] == first and record["file_name"] != first
    assert any("not 8 bits per channel" in r.getMessage() and "I" in r.getMessage()
               for r in caplog.records)
    from detectron2.config import get_cfg

    cfg = get_cfg()
    cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN, cfg.INPUT.RANDOM_FLIP = (64,), 64, "none"
    image = CheckedDatasetMapper(cfg, is_train=True)(record)["image"]  # 3 x 64 x 64, BGR
    assert np.abs(image[0].numpy().astype(int) - (gray // 257)).max() <= 1


# ----------------------------------------------------------------------------- COCO json


def test_duplicate_image_id_names_both_entries(tmp_path):
    json_file, image_root, coco = tiny_coco(tmp_path / "d")
    coco["images"][1]["id"] = coco["images"][0]["id"]
    bad = write_json(tmp_path / "dup_id.json", coco)
    with pytest.raises(DatasetError) as err:
        register_coco_dataset(unique_name(), bad, image_root)
    message = str(err.value)
    assert f"image id {coco['images'][0]['id']} appears twice" in message
    assert "images[0]" in message and "images[1]" in message
    assert coco["images"][0]["file_name"] in message and coco["images"][1]["file_name"] in message


def test_duplicate_file_name_under_two_ids_names_both_entries(tmp_path):
    json_file, image_root, coco = tiny_coco(tmp_path / "d")
    coco["images"][1]["file_name"] = coco["images"][0]["file_name"]
    bad = write_json(tmp_path / "dup_name.json", coco)
    with pytest.raises(DatasetError, match=r"file_name '000001.png' appears twice.*images\[0\] "
                                           r"\(id 1\) and images\[1\] \(id 2\)"):
        register_coco_dataset(unique_name(), bad, image_root)


def test_duplicate_annotation_id_names_both_entries(tmp_path):
    json_file, image_root, coco = tiny_coco(tmp_path / "d")
    coco["annotations"][-1]["id"] = coco["annotations"][0]["id"]
    bad = write_json(tmp_path / "dup_ann.json", coco)
    with pytest.raises(DatasetError, match=rf"annotation id {coco['annotations'][0]['id']} "
                                           r"appears twice: annotations\[0\]"):
        register_coco_dataset(unique_name(), bad, image_root)


@pytest.mark.parametrize("change", ["width", "height", "exif_rotation"])
def test_json_size_that_differs_from_the_file_is_an_error_at_registration(tmp_path, change):
    json_file, image_root, coco = tiny_coco(tmp_path / "d")
    image = coco["images"][1]
    path = os.path.join(image_root, image["file_name"])
    if change == "exif_rotation":  # a 64x48 file turned by EXIF reads as 48x64
        picture = Image.open(path).convert("RGB").crop((0, 0, 64, 48))
        exif = Image.Exif()
        exif[0x0112] = 6
        path = path[:-4] + ".jpg"
        picture.save(path, exif=exif)
        image.update(file_name=os.path.basename(path), width=64, height=48)
    else:
        image[change] += 10
    bad = write_json(tmp_path / "size.json", coco)
    with pytest.raises(DatasetError) as err:
        register_coco_dataset(unique_name(), bad, image_root)
    message = str(err.value)
    assert f"image id {image['id']}" in message and path in message
    assert "width' and 'height' in the json" in message


@pytest.mark.parametrize("spoil", ["degenerate", "vanishing", "crowd"])
def test_dataset_without_a_usable_box_is_refused_before_training(tmp_path, spoil):
    """"vanishing": boxes of 1e-9 px pass a "w, h > 0" check but not the loader (issue 27)."""
    json_file, image_root, coco = tiny_coco(tmp_path / "d")
    for ann in coco["annotations"]:
        if spoil == "degenerate":
            ann["bbox"][2] = 0
        elif spoil == "vanishing":
            ann["bbox"][2] = ann["bbox"][3] = 1e-9
        else:
            ann["iscrowd"] = 1
    bad = write_json(tmp_path / f"{spoil}.json", coco)
    name = unique_name()
    args = args_for(RETINANET, tmp_path / "out", "DATASETS.TRAIN", f'("{name}",)')
    args.dataset = [f"{name}={bad}:{image_root}"]
    cfg = setup(args)
    with pytest.raises(DatasetError) as err:
        prepare_datasets(cfg, args)
    n = len(coco["annotations"])
    assert f"training dataset {name!r}" in str(err.value) and bad in str(err.value)
    counts = f"{n} are crowd regions" if spoil == "crowd" else f"{n} have degenerate boxes"
    assert counts in str(err.value)


# ----------------------------------------------------------------------------- config


def test_every_focal_rpn_config_key_has_a_read_time_check():
    cfg = build_config(build_argument_parser().parse_args(["--config-file", RETINANET]))
    keys = plugin_keys(cfg)
    assert "MODEL.FOCAL_RPN.ACTIVATION" in keys and "MODEL.FOCAL_RETINANET.WINOGRAD" in keys
    assert [k for k in keys if k not in VALUE_CHECKS] == []


@pytest.mark.parametrize("config,key,value", [
    (RETINANET, "MODEL.FOCAL_RPN.ACTIVATION", "relu"),  # the case: the other model's key
    (RETINANET, "MODEL.FOCAL_RPN.ALPHA", "1.5"),
    (RETINANET, "MODEL.FOCAL_RPN.GAMMA", "-1.0"),
    (RETINANET, "MODEL.FOCAL_RPN.LOSS_WEIGHT", "0.0"),
    (RETINANET, "MODEL.FOCAL_RPN.PRIOR_PROB", "1.0"),
    (FASTER_RCNN, "MODEL.FOCAL_RETINANET.ACTIVATION", "tanh"),
    (FASTER_RCNN, "MODEL.RETINANET.FOCAL_LOSS_GAMMA", "-2.0"),
    (FASTER_RCNN, "SOLVER.OPTIMIZER", "Adam"),
    (FASTER_RCNN, "SOLVER.BETAS", "(0.9, 1.5)"),
    (RETINANET, "SOLVER.TIME_BUDGET_MINUTES", "-3.0"),
])
def test_bad_value_of_any_focal_rpn_key_is_refused_whichever_model(config, key, value):
    with pytest.raises(ConfigError) as err:
        build_config(build_argument_parser().parse_args(["--config-file", config, key, value]))
    assert key in str(err.value) and "not" in str(err.value)


@pytest.mark.parametrize("key,value,expected", [
    ("MODEL.META_ARCHITECTURE", "FocalRetinaNett", "FocalRetinaNet"),
    ("MODEL.PROPOSAL_GENERATOR.NAME", "FocalRNP", "FocalRPN"),
    ("MODEL.BACKBONE.NAME", "build_resnet_fpn_backbonee", "build_resnet_fpn_backbone"),
])
def test_unknown_registered_name_lists_the_registered_names(key, value, expected):
    with pytest.raises(ConfigError) as err:
        build_config(build_argument_parser().parse_args(["--config-file", FASTER_RCNN, key, value]))
    message = str(err.value)
    assert f"{key} = {value!r} is not registered" in message
    assert f"did you mean {expected}" in message
    assert "registered names:" in message


def test_command_line_key_typo_gets_did_you_mean_not_the_option_list():
    with pytest.raises(ConfigError) as err:
        build_config(build_argument_parser().parse_args(
            ["--config-file", RETINANET, "SOLVER.BASE_LR", "0.01", "SOLVER.MAX_ITR", "10"]))
    message = str(err.value)
    assert "'SOLVER.MAX_ITR'" in message and "did you mean SOLVER.MAX_ITER" in message
    assert "SOLVER.BASE_LR', '0.01'" not in message  # no repeat of every option
    with pytest.raises(ConfigError, match=r"command-line option SOLVER.MAX_ITER ten: Type mismatch"):
        build_config(build_argument_parser().parse_args(
            ["--config-file", RETINANET, "SOLVER.BASE_LR", "0.01", "SOLVER.MAX_ITER", "ten"]))


def test_missing_local_weights_file_is_refused_when_the_config_is_read(tmp_path):
    missing = str(tmp_path / "no_such_weights.pth")
    with pytest.raises(ConfigError, match=rf"MODEL.WEIGHTS '{missing}' does not exist"):
        build_config(build_argument_parser().parse_args(
            ["--config-file", RETINANET, "MODEL.WEIGHTS", missing]))
    build_config(build_argument_parser().parse_args(  # URLs are detectron2's to resolve
        ["--config-file", RETINANET, "MODEL.WEIGHTS", "detectron2://ImageNetPretrained/x.pkl"]))


# ----------------------------------------------------------------------------- output folders


def _finished_run(folder):
    os.makedirs(folder, exist_ok=True)
    for name, text in (("model_final.pth", "weights"), ("metrics.json", '{"iteration": 19}\n'),
                       ("last_checkpoint", "model_final.pth"), ("config.yaml", "old: 1\n")):
        with open(os.path.join(folder, name), "w") as f:
            f.write(text)


def test_training_into_a_finished_output_dir_is_refused_and_loses_nothing(tmp_path):
    out = tmp_path / "run"
    _finished_run(out)
    before = {p: (out / p).read_text() for p in os.listdir(out)}
    with pytest.raises(OutputDirError) as err:
        setup(args_for(RETINANET, out))
    message = str(err.value)
    assert str(out) in message and "model_final.pth" in message and "metrics.json" in message
    assert "--resume" in message and f"OUTPUT_DIR {out}_2" in message  # the two ways out
    assert {p: (out / p).read_text() for p in os.listdir(out)} == before  # config.yaml too
    setup(args_for(RETINANET, out, resume=True))  # --resume is allowed
    setup(args_for(RETINANET, tmp_path / "new"))  # a new folder is allowed


def test_output_dir_check_serves_other_tools(tmp_path):
    (tmp_path / "predictions.json").write_text("[]")
    with pytest.raises(OutputDirError, match=r"--output .* replace them with --overwrite"):
        check_output_dir(str(tmp_path), resume=False, option="--output", resume_flag="--overwrite",
                         resume_means="replace them", markers=("predictions.json",))
    check_output_dir(str(tmp_path), resume=True, option="--output", markers=("predictions.json",))
    with pytest.raises(OutputDirError, match="is an existing file"):
        check_output_dir(str(tmp_path / "predictions.json"), resume=True, option="--output")
    (tmp_path / "started").mkdir()
    (tmp_path / "started" / "log.txt").write_text("a run that failed while starting")
    check_output_dir(str(tmp_path / "started"), resume=False)  # not a finished run


def test_resume_into_an_empty_or_mistyped_folder_warns_naming_it(tmp_path, focal_log):
    caplog = focal_log
    _finished_run(tmp_path / "run_a")
    for folder in (tmp_path / "run_b", tmp_path / "empty"):
        if folder.name == "empty":
            folder.mkdir()
        caplog.clear()
        assert check_resume(str(folder)) is None
        warning = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
        assert str(folder) in warning and "nothing to resume" in warning
        assert str(tmp_path / "run_a") in warning  # the folder that does hold checkpoints


@pytest.mark.parametrize("tag", ["", "model_0000009.pth"])
def test_resume_with_an_empty_or_stale_last_checkpoint_lists_the_checkpoints(tmp_path, tag):
    (tmp_path / "last_checkpoint").write_text(tag)
    (tmp_path / "model_0000004.pth").write_bytes(b"x")
    (tmp_path / "model_final.pth").write_bytes(b"x")
    with pytest.raises(CheckpointLoadError) as err:
        check_resume(str(tmp_path))
    message = str(err.value)
    assert ("is empty" in message) if not tag else (f"names {tag!r}, which does not exist" in message)
    assert "['model_0000004.pth', 'model_final.pth']" in message


# ----------------------------------------------------------------------------- weights


@pytest.fixture(scope="module")
def tiny_models():
    """A tiny RetinaNet with 3 classes, the same with 5, and a tiny Faster R-CNN."""
    from detectron2.modeling import build_model

    def build(config, *opts):
        cfg = tiny_cfg(config, list(opts))
        torch.manual_seed(0)
        return cfg, build_model(cfg)

    return {"retina3": build("retinanet_R50.yaml"),
            "retina5": build("retinanet_R50.yaml", "MODEL.RETINANET.NUM_CLASSES", 5),
            "faster": build("faster_rcnn_R50_FPN.yaml")}


def test_weights_of_another_model_are_an_error_listing_the_parameters(tiny_models, tmp_path):
    (faster_cfg, faster), (retina_cfg, retina) = tiny_models["faster"], tiny_models["retina3"]
    DetectionCheckpointer(faster, save_dir=str(tmp_path)).save("faster")
    with pytest.raises(WeightsMismatchError) as err:
        load_matching_weights(retina, str(tmp_path / "faster.pth"), retina_cfg)
    message = str(err.value)
    assert "faster.pth" in message and "missing from the file" in message
    assert " head: 12" in message and "roi_heads: 8" in message  # what is missing, what is extra


def test_weights_of_another_class_count_are_an_error_naming_the_key(tiny_models, tmp_path):
    (cfg3, retina3), (_, retina5) = tiny_models["retina3"], tiny_models["retina5"]
    DetectionCheckpointer(retina5, save_dir=str(tmp_path)).save("five")
    problems = weights_mismatch(retina3.state_dict(), retina5.state_dict())
    assert problems["missing"] == problems["unexpected"] == []
    assert any(p.startswith("head.cls_score.weight: file [45") for p in problems["shape"])
    with pytest.raises(WeightsMismatchError, match="MODEL.RETINANET.NUM_CLASSES"):
        load_matching_weights(retina3, str(tmp_path / "five.pth"), cfg3)
    before = retina3.head.cls_score.weight.clone()
    DetectionCheckpointer(retina3, save_dir=str(tmp_path)).save("three")
    load_matching_weights(retina3, str(tmp_path / "three.pth"), cfg3)  # the right file loads
    assert torch.equal(retina3.head.cls_score.weight, before)


def _train_tiny_run(tmp_path, num_classes_opts=()):
    json_file, image_root, coco = tiny_coco(tmp_path / "data", num_images=4)
    name = unique_name()
    args = args_for(RETINANET, tmp_path / "run", "DATASETS.TRAIN", f'("{name}",)',
                    *num_classes_opts)
    args.dataset = [f"{name}={json_file}:{image_root}"]
    main(args)
    return name, json_file, image_root


def test_eval_only_with_weights_of_another_class_count_is_an_error(tmp_path):
    name, json_file, image_root = _train_tiny_run(tmp_path)
    assert json.loads((tmp_path / "run" / "classes.json").read_text())["thing_classes"] == \
        list(MetadataCatalog.get(name).thing_classes)
    args = args_for(RETINANET, tmp_path / "eval", "DATASETS.TRAIN", f'("{name}",)',
                    "MODEL.RETINANET.NUM_CLASSES", "8",
                    "MODEL.WEIGHTS", str(tmp_path / "run" / "model_final.pth"), eval_only=True)
    with pytest.raises(WeightsMismatchError, match="head.cls_score.weight: file"):
        main(args)
    # the right weights, but a test dataset with fewer classes than the model predicts
    few = tiny_coco(tmp_path / "few")
    few[2]["categories"] = few[2]["categories"][:5]
    few[2]["annotations"] = [a for a in few[2]["annotations"] if a["category_id"] <= 5]
    few_name = unique_name()
    register_coco_dataset(few_name, write_json(tmp_path / "few5.json", few[2]), few[1])
    args = args_for(RETINANET, tmp_path / "eval", "DATASETS.TRAIN", f'("{name}",)',
                    "DATASETS.TEST", f'("{few_name}",)',
                    "MODEL.WEIGHTS", str(tmp_path / "run" / "model_final.pth"), eval_only=True)
    with pytest.raises(DatasetError, match=rf"NUM_CLASSES is 6, but test dataset '{few_name}' "
                                           "has 5 classes"):
        main(args)


def test_predict_reads_the_runs_config_and_class_names_and_refuses_wrong_weights(tmp_path):
    _train_tiny_run(tmp_path)
    run = tmp_path / "run"
    classes = ["raccoon", "b", "c", "d", "e", "f"]
    (run / "classes.json").write_text(json.dumps({"dataset": "x", "thing_classes": classes}))
    _, image_root = make_tiny_coco(tmp_path / "pics", num_images=1, image_size=64)
    out = tmp_path / "pred"
    proc = run_tool(PREDICT, "--weights", str(run / "model_final.pth"), "--input", image_root,
                    "--output", str(out), "--score-thresh", "0.0", "TEST.DETECTIONS_PER_IMAGE", "5")
    assert proc.returncode == 0, proc.stderr[-3000:]
    (result,) = json.loads((out / "predictions.json").read_text())
    assert result["class_names"] and set(result["class_names"]) <= set(classes)

    # again into the same --output: refused, the earlier predictions kept
    before = (out / "predictions.json").read_text()
    proc = run_tool(PREDICT, "--weights", str(run / "model_final.pth"), "--input", image_root,
                    "--output", str(out))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "predict: error: --output" in proc.stderr and "--overwrite" in proc.stderr
    assert (out / "predictions.json").read_text() == before

    # the run's weights with the config of another class count: an error, no predictions
    proc = run_tool(PREDICT, "--config-file", RETINANET, "--weights", str(run / "model_final.pth"),
                    "--input", image_root, "--output", str(tmp_path / "p2"), *TINY_OPTS,
                    "MODEL.RETINANET.NUM_CLASSES", "3")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "do not fit the model" in proc.stderr and "MODEL.RETINANET.NUM_CLASSES" in proc.stderr
    assert not (tmp_path / "p2" / "predictions.json").exists()


def test_predict_without_a_config_says_what_to_pass(tmp_path):
    (tmp_path / "w.pth").write_bytes(b"")
    for argv in ([], ["--weights", str(tmp_path / "w.pth")]):
        proc = run_tool(PREDICT, *argv, "--input", str(tmp_path), "--output", str(tmp_path / "o"))
        assert proc.returncode == 1 and "Traceback" not in proc.stderr
        assert "predict: error: no --config-file" in proc.stderr
    (tmp_path / "file").write_text("not a folder")
    proc = run_tool(PREDICT, "--config-file", RETINANET, "--input", str(tmp_path),
                    "--output", str(tmp_path / "file"))
    assert proc.returncode == 1 and "is an existing file" in proc.stderr


# ----------------------------------------------------------------------------- messages


def test_user_error_quoted_by_a_worker_or_child_process_is_found():
    quoted = ("Caught ImageReadError in DataLoader worker process 0.\nOriginal Traceback (most "
              "recent call last):\n  File \"x.py\", line 1, in f\n    raise ImageReadError(m)\n"
              "focal_rpn.data.datasets.ImageReadError: cannot read image file '/d/a.jpg'\n")
    assert find_user_error(RuntimeError(quoted)) == "cannot read image file '/d/a.jpg'"
    try:
        try:
            raise ConfigError("bad key")
        except ConfigError as e:
            raise RuntimeError("wrapped") from e
    except RuntimeError as e:
        assert find_user_error(e) == "bad key"
    assert find_user_error(ZeroDivisionError("a bug")) is None  # bugs keep their traceback
    full = OSError(errno.ENOSPC, "No space left on device", "/runs/a/model_final.pth")
    assert find_user_error(full) == ("cannot write or read '/runs/a/model_final.pth': "
                                     "No space left on device")
    assert find_user_error(OSError(errno.EIO, "I/O error")) is None


def test_user_error_logged_by_a_training_loop_loses_its_traceback_bugs_keep_it(caplog):
    from focal_rpn.engine.user_errors import quietly

    def training_loop(error):
        try:
            raise error
        except Exception:
            logging.getLogger("detectron2.engine.train_loop").exception("Exception during training:")
            raise

    run = quietly(training_loop)  # what train_net hands to the processes it starts
    with caplog.at_level(logging.ERROR):
        with pytest.raises(ConfigError):
            run(ConfigError("bad value"))
        with pytest.raises(ZeroDivisionError):
            run(ZeroDivisionError("a bug"))
    user, bug = [r for r in caplog.records if "Exception during training" in r.getMessage()]
    assert user.exc_info is None and "user error" in user.getMessage()
    assert bug.exc_info is not None  # a bug keeps its traceback


def test_image_read_error_in_training_is_one_message_without_traceback(tmp_path):
    json_file, image_root, coco = tiny_coco(tmp_path / "d", num_images=2)
    spoilt = os.path.join(image_root, coco["images"][1]["file_name"])
    with open(spoilt, "r+b") as f:  # the header stays (registration passes), pixels are cut
        f.truncate(60)
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env.pop("FOCAL_RPN_DEBUG", None)
    argv = ["--config-file", RETINANET, "--dataset", f"mine={json_file}:{image_root}",
            *TINY_OPTS, "DATALOADER.NUM_WORKERS", "1", "DATASETS.TRAIN", '("mine",)',
            "OUTPUT_DIR", str(tmp_path / "out")]
    proc = subprocess.run([sys.executable, TRAIN_NET, *argv], capture_output=True, text=True,
                          timeout=600, env=env)
    assert proc.returncode == 1
    assert f"train_net: error: cannot read image file {spoilt!r}" in proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    # train_net leaves OpenMP's wait policy as it is (StepThreadTuner copes with busy cores)
    assert "OMP_WAIT_POLICY unset" in proc.stdout + proc.stderr
    debug = subprocess.run([sys.executable, TRAIN_NET, *argv[:-1], str(tmp_path / "out2")],
                           capture_output=True, text=True, timeout=600,
                           env=dict(env, FOCAL_RPN_DEBUG="1"))
    assert debug.returncode != 0 and "Traceback" in debug.stderr


# ----------------------------------------------------------------------------- CPU threads


def test_auto_threads_share_the_cpus_among_the_local_processes():
    assert auto_threads(cpus=2) == 2
    assert auto_threads(cpus=16, processes=2) == 8
    assert auto_threads(cpus=2, processes=4) == 1  # never fewer than 1


def test_threads_option_sets_torch_threads():
    before = torch.get_num_threads()
    try:
        assert configure_threads("1", environ={}) == 1 and torch.get_num_threads() == 1
        assert configure_threads("auto", environ={"OMP_NUM_THREADS": "1"}) == 1
        for bad in ("0", "-2", "many"):
            with pytest.raises(ValueError, match="--threads"):
                parse_threads(bad)
        args = build_argument_parser().parse_args(["--threads", "1"])
        assert args.threads == "1"
    finally:
        torch.set_num_threads(before)


def test_step_time_jump_warns_once(focal_log):
    caplog = focal_log
    times = iter(np.cumsum([0.1] * 2 * 40 + [0.1, 0.5] * 40).tolist())  # start, end pairs
    watch = StepTimeWatch(window=10, factor=3.0, warmup=5, clock=lambda: next(times))
    for _ in range(80):
        watch.before_step()
        watch.after_step()
    warnings = [r.getMessage() for r in caplog.records if "slower" in r.getMessage()]
    assert len(warnings) == 1 and "--threads 1" in warnings[0]
    assert watch.warned

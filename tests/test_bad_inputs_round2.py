"""Issue 27: silent wrong results and unclear endings found by trying bad inputs (round 2).

Each test is named by what it guards. Shared helpers come from test_bad_inputs."""
import json
import os

import pytest

from focal_rpn.data import coco_checks
from focal_rpn.data.datasets import DatasetError, register_coco_dataset, validate_coco_dicts
from focal_rpn.engine import setup

from test_bad_inputs import (
    REPO,
    RETINANET,
    TINY_OPTS,
    TRAIN_NET,
    args_for,
    run_tool,
    tiny_coco,
    unique_name,
    write_json,
)


def start_tool(*argv):
    """A tool in its own process (stdout and stderr piped, text), as a user starts it."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "FOCAL_RPN_DEBUG"}
    return subprocess.Popen([sys.executable, *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=REPO,
                            env=dict(env, OMP_NUM_THREADS="1"), start_new_session=True)

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


# a dataset of nothing but such boxes: test_bad_inputs.py, ...without_a_usable_box...[vanishing]


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


# ----------------------------------------------------------------------------- 3. one run a folder


def _hold_claim_in_another_process(folder):
    """A child process that claims ``folder`` and waits; returns it once the claim is held."""
    import subprocess
    import sys

    code = ("import sys, time; from focal_rpn.engine.output_dir import claim_output_dir; "
            "claim_output_dir(sys.argv[1]); print('held', flush=True); time.sleep(120)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(folder)], stdout=subprocess.PIPE,
                            text=True, cwd=REPO)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_run_into_a_folder_in_use_is_refused_by_name_and_a_killed_run_blocks_nothing(
        tmp_path):
    import signal

    from focal_rpn.engine.output_dir import OutputDirBusyError

    out = tmp_path / "run"
    holder = _hold_claim_in_another_process(out)
    try:
        with pytest.raises(OutputDirBusyError) as err:
            setup(args_for(RETINANET, out))
        message = str(err.value)
        assert str(out) in message and f"pid {holder.pid}" in message and "in use" in message
        with pytest.raises(OutputDirBusyError):  # --resume too: the run is alive
            setup(args_for(RETINANET, out, resume=True))
    finally:
        holder.send_signal(signal.SIGKILL)  # a killed run: its lock file stays behind
        holder.wait()
    assert (out / ".focal_rpn.lock").exists()
    setup(args_for(RETINANET, out, resume=True))  # ... but holds no claim


def test_two_train_net_processes_started_at_once_into_one_folder_exactly_one_runs(tmp_path):
    json_file, image_root, _ = tiny_coco(tmp_path / "d", num_images=2)
    out = tmp_path / "run"
    cmd = [TRAIN_NET, "--config-file", RETINANET, "--dataset", f"race={json_file}:{image_root}",
           *TINY_OPTS, "DATASETS.TRAIN", '("race",)', "SOLVER.MAX_ITER", "40",
           "OUTPUT_DIR", str(out)]
    procs = [start_tool(*cmd) for _ in range(2)]
    results = [p.communicate(timeout=600) + (p.returncode,) for p in procs]
    codes = sorted(r[2] for r in results)
    assert codes == [0, 1], [r[1][-2000:] for r in results]
    refused = next(r for r in results if r[2] == 1)
    # refused by the claim (both alive), or, when the other run ended first, by its results
    assert ("is in use by another run" in refused[1] or "already holds a training run"
            in refused[1]) and "Traceback" not in refused[1], refused[1][-2000:]
    with open(out / "metrics.json") as f:
        iterations = [json.loads(line).get("iteration") for line in f]
    assert len(iterations) == len(set(iterations))  # no iteration written twice
    assert len(list(out.glob("events.out.tfevents*"))) == 1


def test_a_second_comparison_into_a_folder_in_use_is_refused(tmp_path):
    from focal_rpn.comparison.cli import main as compare_main

    holder = _hold_claim_in_another_process(tmp_path / "cmp")
    try:
        code = compare_main(["--config", RETINANET, "--output-dir", str(tmp_path / "cmp"),
                             "--seeds", "0", "--iters", "1"])
    finally:
        holder.kill()
        holder.wait()
    assert code == 2


# ----------------------------------------------------------------------------- 4. weights


def test_export_refuses_weights_that_do_not_fit_the_model(tmp_path, capsys):
    import sys

    from detectron2.checkpoint import DetectionCheckpointer

    from tiny_models import TINY_OPTS as MODEL_OPTS
    from tiny_models import tiny_model

    sys.path.insert(0, os.path.join(REPO, "tools"))
    import export_model

    sys.path.pop(0)
    cases = [("faster_rcnn_R50_FL-RPN_sigmoid.yaml", [], "retinanet_R50.yaml", []),
             ("retinanet_R50.yaml", ["MODEL.RETINANET.NUM_CLASSES", "2"],
              "retinanet_R50.yaml", ["MODEL.RETINANET.NUM_CLASSES", "6"])]
    for i, (trained, trained_opts, config, config_opts) in enumerate(cases):
        DetectionCheckpointer(tiny_model(trained, trained_opts), str(tmp_path)).save(f"w{i}")
        argv = ["--config-file", os.path.join(REPO, "configs", config), "--weights",
                str(tmp_path / f"w{i}.pth"), "--format", "torchscript", "--output",
                str(tmp_path / f"export{i}"), "--num-images", "1", "--runs", "1"]
        code = export_model.main(argv + [str(o) for o in MODEL_OPTS + config_opts])
        err = capsys.readouterr().err
        assert code == 2 and "do not fit the model" in err, err
        assert not list((tmp_path / f"export{i}").glob("model.*"))


def test_export_never_replaces_an_earlier_export_unasked(tmp_path, capsys):
    import sys

    from detectron2.checkpoint import DetectionCheckpointer

    from tiny_models import TINY_OPTS as MODEL_OPTS
    from tiny_models import tiny_model

    sys.path.insert(0, os.path.join(REPO, "tools"))
    import export_model

    sys.path.pop(0)
    DetectionCheckpointer(tiny_model("retinanet_R50.yaml", []), str(tmp_path)).save("w")
    out = tmp_path / "export"
    out.mkdir()
    (out / "model.ts").write_text("an earlier export")
    argv = ["--config-file", os.path.join(REPO, "configs", "retinanet_R50.yaml"), "--weights",
            str(tmp_path / "w.pth"), "--format", "torchscript", "--output", str(out),
            "--num-images", "1", "--runs", "1"]
    code = export_model.main(argv + [str(o) for o in MODEL_OPTS])
    err = capsys.readouterr().err
    assert code == 2 and "already holds an earlier export" in err and "--overwrite" in err
    assert (out / "model.ts").read_text() == "an earlier export"


def test_resume_with_a_config_that_changed_the_model_is_refused(tmp_path):
    from focal_rpn.engine import main
    from focal_rpn.engine.weights import WeightsMismatchError

    from test_bad_inputs import _train_tiny_run

    name, json_file, image_root = _train_tiny_run(tmp_path)  # 6 classes, into tmp_path/run
    before = (tmp_path / "run" / "last_checkpoint").read_text()
    args = args_for(RETINANET, tmp_path / "run", "DATASETS.TRAIN", f'("{name}",)',
                    "MODEL.RETINANET.NUM_CLASSES", "8", "SOLVER.MAX_ITER", "4", resume=True)
    args.dataset = [f"{name}={json_file}:{image_root}"]
    with pytest.raises(WeightsMismatchError) as err:
        main(args)
    message = str(err.value)
    assert message.startswith("--resume:") and "head.cls_score.weight: file" in message
    assert "config.yaml" in message
    assert (tmp_path / "run" / "last_checkpoint").read_text() == before


def test_a_key_written_twice_in_a_yaml_config_is_refused_naming_both_lines(tmp_path):
    from focal_rpn.engine.config_merge import ConfigError

    base = tmp_path / "base.yaml"
    base.write_text(f'_BASE_: "{RETINANET}"\nSOLVER:\n  BASE_LR: 0.01\n  MAX_ITER: 5\n'
                    "  BASE_LR: 0.02\n")
    child = tmp_path / "child.yaml"
    child.write_text(f'_BASE_: "{base}"\nSOLVER:\n  MAX_ITER: 7\n')
    for config in (base, child):  # in the file itself, or in a _BASE_ it inherits
        with pytest.raises(ConfigError) as err:
            setup(args_for(str(config), tmp_path / "out"))
        assert str(base) in str(err.value)
        assert "'BASE_LR' appears twice in one mapping (line 3, then line 5)" in str(err.value)


def test_training_from_weights_that_share_no_parameter_is_refused(tmp_path):
    import torch

    from focal_rpn.engine import main
    from focal_rpn.engine.weights import WeightsMismatchError

    json_file, image_root, _ = tiny_coco(tmp_path / "d", num_images=2)
    torch.save({"model": {"some.other.weight": torch.zeros(3)}}, tmp_path / "other.pth")
    name = unique_name()
    args = args_for(RETINANET, tmp_path / "run", "DATASETS.TRAIN", f'("{name}",)',
                    "MODEL.WEIGHTS", str(tmp_path / "other.pth"))
    args.dataset = [f"{name}={json_file}:{image_root}"]
    with pytest.raises(WeightsMismatchError, match="not one of the model's"):
        main(args)


def test_inference_refuses_a_model_zoo_file_that_fits_only_in_part(tmp_path):
    import pickle

    from focal_rpn.engine.weights import WeightsMismatchError, load_matching_weights
    from tiny_models import tiny_model

    model = tiny_model("retinanet_R50.yaml", [])
    state = {k: v.numpy() for k, v in model.state_dict().items() if not k.startswith("head.")}
    with open(tmp_path / "backbone_only.pkl", "wb") as f:
        pickle.dump({"model": state, "__author__": "test", "matching_heuristics": False}, f)
    with pytest.raises(WeightsMismatchError, match=r"missing from the file \(under head"):
        load_matching_weights(model, str(tmp_path / "backbone_only.pkl"))


# ----------------------------------------------------------------------------- 5. signals


@pytest.mark.parametrize("sig,code", [("SIGINT", 130), ("SIGTERM", 143), ("SIGHUP", 129)])
def test_a_signal_in_training_ends_with_one_line_naming_the_checkpoint_and_the_command(
        tmp_path, sig, code):
    import signal
    import time

    json_file, image_root, _ = tiny_coco(tmp_path / "d", num_images=4)
    out = tmp_path / "run"
    i = TINY_OPTS.index("DATALOADER.NUM_WORKERS")
    opts = TINY_OPTS[:i] + TINY_OPTS[i + 2:]  # a data loader worker, which gets Ctrl-C too
    proc = start_tool(TRAIN_NET, "--config-file", RETINANET,
                      "--dataset", f"sig={json_file}:{image_root}", *opts,
                      "DATALOADER.NUM_WORKERS", "1", "DATASETS.TRAIN", '("sig",)',
                      "SOLVER.MAX_ITER", "100000", "OUTPUT_DIR", str(out))
    deadline = time.monotonic() + 300
    metrics = out / "metrics.json"  # its first row: training has run 20 iterations
    while not (metrics.exists() and metrics.stat().st_size) and proc.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    # to the whole process group, as a terminal's Ctrl-C: the data loader worker gets it too
    os.killpg(proc.pid, getattr(signal, sig))
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == code, stderr[-3000:]
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
    (line,) = [l for l in stderr.splitlines() if l.startswith("train_net: interrupted by")]
    name = (out / "last_checkpoint").read_text().strip()
    assert f"checkpoint {out / name}" in line and "Continue with: " in line
    command = line.split("Continue with: ", 1)[1]
    assert "--resume" in command and str(out) in command
    assert not list(out.glob(".*.tmp*"))  # no temporary file left


def test_a_signal_outside_the_training_loop_ends_with_one_line_too(tmp_path):
    """SIGTERM while a tool works outside the training loop (here: a tool that sleeps):
    one line, exit 143."""
    import signal
    import time

    proc = start_tool("-c", "import time, focal_rpn.engine.user_errors as u; "
                      "u.run_tool('train_net', lambda: time.sleep(60), resumable=True)")
    time.sleep(8)  # past the imports
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143, stderr
    assert stderr.strip().splitlines()[-1].startswith("train_net: interrupted by SIGTERM")
    assert "Traceback" not in stderr


# ----------------------------------------------------------------------------- 6. huge images


def test_an_image_over_twice_the_pixel_limit_is_refused_naming_file_size_and_fix(
        tmp_path, monkeypatch):
    from PIL import Image

    json_file, image_root, coco = tiny_coco(tmp_path / "d")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 64 x 64 = 4096 > 2 x 1000
    with pytest.raises(DatasetError) as err:
        register_coco_dataset(unique_name(), json_file, image_root)
    message = str(err.value)
    first = os.path.join(image_root, coco["images"][0]["file_name"])
    assert first in message and "4096 pixels" not in message  # named by file, in megapixels
    assert "decompression-bomb limit of 1,000 pixels" in message
    assert "FOCAL_RPN_MAX_IMAGE_PIXELS" in message and "Downscale" in message


def test_an_image_just_over_the_pixel_limit_is_read_with_a_warning_naming_it(
        tmp_path, monkeypatch, caplog):
    import logging
    import warnings

    from PIL import Image

    json_file, image_root, coco = tiny_coco(tmp_path / "d")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 3000)  # 4096 is over 1x, under 2x
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)  # PIL's bare one: none
        with caplog.at_level(logging.WARNING, logger="focal_rpn.data.image_io"):
            register_coco_dataset(unique_name(), json_file, image_root)
    text = " ".join(r.getMessage() for r in caplog.records)
    assert os.path.join(image_root, coco["images"][0]["file_name"]) in text
    assert "64 x 64" in text and "GB" in text


def test_the_pixel_limit_setting_raises_pils_limit(monkeypatch):
    from PIL import Image

    from focal_rpn.data import image_io

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # restored after
    monkeypatch.setenv("FOCAL_RPN_MAX_IMAGE_PIXELS", "200000000")
    assert image_io.configured_pixel_limit() == 200000000 == Image.MAX_IMAGE_PIXELS
    monkeypatch.setenv("FOCAL_RPN_MAX_IMAGE_PIXELS", "0")
    assert image_io.configured_pixel_limit() is None
    monkeypatch.setenv("FOCAL_RPN_MAX_IMAGE_PIXELS", "lots")
    with pytest.raises(ValueError, match="FOCAL_RPN_MAX_IMAGE_PIXELS='lots'"):
        image_io.configured_pixel_limit()


# ----------------------------------------------------------------------------- 7. flag order


@pytest.mark.parametrize("late", [["--resume"], ["--dataset", "x=a.json:b"], ["--eval-only"]])
def test_a_flag_after_the_config_options_is_named_with_where_it_belongs(tmp_path, late):
    proc = run_tool(TRAIN_NET, "--config-file", RETINANET, "SOLVER.MAX_ITER", "2", *late,
                    "OUTPUT_DIR", str(tmp_path / "o"))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert f"the flag {late[0]} stands among the KEY VALUE config options" in proc.stderr
    assert "before the options" in proc.stderr and "odd number" not in proc.stderr


def test_a_flag_after_the_options_of_compare_is_named():
    from focal_rpn.comparison.runs import ComparisonError, parse_options

    with pytest.raises(ComparisonError, match="the flag --seeds stands among"):
        parse_options(["SOLVER.MAX_ITER", "2", "--seeds", "0,1"], "trailing options")


# ----------------------------------------------------------------------------- 8. paths as text


def test_a_storage_error_prints_its_path_as_text_not_bytes():
    import errno

    from focal_rpn.engine.user_errors import find_user_error

    err = OSError(errno.EROFS, "Read-only file system", b"/tmp/run/events.out.tfevents.1")
    assert find_user_error(err) == ("cannot write or read '/tmp/run/events.out.tfevents.1': "
                                    "Read-only file system")


# ----------------------------------------------------------------------------- 9. predict


def test_predict_on_a_folder_with_a_corrupt_image_predicts_the_others_and_lists_it(tmp_path):
    from focal_rpn.data.synthetic import make_tiny_coco

    from test_bad_inputs import PREDICT, _train_tiny_run

    _train_tiny_run(tmp_path)
    run = tmp_path / "run"
    _, image_root = make_tiny_coco(tmp_path / "pics", num_images=3, image_size=64)
    images = sorted(os.listdir(image_root))
    bad = os.path.join(image_root, images[1])
    with open(bad, "wb") as f:
        f.write(b"not an image")
    common = ["--weights", str(run / "model_final.pth"), "--input", image_root]
    proc = run_tool(PREDICT, *common, "--output", str(tmp_path / "p1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    predicted = [r["file"] for r in json.loads((tmp_path / "p1" / "predictions.json").read_text())]
    assert sorted(os.path.basename(p) for p in predicted) == [images[0], images[2]]
    assert "1 of 3 images could not be read" in proc.stdout + proc.stderr
    assert bad in proc.stdout + proc.stderr
    proc = run_tool(PREDICT, *common, "--output", str(tmp_path / "p2"), "--strict")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "predict: error: 1 of 3 images could not be read" in proc.stderr and bad in proc.stderr
    for name in images:  # every image unreadable: an error
        with open(os.path.join(image_root, name), "wb") as f:
            f.write(b"not an image")
    proc = run_tool(PREDICT, *common, "--output", str(tmp_path / "p3"))
    assert proc.returncode == 1 and "none could be read" in proc.stderr

#!/usr/bin/env python
"""Run a trained detector over images; write pictures with boxes and a JSON of the detections.

    tools/predict.py --config-file configs/quick_retinanet_R18.yaml \\
        --weights output/demo/model_final.pth --input photo.jpg images/ --output output/predict
    tools/predict.py ... --score-thresh 0.3 --dataset-name mine=ann.json:images MODEL.DEVICE cpu

``--input`` takes image files, folders (their images, not recursive) and glob patterns.
Writes, in ``--output``:

* ``<image name>.png``: the image with boxes, class names and scores (detectron2 Visualizer);
* ``predictions.json``: one entry per image::

      {"file": "images/a.jpg", "picture": "a.png", "width": 640, "height": 480,
       "boxes": [[x0, y0, x1, y1], ...],     # XYXY, pixels of the original image
       "scores": [0.93, ...], "classes": [2, ...], "class_names": ["triangle", ...]}

With ``--weights RUN/model_final.pth`` of a training run, ``--config-file`` defaults to
``RUN/config.yaml`` and the class names to ``RUN/classes.json`` (both written by train_net).
Otherwise class names come from the metadata of ``--dataset-name`` (default: the config's first
DATASETS.TRAIN); it may also be ``NAME=JSON:IMAGE_DIR`` to register a COCO dataset.
MODEL.DEVICE falls back to cpu when CUDA is not available. Trailing ``KEY VALUE`` pairs
override the config, as in train_net.py.

Refused with one line ``predict: error: ...`` (``--debug`` or FOCAL_RPN_DEBUG=1: traceback):
weights whose parameters do not fit the model (missing, unexpected or other shapes: listed);
class names whose count differs from the model's; an ``--output`` that is a file, or a folder
holding an earlier ``predictions.json`` (unless ``--overwrite``), or one that another predict
is writing into (an atomic claim: focal_rpn.engine.output_dir). An image that cannot be read
(corrupt, too large to decode, a mode that is not 8-bit colour once scaled:
focal_rpn.data.image_io) is skipped and listed at the end with its error; the tool fails only
if no image could be read, or with ``--strict`` if any could not.
"""
import argparse
import glob
import json
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import cv2  # noqa: E402
import torch  # noqa: E402
from detectron2.config import get_cfg  # noqa: E402
from detectron2.data import MetadataCatalog  # noqa: E402
from detectron2.engine import DefaultPredictor  # noqa: E402
from detectron2.utils.logger import setup_logger  # noqa: E402
from detectron2.utils.visualizer import Visualizer  # noqa: E402

import focal_rpn  # noqa: E402  (registers FocalRetinaNet and FocalRPN)
from focal_rpn.data import datasets as focal_datasets  # noqa: E402
from focal_rpn.data import synthetic  # noqa: E402
from focal_rpn.data.image_io import read_image_rgb8  # noqa: E402
from focal_rpn.engine.config_checks import check_config  # noqa: E402
from focal_rpn.engine.output_dir import check_output_dir, claim_output_dir  # noqa: E402
from focal_rpn.engine.config_merge import merge_config_file, merge_config_opts  # noqa: E402
from focal_rpn.engine.user_errors import UserError, run_tool  # noqa: E402
from focal_rpn.engine.weights import (  # noqa: E402
    RUN_CONFIG_FILE,
    load_matching_weights,
    read_run_classes,
)

logger = logging.getLogger("focal_rpn.predict")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def build_parser():
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--config-file", metavar="FILE",
        help=f"config yaml (default: {RUN_CONFIG_FILE} beside --weights, as train_net writes it)",
    )  # fmt: skip
    parser.add_argument(
        "--weights", metavar="FILE",
        help="checkpoint (default: OUTPUT_DIR/model_final.pth if it exists, else MODEL.WEIGHTS)",
    )  # fmt: skip
    parser.add_argument(
        "--input", nargs="+", required=True, metavar="PATH",
        help="image files, folders of images and/or glob patterns",
    )  # fmt: skip
    parser.add_argument("--output", required=True, metavar="DIR", help="folder for the results")
    parser.add_argument(
        "--overwrite", action="store_true",
        help="write into an --output folder that holds the predictions of an earlier run",
    )  # fmt: skip
    parser.add_argument("--debug", action="store_true", help="tracebacks for input errors")
    parser.add_argument(
        "--strict", action="store_true",
        help="exit with an error if any input image cannot be read (default: predict the "
        "readable ones, list the others at the end, fail only if none can be read)",
    )  # fmt: skip
    parser.add_argument(
        "--score-thresh", type=float, default=0.5,
        help="keep detections scoring at least this (default 0.5)",
    )  # fmt: skip
    parser.add_argument(
        "--dataset-name", metavar="NAME",
        help="dataset whose class names label the boxes (default: first DATASETS.TRAIN); "
        "NAME=JSON:IMAGE_DIR registers a COCO dataset",
    )  # fmt: skip
    parser.add_argument(
        "opts", nargs=argparse.REMAINDER, metavar="KEY VALUE", help="config overrides"
    )
    return parser


class PredictError(UserError, ValueError):
    """A bad argument of predict.py; the message says what to give instead."""


def config_file_of(args):
    """``--config-file``, else the training run's config.yaml beside ``--weights``."""
    if args.config_file:
        return args.config_file
    if args.weights:
        beside = os.path.join(os.path.dirname(os.path.abspath(args.weights)), RUN_CONFIG_FILE)
        if os.path.isfile(beside):
            logger.info(f"config: {beside} (the training run of the weights)")
            return beside
        raise PredictError(
            f"no --config-file, and no {RUN_CONFIG_FILE} beside --weights {args.weights!r} "
            f"(looked for {beside}): pass the config the weights were trained with")
    raise PredictError("no --config-file: pass the config the weights were trained with, or "
                       "--weights RUN/model_final.pth of a train_net run (its config.yaml is read)")


def setup_cfg(args):
    """The frozen config: file, then overrides, then device fallback, weights, thresholds."""
    cfg = get_cfg()
    focal_rpn.add_focal_rpn_config(cfg)
    merge_config_file(cfg, config_file_of(args))  # ConfigError naming file and key
    merge_config_opts(cfg, list(args.opts or []))
    check_config(cfg, weights=False)  # --weights is resolved below
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        logger.info("CUDA is not available: running on cpu")
        cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = resolve_weights(args.weights, cfg)
    # the models drop lower-scoring detections themselves; predict() filters again
    cfg.MODEL.RETINANET.SCORE_THRESH_TEST = args.score_thresh
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = args.score_thresh
    cfg.freeze()
    return cfg


def resolve_weights(weights, cfg):
    """``--weights``, else OUTPUT_DIR/model_final.pth, else MODEL.WEIGHTS; local files checked."""
    if weights is None:
        final = os.path.join(cfg.OUTPUT_DIR, "model_final.pth")
        if os.path.isfile(final):
            weights = final
        elif cfg.MODEL.WEIGHTS:
            weights = cfg.MODEL.WEIGHTS
            logger.warning(
                f"No --weights and no {final}: using MODEL.WEIGHTS {weights!r}, which may not "
                "be a trained detector"
            )
        else:
            raise SystemExit(
                f"error: no weights: pass --weights (a checkpoint of tools/train_net.py), "
                f"or train first so that {final} exists"
            )
    if "://" not in weights and not os.path.isfile(weights):
        raise SystemExit(f"error: weights file {weights!r} does not exist")
    return weights


def list_inputs(paths):
    """Image files named by ``paths`` (files, folders, glob patterns), in a stable order."""
    files = []
    for path in paths:
        if os.path.isdir(path):
            found = sorted(
                os.path.join(path, f) for f in os.listdir(path)
                if f.lower().endswith(IMAGE_EXTENSIONS)
            )  # fmt: skip
            if not found:
                raise SystemExit(f"error: folder {path!r} has no images ({', '.join(IMAGE_EXTENSIONS)})")
        elif os.path.isfile(path):
            found = [path]
        else:
            found = sorted(glob.glob(os.path.expanduser(path)))
            if not found:
                raise SystemExit(f"error: --input {path!r}: no such file, folder or pattern")
        files.extend(found)
    return list(dict.fromkeys(files))


def class_names(cfg, dataset_name, weights=None):
    """Class names for the boxes: ``--dataset-name``'s metadata, else the training run's
    classes.json beside ``weights``, else the config's first dataset, else ``class_<id>``.
    A count that differs from the model's is an error."""
    num = focal_datasets.num_classes_value(cfg)
    if dataset_name is None and weights:
        classes = read_run_classes(os.path.dirname(os.path.abspath(weights)))
        if classes is not None:
            return _same_count(classes, num, f"classes.json beside {weights!r}", cfg)
    return _same_count(_dataset_class_names(cfg, dataset_name), num, "the class names", cfg)


def _same_count(classes, num, source, cfg):
    if num is not None and len(classes) != num:
        key = focal_datasets.num_classes_key(cfg)
        raise PredictError(
            f"{source} give {len(classes)} classes ({', '.join(classes[:8])}"
            f"{', ...' if len(classes) > 8 else ''}) but the model predicts {num} ({key}): pass "
            f"--dataset-name of the training data, or the config of the run (--weights "
            f"RUN/model_final.pth reads RUN/{RUN_CONFIG_FILE} and RUN/classes.json)")
    return classes


def _dataset_class_names(cfg, dataset_name):
    if dataset_name is None:
        names = list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST)
        dataset_name = names[0] if names else None
    elif "=" in dataset_name:
        dataset_name = focal_datasets.parse_dataset_arg(dataset_name)
    if dataset_name in MetadataCatalog.list():
        classes = getattr(MetadataCatalog.get(dataset_name), "thing_classes", None)
        if classes:
            return list(classes)
    if dataset_name and dataset_name.startswith(synthetic.DEFAULT_NAME + "_"):
        return list(synthetic.synthetic_class_names())  # without generating the data
    num = focal_datasets.num_classes_value(cfg) or 1
    logger.warning(
        f"No class names for dataset {dataset_name!r}: boxes are labelled class_0..class_{num - 1}"
    )
    return [f"class_{i}" for i in range(num)]


def picture_names(files):
    """``<stem>.png`` for each file; a repeated stem gets ``_2``, ``_3``... appended."""
    seen, names = {}, []
    for path in files:
        stem = os.path.splitext(os.path.basename(path))[0]
        seen[stem] = seen.get(stem, 0) + 1
        names.append(f"{stem}.png" if seen[stem] == 1 else f"{stem}_{seen[stem]}.png")
    return names


def build_predictor(cfg):
    """detectron2's DefaultPredictor with MODEL.WEIGHTS loaded only if every parameter fits
    (``WeightsMismatchError`` lists those that do not)."""
    random_init = cfg.clone()
    random_init.defrost()
    random_init.MODEL.WEIGHTS = ""  # loaded below, with the check
    predictor = DefaultPredictor(random_init)
    load_matching_weights(predictor.model, cfg.MODEL.WEIGHTS, cfg)
    return predictor


def predict(cfg, files, output_dir, classes, score_thresh, predictor=None, unreadable=None):
    """Run the model on ``files``; write the pictures and return the JSON entries.

    An image that cannot be read is skipped: ``(path, "Type: message")`` is appended to
    ``unreadable`` (a list; None: the first such image raises PredictError)."""
    from detectron2.data import Metadata

    predictor = predictor or build_predictor(cfg)
    metadata = Metadata(name="predict", thing_classes=classes)
    os.makedirs(output_dir, exist_ok=True)
    results = []
    for path, picture in zip(files, picture_names(files)):
        try:
            image = read_image_rgb8(path, format="BGR")  # any PIL mode, 8 bits per channel
        except (OSError, SyntaxError, ValueError) as e:
            if unreadable is None:
                raise PredictError(f"cannot read image {path!r}: {type(e).__name__}: {e}") from None
            unreadable.append((path, f"{type(e).__name__}: {e}"))
            logger.warning(f"{path}: cannot be read, skipped ({type(e).__name__}: {e})")
            continue
        instances = predictor(image)["instances"].to("cpu")
        instances = instances[instances.scores >= score_thresh]
        drawn = Visualizer(image[:, :, ::-1], metadata).draw_instance_predictions(instances)
        cv2.imwrite(os.path.join(output_dir, picture), drawn.get_image()[:, :, ::-1])
        labels = instances.pred_classes.tolist()
        results.append(
            {
                "file": path,
                "picture": picture,
                "width": int(image.shape[1]),
                "height": int(image.shape[0]),
                "boxes": [[round(v, 2) for v in box] for box in instances.pred_boxes.tensor.tolist()],
                "scores": [round(s, 4) for s in instances.scores.tolist()],
                "classes": labels,
                "class_names": [classes[c] if c < len(classes) else f"class_{c}" for c in labels],
            }
        )
        logger.info(f"{path}: {len(instances)} detections -> {picture}")
    return results


def main(argv=None):
    args = build_parser().parse_args(argv)
    return run_tool("predict", lambda: run(args), debug=args.debug or None)


def run(args):
    setup_logger(name="focal_rpn")
    setup_logger(name="detectron2", abbrev_name="d2")
    claim_output_dir(  # one predict a folder, even started at once
        args.output, option="--output", check=lambda: check_output_dir(
            args.output, resume=args.overwrite, option="--output", resume_flag="--overwrite",
            resume_means="replace them", markers=("predictions.json",),
            what="the predictions of an earlier run"))
    cfg = setup_cfg(args)
    files = list_inputs(args.input)
    predictor = build_predictor(cfg)
    classes = class_names(cfg, args.dataset_name, cfg.MODEL.WEIGHTS)
    unreadable = []
    results = predict(cfg, files, args.output, classes, args.score_thresh, predictor, unreadable)
    out = os.path.join(args.output, "predictions.json")
    if results:
        with open(out, "w") as f:  # one image per line
            f.write("[\n" + ",\n".join(json.dumps(r) for r in results) + "\n]\n")
        logger.info(f"{len(results)} images: pictures and {out} written")
    if unreadable:
        report_unreadable(unreadable, len(files), strict=args.strict or not results)
    return results


def report_unreadable(unreadable, num_files, strict):
    """Log the images that could not be read, with their errors; raise PredictError when
    ``strict`` (``--strict``, or no image could be read at all)."""
    listed = "\n".join(f"  {path}: {error}" for path, error in unreadable)
    summary = f"{len(unreadable)} of {num_files} images could not be read"
    if not strict:
        logger.warning(f"{summary} and have no prediction:\n{listed}")
        return
    done = ("none could be read" if len(unreadable) == num_files else
            "the others were predicted and written; --strict makes this an error")
    raise PredictError(f"{summary} ({done}):\n{listed}")


if __name__ == "__main__":
    main()

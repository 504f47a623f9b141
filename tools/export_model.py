#!/usr/bin/env python
"""Export a trained FocalRetinaNet, or Faster R-CNN with FocalRPN, to TorchScript or ONNX,
check it against eager PyTorch and measure the latency of both.

    tools/export_model.py --config-file configs/quick_retinanet_R18.yaml \
        --weights output/demo/model_final.pth --format onnx --output output/export
    tools/export_model.py --config-file configs/lazy/quick_retinanet_R18.py \
        --weights W --format torchscript --output DIR [--sample-image a.jpg ...] [KEY VALUE ...]

The config is a yacs yaml (trailing KEY VALUE pairs override it) or a LazyConfig .py (trailing
key=value overrides). The model is exported on CPU through detectron2's TracingAdapter, for the
input size of the sample images after the config's test resize (all of them must give one size:
a traced export takes no other). Without --sample-image, images of the synthetic shapes dataset
are drawn at the config's test size. Prints the check (boxes within 1e-3 px, scores within 1e-4
of eager) and images per second of eager, the exported model and, for ONNX, onnxruntime.
Exit status 1 if the check fails, 2 for an unsupported combination.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config-file", required=True, help="yaml or LazyConfig .py")
    parser.add_argument("--weights", required=True, help="checkpoint (.pth) of the model")
    parser.add_argument("--format", required=True, help="torchscript or onnx")
    parser.add_argument("--output", required=True, help="folder for model.ts / model.onnx")
    parser.add_argument("--sample-image", nargs="*", default=[], help="images to check on")
    parser.add_argument("--num-images", type=int, default=4,
                        help="synthetic sample images when no --sample-image (default 4)")
    parser.add_argument("--runs", type=int, default=5, help="latency rounds (median, default 5)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads of PyTorch and onnxruntime (default: PyTorch's)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the model.ts / model.onnx of an earlier export in --output")
    parser.add_argument("--latency-all", action="store_true",
                        help="also export (and check) the other format, to time all three")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides")
    return parser


def load_model(config_file, opts):
    """(model on CPU, test resize (min_size, max_size), input format) of a yaml or lazy config."""
    if config_file.endswith(".py"):
        from detectron2.config import LazyConfig, instantiate

        cfg = LazyConfig.apply_overrides(LazyConfig.load(config_file), list(opts))
        model = instantiate(cfg.model)
        resize = cfg.dataloader.test.mapper.augmentations[0]
        min_size, max_size = resize.short_edge_length, resize.max_size
        input_format = cfg.model.get("input_format", "BGR")
    else:
        from detectron2.config import get_cfg
        from detectron2.modeling import build_model

        import focal_rpn

        cfg = get_cfg()
        focal_rpn.add_focal_rpn_config(cfg)
        cfg.merge_from_file(config_file)
        cfg.merge_from_list(list(opts))
        cfg.MODEL.DEVICE = "cpu"
        model = build_model(cfg)
        min_size, max_size = cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST
        input_format = cfg.INPUT.FORMAT
    return model.to("cpu").eval(), (min_size, max_size), input_format


def sample_images(paths, num_images, resize, input_format):
    """(3, H, W) float tensors in the model's input format after the test resize."""
    from detectron2.data import detection_utils
    from detectron2.data import transforms as T

    min_size, max_size = resize
    if paths:
        images = [detection_utils.read_image(p, format=input_format) for p in paths]
    else:
        from focal_rpn.data.shapes import render_image

        images = []
        for index in range(num_images):
            bgr = render_image(np.random.default_rng([0, index]), min_size)[0]
            images.append(bgr[:, :, ::-1] if input_format == "RGB" else bgr)
    resize_aug = T.ResizeShortestEdge(min_size, max_size)
    out = []
    for image in images:
        resized = resize_aug.get_transform(image).apply_image(image)
        out.append(torch.as_tensor(np.ascontiguousarray(resized.transpose(2, 0, 1))).float())
    return out


def check_no_earlier_export(args):
    """--output must not hold model.ts / model.onnx of an earlier export (unless --overwrite)."""
    from focal_rpn.engine.output_dir import check_output_dir

    check_output_dir(args.output, resume=args.overwrite, option="--output",
                     resume_flag="--overwrite", resume_means="replace it",
                     markers=("model.ts", "model.onnx"), what="an earlier export")


def main(argv=None):
    args = build_parser().parse_args(argv)
    import focal_rpn  # noqa: F401  (registers the models)
    from focal_rpn.engine.checkpoint import CheckpointLoadError
    from focal_rpn.engine.output_dir import OutputDirError, claim_output_dir
    from focal_rpn.engine.weights import WeightsMismatchError, load_matching_weights
    from focal_rpn.export import (
        BOX_ATOL,
        FORMATS,
        RUNTIME_NAMES,
        SCORE_ATOL,
        ExportCheckError,
        UnsupportedExportError,
        check_exportable,
        check_exported,
        eager_runner,
        export,
        measure_latency,
        output_names,
        tracing_adapter,
    )

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        if not os.path.isfile(args.weights):
            raise UnsupportedExportError(f"--weights {args.weights!r} is not a file")
        check_no_earlier_export(args)
        model, resize, input_format = load_model(args.config_file, args.opts)
        check_exportable(model, args.format)
        # every parameter, same shapes: the check of predict and --eval-only
        load_matching_weights(model, args.weights)
        images = sample_images(args.sample_image, args.num_images, resize, input_format)
        sizes = sorted({tuple(i.shape[-2:]) for i in images})
        if len(sizes) > 1:
            raise UnsupportedExportError(
                f"--format {args.format} traces one input size, but the sample images have "
                f"{len(sizes)} sizes after the test resize ({sizes}): a dynamic input size is "
                "not supported; pass images of one size"
            )
        adapter = tracing_adapter(model, images[0])
        with torch.no_grad():
            adapter(images[0])
        names = output_names(adapter)
        eager = eager_runner(model, images[0])
        # the folder is made only now, once every check passed; an earlier export is never
        # replaced unasked, nor one folder written by two exports at once
        claim_output_dir(args.output, option="--output",
                         check=lambda: check_no_earlier_export(args))
        formats = list(FORMATS) if args.latency_all else [args.format]
        exported, reports = {}, {}
        for fmt in formats:
            path, runner = export(model, fmt, images[0], args.output)
            reports[fmt] = (path, check_exported(eager, runner, images, names))
            exported[RUNTIME_NAMES[fmt]] = runner
    except (UnsupportedExportError, WeightsMismatchError, CheckpointLoadError, OutputDirError) as e:
        print(f"export_model: error: {e}", file=sys.stderr)
        return 2
    except ExportCheckError as e:
        print(f"export_model: check FAILED: {e}", file=sys.stderr)
        return 1
    h, w = images[0].shape[-2:]
    for fmt, (path, report) in reports.items():
        print(f"exported {type(model).__name__} to {path} ({fmt}, input 3x{h}x{w})")
        print(
            f"check passed on {report['images']} images ({report['detections']} detections): "
            f"max box difference {report['max_box_diff']:.2e} px (allowed {BOX_ATOL:g}), "
            f"max score difference {report['max_score_diff']:.2e} (allowed {SCORE_ATOL:g})"
        )
        if report["detections"] == 0:
            print("warning: no detections above the score threshold on the sample images, so "
                  "no boxes or scores were compared: check on images the model detects in")
    rates = measure_latency(dict(eager=eager, **exported), images, runs=args.runs)
    print(f"latency on CPU ({torch.get_num_threads()} threads, median of {args.runs} rounds "
          f"over {len(images)} images of 3x{h}x{w}):")
    for name, rate in rates.items():
        print(f"  {name:12s} {rate:8.2f} images/s  ({rate / rates['eager']:.2f}x eager)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

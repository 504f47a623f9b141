#!/usr/bin/env python
"""Write a photo-like COCO detection dataset (test material, no download): JPEG images of
varied sizes whose backgrounds and objects are cut from the real photographs shipped in
skimage.data and matplotlib's sample data (focal_rpn/data/photos.py). Outputs in --output:
images/train_00000.jpg ..., train.json, val.json.

    tools/make_photo_dataset.py --output datasets/photos                 # 300 + 100, 5 classes
    tools/make_photo_dataset.py --output datasets/photos11 --classes 11 --train 1000 --val 200

It ends by printing the arguments that train on it, e.g.
    tools/train_net.py --dataset photos_train=DIR/train.json:DIR/images \\
        --dataset photos_val=DIR/val.json:DIR/images --dataset-train photos_train \\
        --dataset-test photos_val MODEL.ROI_HEADS.NUM_CLASSES 5

300 + 100 images take about 5 seconds on one core. --output must be new or empty.
"""
import argparse
import os
import shlex
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from focal_rpn.data.photos import (  # noqa: E402
    PHOTO_CLASSES,
    dataset_summary,
    write_photo_dataset,
)

PROG = "make_photo_dataset"


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--output", required=True, metavar="DIR",
                   help="dataset folder to create (must not exist, or be empty)")
    p.add_argument("--train", type=int, default=300, metavar="N", help="train images (300)")
    p.add_argument("--val", type=int, default=100, metavar="N", help="val images (100)")
    p.add_argument("--classes", type=int, default=5, metavar="N",
                   help=f"number of classes, 1 to {len(PHOTO_CLASSES)}: the first N of "
                        f"{', '.join(PHOTO_CLASSES)} (default 5)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    return p.parse_args(argv)


def dataset_arguments(paths) -> str:
    """The train_net/compare arguments that register and use the written dataset."""
    train = f"photos_train={paths['train']}:{paths['image_dir']}"
    val = f"photos_val={paths['val']}:{paths['image_dir']}"
    return (f"--dataset {shlex.quote(train)} --dataset {shlex.quote(val)} "
            "--dataset-train photos_train --dataset-test photos_val")


def main(argv=None):
    args = parse_args(argv)
    try:
        paths = write_photo_dataset(
            args.output, {"train": args.train, "val": args.val}, args.classes, args.seed
        )
    except (ValueError, OSError) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    s = dataset_summary(paths)
    (w0, h0), (w1, h1) = s["min_size"], s["max_size"]
    names = ", ".join(PHOTO_CLASSES[: args.classes])
    print(f"{PROG}: wrote {s['images']} images ({args.train} train, {args.val} val), "
          f"{s['boxes']} boxes, {s['classes']} classes ({names}), "
          f"sizes {w0}x{h0} to {w1}x{h1} px, into {os.path.dirname(paths['train'])}")
    print(dataset_arguments(paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())

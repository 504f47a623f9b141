"""Datasets of focal_rpn: the embedded synthetic default and checked user COCO datasets."""

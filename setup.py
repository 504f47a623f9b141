"""focal_rpn: RetinaNet and FL-RPN (focal-loss region proposal network) for detectron2.

detectron2 (>= 0.6) is a prerequisite that pip cannot resolve (it is not on PyPI under its own
name): install official detectron2 per its documentation, or run `make install`, which runs
tools/install_detectron2.py.
"""
import re
from pathlib import Path

from setuptools import find_packages, setup

VERSION = re.search(
    r'__version__ = "([^"]+)"', (Path(__file__).parent / "focal_rpn" / "__init__.py").read_text()
).group(1)

setup(
    name="focal_rpn",
    version=VERSION,
    description="RetinaNet and FL-RPN (focal loss for region proposal networks) for detectron2",
    long_description=__doc__,
    packages=find_packages(include=["focal_rpn", "focal_rpn.*"]),
    python_requires=">=3.8",
    install_requires=["torch>=1.10", "torchvision", "fvcore", "pycocotools", "numpy", "matplotlib"],
    extras_require={
        "fast-eval": ["faster-coco-eval>=1.6"],
        "export": ["onnx", "onnxruntime"],
        "test": ["pytest>=7", "onnx", "onnxruntime"],
    },
)

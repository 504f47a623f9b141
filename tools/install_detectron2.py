#!/usr/bin/env python
"""Install detectron2 v0.6 (Python only) into the current interpreter, unless one is there.

detectron2 is not on PyPI under its own name. On a machine that can reach GitHub, install the
official detectron2 (with its C++/CUDA ops) per its documentation; this script then keeps it.
Otherwise it takes PyPI's ``pb1-detectron2==0.6`` sdist (the official v0.6 Python tree) and
installs it as ``detectron2`` with two repairs, see ../shared/DETECTRON2_INSTALL_NOTES.md:

1. The sdist lacks the C++ sources, so no ``_C`` extension is built. A pure-Python
   ``detectron2/_C.py`` stand-in is written instead: it answers detectron2's environment report
   (``collect_env_info``) and raises a clear error, naming the op, when a C++ op is used
   (rotated boxes, deformable convolution, the "fast" COCO evaluation).
2. The model-zoo yaml files are installed as package data.
3. ``detectron2/export/__init__.py`` imports the caffe2 exporter unconditionally, and caffe2
   is gone from torch 2.x: that import is made optional (as newer detectron2 does), so
   ``from detectron2.export import TracingAdapter`` works.

Nothing of detectron2 is stored in this repository: it is downloaded and checked by sha256, and
the sdist is kept in ``$FOCAL_RPN_CACHE`` (default ``~/.cache/focal_rpn``), where the tests read
detectron2's ``tools/lazyconfig_train_net.py`` from it.

Usage: python tools/install_detectron2.py [--force]
"""
import argparse
import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import textwrap
import urllib.request

SDIST_NAME = "pb1-detectron2"
SDIST_VERSION = "0.6"
SDIST_SHA256 = "5d2e9e51e523ec72f6a31cca04b0a515492e9514b773a3d134cedc0677170b29"
SIMPLE_INDEX = "https://pypi.org/simple/{}/"
MIN_VERSION = (0, 6)

# Runtime dependencies of detectron2 v0.6 (its setup.py), minus the ones only the C++ build,
# caffe2 export or the LazyConfig formatter use; with the pins the notes found necessary.
DETECTRON2_REQUIREMENTS = [
    "Pillow>=7.1,<10",  # v0.6 uses Image.LINEAR, removed in Pillow 10
    "setuptools<81",  # model_zoo imports pkg_resources
    "matplotlib",
    "pycocotools>=2.0.2",
    "termcolor>=1.1",
    "yacs>=0.1.8",
    "tabulate",
    "cloudpickle",
    "tqdm>4.29.0",
    "tensorboard",
    "fvcore>=0.1.5,<0.1.6",
    "iopath>=0.1.7,<0.1.10",
    "omegaconf>=2.1",
    "hydra-core>=1.1",
]

# The stand-in for detectron2's compiled extension. Ops are looked up lazily, so importing
# detectron2 works, and using one raises an error that says what is missing and why.
C_STANDIN = '''\
"""Stand-in for detectron2's C++ extension, written by focal_rpn's tools/install_detectron2.py.

This detectron2 was installed without its C++/CUDA ops. Everything that torchvision provides
(nms, roi_align, hence RetinaNet and Faster R-CNN) works; the ops below raise on use.
"""

_OP_FEATURES = {
    "box_iou_rotated": "rotated boxes",
    "nms_rotated": "rotated boxes",
    "roi_align_rotated_forward": "rotated boxes (ROIAlignRotated)",
    "roi_align_rotated_backward": "rotated boxes (ROIAlignRotated)",
    "deform_conv_forward": "deformable convolution",
    "deform_conv_backward_input": "deformable convolution",
    "deform_conv_backward_filter": "deformable convolution",
    "modulated_deform_conv_forward": "modulated deformable convolution",
    "modulated_deform_conv_backward": "modulated deformable convolution",
    "InstanceAnnotation": "the fast COCO evaluation (use COCOEvaluator(..., use_fast_impl=False))",
    "COCOevalEvaluateImages": "the fast COCO evaluation (use COCOEvaluator(..., use_fast_impl=False))",
    "COCOevalAccumulate": "the fast COCO evaluation (use COCOEvaluator(..., use_fast_impl=False))",
}


class MissingCppOpError(RuntimeError):
    """Raised when code calls a detectron2 C++ op that this installation does not have."""


def get_compiler_version():
    return "not built (Python-only detectron2, C++ ops unavailable)"


def get_cuda_version():
    return "not built"


def has_cuda():
    return False


def _missing_op(name):
    feature = _OP_FEATURES.get(name, "this feature")

    def op(*args, **kwargs):
        raise MissingCppOpError(
            f"detectron2 C++ op '{name}' is unavailable: this detectron2 was installed without "
            f"its C++ extension, so {feature} cannot run. Install official detectron2 from "
            "https://github.com/facebookresearch/detectron2 to use it."
        )

    op.__name__ = name
    return op


def __getattr__(name):
    if name.startswith("_"):
        raise AttributeError(name)
    return _missing_op(name)
'''


def installed_detectron2_version():
    """The version of an importable detectron2 as a tuple, or None if there is none."""
    if importlib.util.find_spec("detectron2") is None:
        return None
    out = subprocess.run(
        [sys.executable, "-c", "import detectron2; print(detectron2.__version__)"],
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        print(f"[install_detectron2] detectron2 is present but fails to import:\n{out.stderr}")
        return None
    parts = out.stdout.strip().split(".")
    return tuple(int("".join(c for c in p if c.isdigit()) or 0) for p in parts[:2])


def find_sdist_url():
    request = urllib.request.Request(
        SIMPLE_INDEX.format(SDIST_NAME), headers={"Accept": "application/vnd.pypi.simple.v1+json"}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        files = json.load(response)["files"]
    wanted = f"{SDIST_NAME}-{SDIST_VERSION}.tar.gz"
    for entry in files:
        if entry["filename"] == wanted:
            return entry["url"]
    raise RuntimeError(f"{wanted} is not listed on {SIMPLE_INDEX.format(SDIST_NAME)}")


def download_sdist(dest_dir):
    url = find_sdist_url()
    path = os.path.join(dest_dir, os.path.basename(url))
    print(f"[install_detectron2] downloading {url}")
    urllib.request.urlretrieve(url, path)
    digest = hashlib.sha256(open(path, "rb").read()).hexdigest()
    if digest != SDIST_SHA256:
        raise RuntimeError(f"sha256 of {path} is {digest}, expected {SDIST_SHA256}")
    return path


def sdist_cache_dir():
    """``$FOCAL_RPN_CACHE`` if set, else ``~/.cache/focal_rpn``."""
    return os.path.expanduser(os.environ.get("FOCAL_RPN_CACHE") or "~/.cache/focal_rpn")


def cached_sdist():
    """The path of the sha256-checked sdist in :func:`sdist_cache_dir`, downloaded if missing.

    Kept after the installation, so that tests can read detectron2's own
    ``tools/lazyconfig_train_net.py`` from it without downloading again.
    """
    cache = sdist_cache_dir()
    path = os.path.join(cache, f"{SDIST_NAME}-{SDIST_VERSION}.tar.gz")
    if os.path.exists(path):
        if hashlib.sha256(open(path, "rb").read()).hexdigest() == SDIST_SHA256:
            return path
        print(f"[install_detectron2] {path} has a wrong sha256: downloading it again")
    os.makedirs(cache, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        os.replace(download_sdist(tmp), path)  # complete and checked, or not there
    return path


def write_setup_py(source_dir):
    """A minimal setup.py that installs the Python tree and the model-zoo configs, no C++."""
    setup_py = f"""\
        # Written by focal_rpn's tools/install_detectron2.py (Python-only detectron2 {SDIST_VERSION}).
        import glob, os
        from setuptools import find_packages, setup
        os.chdir(os.path.dirname(os.path.abspath(__file__)))
        configs = [os.path.relpath(p, "detectron2/model_zoo") for p in
                   glob.glob("detectron2/model_zoo/configs/**/*.yaml", recursive=True)
                   + glob.glob("detectron2/model_zoo/configs/**/*.py", recursive=True)]
        setup(
            name="detectron2",
            version="{SDIST_VERSION}",
            packages=find_packages(include=["detectron2", "detectron2.*"]),
            package_data={{"detectron2.model_zoo": configs}},
            install_requires={DETECTRON2_REQUIREMENTS!r},
        )
        """
    with open(os.path.join(source_dir, "setup.py"), "w") as f:
        f.write(textwrap.dedent(setup_py))
    for name in ("setup.cfg", "pyproject.toml"):
        if os.path.exists(os.path.join(source_dir, name)):
            os.remove(os.path.join(source_dir, name))


def make_caffe2_export_optional(source_dir):
    path = os.path.join(source_dir, "detectron2", "export", "__init__.py")
    text = open(path).read()
    unconditional = "from .api import *\n"
    if unconditional not in text:
        raise RuntimeError(f"{path} does not have the expected line {unconditional!r}")
    guarded = (
        "try:  # caffe2 export needs torch < 2 (made optional by focal_rpn's installer)\n"
        "    from .api import *\n"
        "except ImportError:\n"
        "    pass\n"
    )
    with open(path, "w") as f:
        f.write(text.replace(unconditional, guarded))


def install(force=False):
    version = installed_detectron2_version()
    if version is not None and version >= MIN_VERSION and not force:
        print(f"[install_detectron2] detectron2 {'.'.join(map(str, version))} is importable: kept")
        return
    with tempfile.TemporaryDirectory() as tmp:
        sdist = cached_sdist()
        with tarfile.open(sdist) as tar:
            tar.extractall(tmp, filter="data")
        source_dir = os.path.join(tmp, f"{SDIST_NAME}-{SDIST_VERSION}")
        configs = os.path.join(source_dir, "detectron2", "model_zoo", "configs")
        if not os.path.isdir(configs):
            raise RuntimeError(f"the sdist has no model-zoo configs at {configs}")
        write_setup_py(source_dir)
        make_caffe2_export_optional(source_dir)
        with open(os.path.join(source_dir, "detectron2", "_C.py"), "w") as f:
            f.write(C_STANDIN)
        print("[install_detectron2] installing detectron2 (Python only, C++ ops stand-in)")
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--no-build-isolation", source_dir],
            check=True,
        )
    version = installed_detectron2_version()
    if version is None:
        raise RuntimeError("detectron2 was installed but does not import; see the output above")
    print(f"[install_detectron2] detectron2 {'.'.join(map(str, version))} installed")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--force", action="store_true", help="reinstall even if one is there")
    install(force=parser.parse_args().force)


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""Create a virtual environment with detectron2 main (Python only) for the second test leg.

detectron2 main is what GPU users get from detectron2's git repository; it still says
``__version__ = "0.6"`` but differs from the v0.6 release in the places the plugin touches.
These machines cannot reach GitHub, so it is built from a snapshot tarball (see
../shared/DETECTRON2_MAIN.md): the tarball's ``setup.py`` gets ``ext_modules=[]`` (no C++ build;
main imports without ``_C`` and raises only when a C++ op is used), and it is installed without
dependencies into a venv that already has the project's pins and detectron2's runtime
requirements (the same list as tools/install_detectron2.py, plus main's ``packaging``).

Nothing of detectron2 is stored in this repository; the tarball is read where it lies.

Usage: python tools/install_detectron2_main.py [--venv .venv-d2main] [--tarball PATH]
Exit status 3 (and one line) when the tarball is absent, so callers can skip the main leg.
"""
import argparse
import os
import subprocess
import sys
import tarfile
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from install_detectron2 import DETECTRON2_REQUIREMENTS  # noqa: E402

DEFAULT_TARBALL = os.path.join(ROOT, "..", "shared", "detectron2-main-02b5c4e.tar.gz")
# detectron2 main's setup.py asks for these beyond v0.6's list ("black" only formats saved
# LazyConfigs and is imported lazily, so it is left out).
MAIN_EXTRA_REQUIREMENTS = ["omegaconf>=2.1,<2.4", "packaging"]
NO_CPP = ("ext_modules=get_extensions(),", "ext_modules=[],")
TARBALL_MISSING = 3


def pip(python, *args):
    subprocess.run([python, "-m", "pip", "install", "--disable-pip-version-check", "-q", *args],
                   check=True)


def opencv_package():
    out = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True)
    return "opencv-python" if "libGL.so.1" in out.stdout else "opencv-python-headless"


def build_from_tarball(python, tarball):
    with tempfile.TemporaryDirectory() as tmp:
        with tarfile.open(tarball) as tar:
            tar.extractall(tmp, filter="data")
        setup_py = os.path.join(tmp, "setup.py")
        text = open(setup_py).read()
        if NO_CPP[0] not in text:
            raise RuntimeError(f"{tarball}: setup.py has no line {NO_CPP[0]!r} to turn off the C++ build")
        with open(setup_py, "w") as f:
            f.write(text.replace(*NO_CPP))
        print("[install_detectron2_main] installing detectron2 main (Python only)")
        pip(python, "--no-build-isolation", "--no-deps", tmp)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--venv", default=os.path.join(ROOT, ".venv-d2main"))
    parser.add_argument("--tarball", default=DEFAULT_TARBALL)
    parser.add_argument("--force", action="store_true", help="rebuild detectron2 even if present")
    args = parser.parse_args()
    args.venv = os.path.abspath(args.venv)  # the import check below runs in another folder
    if not os.path.isfile(args.tarball):
        print(f"[install_detectron2_main] {os.path.normpath(args.tarball)} is absent: "
              "the detectron2 main leg is skipped")
        sys.exit(TARBALL_MISSING)
    python = os.path.join(args.venv, "bin", "python")
    stamp = os.path.join(args.venv, ".detectron2-main-installed")
    if not os.path.exists(python):
        subprocess.run([sys.executable, "-m", "venv", args.venv], check=True)
    # every time, also into a kept venv: requirements.txt may have gained a package since
    pip(python, "-r", os.path.join(ROOT, "requirements.txt"))
    if os.path.exists(stamp) and not args.force:
        print(f"[install_detectron2_main] {args.venv} has detectron2 main: kept")
        return
    pip(python, opencv_package(), *DETECTRON2_REQUIREMENTS, *MAIN_EXTRA_REQUIREMENTS)
    build_from_tarball(python, args.tarball)
    subprocess.run([python, "-c", "import detectron2.engine, detectron2.evaluation"], check=True,
                   cwd=tempfile.gettempdir())
    open(stamp, "w").close()
    print(f"[install_detectron2_main] {args.venv}: detectron2 main installed")


if __name__ == "__main__":
    main()

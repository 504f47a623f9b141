"""Images of any PIL mode, read correctly as 8 bits per channel (or refused, naming file and mode).

detectron2's ``read_image`` converts with ``PIL.Image.convert("RGB")``, which clips
high-bit-depth images instead of scaling them: a 16-bit grayscale PNG (PIL mode ``I`` or
``I;16``) becomes an all-white picture. Here:

* 8-bit modes PIL converts faithfully (``RGB_SAFE_MODES``: ``1``, ``L``, ``P``, ``RGB``,
  ``RGBA``, ``LA``, ``PA``, ``CMYK``, ``YCbCr``, ...) go through ``convert("RGB")`` as in
  detectron2 (alpha is dropped);
* high-bit-depth modes (``HIGH_BIT_DEPTH_MODES``: ``I;16*``, ``I``, ``F``) are scaled to 0..255
  by ``scale_to_8bit`` (rule in its docstring), then replicated to 3 channels;
* premultiplied ``La`` is read as its gray channel;
* any other mode raises ``ImageModeError`` naming the file and the mode.

``read_image_rgb8(path)`` is the reader (EXIF orientation applied, as in detectron2).

Huge images: ``open_image(path)`` opens through PIL's decompression-bomb guard but names the
file. Over ``2 x Image.MAX_IMAGE_PIXELS`` (PIL refuses to decode) it raises
``ImageTooLargeError`` with the file, its size, the memory it would take and what to do; over
``Image.MAX_IMAGE_PIXELS`` PIL's bare ``DecompressionBombWarning`` becomes one warning naming
the file. ``FOCAL_RPN_MAX_IMAGE_PIXELS`` (pixels; ``0``: no limit) sets PIL's limit.
``needs_8bit_conversion(mode)`` says whether detectron2's own reader would get a mode wrong;
``focal_rpn.data.coco_checks`` uses it to convert such images of a dataset once, into a cache.
"""
import contextlib
import logging
import os
import re
import warnings
from typing import Iterator, Optional, Tuple

import numpy as np
from PIL import Image

logger = logging.getLogger(__name__)

#: modes whose PIL.Image.convert("RGB") is correct (8 bits per channel, or 1 bit)
RGB_SAFE_MODES = frozenset({"1", "L", "P", "RGB", "RGBA", "RGBX", "RGBa", "LA", "PA", "CMYK",
                            "YCbCr", "HSV", "LAB"})
#: modes that convert("RGB") clips: they must be scaled to 8 bits first
HIGH_BIT_DEPTH_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N", "F"})
#: modes read through a mode-specific path (premultiplied alpha)
SPECIAL_MODES = frozenset({"La"})


class ImageModeError(OSError):
    """An image has a PIL mode that focal_rpn cannot read as 8-bit colour; names file and mode."""


class ImageTooLargeError(OSError):
    """An image is over PIL's decompression-bomb limit; names the file, its size and the fix."""


#: environment variable that sets PIL's decompression-bomb limit (pixels; 0: no limit)
MAX_PIXELS_ENV = "FOCAL_RPN_MAX_IMAGE_PIXELS"
#: decoding memory per pixel, measured: a 144-megapixel JPEG took 2.8 GB to train on
BYTES_PER_PIXEL = 2.8e9 / 144e6
_PIL_SIZE = re.compile(r"\((\d+) pixels\)")
_warned_large = set()


def configured_pixel_limit() -> Optional[int]:
    """PIL's limit after ``FOCAL_RPN_MAX_IMAGE_PIXELS`` is applied (None: no limit). An
    unset variable leaves PIL's own limit (89,478,485 pixels by default)."""
    value = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if value:
        try:
            pixels = int(float(value))
        except ValueError:
            raise ValueError(f"{MAX_PIXELS_ENV}={value!r}: expected a number of pixels "
                             "(e.g. 200000000), or 0 for no limit") from None
        Image.MAX_IMAGE_PIXELS = pixels if pixels > 0 else None
    return Image.MAX_IMAGE_PIXELS


def _size_text(path: str, pixels: Optional[int], size: Optional[Tuple[int, int]]) -> str:
    shown = f"{size[0]} x {size[1]} = " if size else ""
    megapixels = f"{pixels / 1e6:.0f} megapixels" if pixels else "an unknown size"
    memory = f", about {pixels * BYTES_PER_PIXEL / 1e9:.1f} GB to decode and train on" if pixels else ""
    return f"image file {path!r} is {shown}{megapixels}{memory}"


def _advice(limit: int) -> str:
    return (f"Downscale the image (and its boxes in the json) below {limit:,} pixels, or, if "
            f"the machine has the memory, raise the limit: {MAX_PIXELS_ENV}=<pixels> "
            "(0: no limit) before the command")


@contextlib.contextmanager
def open_image(path: str) -> Iterator[Image.Image]:
    """``PIL.Image.open(path)`` with the decompression-bomb guard naming the file (see the
    module docstring)."""
    limit = configured_pixel_limit()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", Image.DecompressionBombWarning)
        try:
            image = Image.open(path)
        except Image.DecompressionBombError as e:
            match = _PIL_SIZE.search(str(e))
            pixels = int(match.group(1)) if match else None
            raise ImageTooLargeError(
                f"{_size_text(path, pixels, None)}: over twice PIL's decompression-bomb limit of "
                f"{limit:,} pixels, so it is not decoded. {_advice(limit)}") from None
    for warning in caught:
        if issubclass(warning.category, Image.DecompressionBombWarning):
            if path not in _warned_large:
                _warned_large.add(path)
                width, height = image.size
                logger.warning(
                    f"{_size_text(path, width * height, (width, height))}: over PIL's "
                    f"decompression-bomb limit of {limit:,} pixels (decoded, as PIL allows up "
                    f"to twice that). {_advice(limit)}")
        else:
            warnings.warn_explicit(warning.message, warning.category, warning.filename,
                                   warning.lineno)
    with image:
        yield image


def supported_modes() -> Tuple[str, ...]:
    return tuple(sorted(RGB_SAFE_MODES | HIGH_BIT_DEPTH_MODES | SPECIAL_MODES))


def needs_8bit_conversion(mode: str) -> bool:
    """Whether detectron2's ``read_image`` (``convert("RGB")``) would misread ``mode``."""
    return mode in HIGH_BIT_DEPTH_MODES or mode in SPECIAL_MODES


def check_mode(mode: str, path: str) -> None:
    """Raise ``ImageModeError`` for a mode this module cannot read correctly."""
    if mode not in RGB_SAFE_MODES | HIGH_BIT_DEPTH_MODES | SPECIAL_MODES:
        raise ImageModeError(
            f"image file {path!r} has PIL mode {mode!r}, which focal_rpn cannot read as 8-bit "
            f"colour; supported modes: {', '.join(supported_modes())}. Convert the file, e.g. "
            f"python -c \"from PIL import Image; Image.open('{path}').convert('RGB')"
            f".save('{path}.png')\"")


def full_range(image: Image.Image, values: np.ndarray) -> Tuple[float, float]:
    """The value range that maps to 0..255 for a high-bit-depth ``image``:

    * ``I;16*`` and ``I`` read from a PNG (PNG stores at most 16 bits): 0..65535;
    * other ``I`` (e.g. 32-bit TIFF): 0..255 if every value is in it, else 0..65535 if every
      value is in that, else the image's own min..max;
    * ``F``: 0..1 if every value is in it, else 0..255 likewise, else min..max.
    """
    mode = image.mode
    lo, hi = float(values.min()), float(values.max())
    if mode.startswith("I;16") or (mode == "I" and image.format == "PNG"):
        return 0.0, 65535.0
    ranges = [(0.0, 255.0), (0.0, 65535.0)] if mode == "I" else [(0.0, 1.0), (0.0, 255.0)]
    for low, high in ranges:
        if lo >= low and hi <= high:
            return low, high
    return lo, hi if hi > lo else lo + 1.0


def scale_to_8bit(image: Image.Image) -> np.ndarray:
    """HxW uint8 array of a single-channel high-bit-depth ``image`` (range: ``full_range``)."""
    values = np.asarray(image).astype(np.float64)
    values = np.nan_to_num(values, nan=0.0, posinf=np.finfo(np.float64).max, neginf=0.0)
    low, high = full_range(image, values)
    scaled = (values - low) * (255.0 / (high - low))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def to_rgb8(image: Image.Image, path: str = "<image>") -> Image.Image:
    """``image`` as an 8-bit ``RGB`` PIL image (see the module docstring)."""
    mode = image.mode
    check_mode(mode, path)
    if mode in RGB_SAFE_MODES:
        return image.convert("RGB")
    if mode == "La":
        gray = np.asarray(image)[..., 0]
    else:
        gray = scale_to_8bit(image)
    return Image.fromarray(np.repeat(gray[..., None], 3, axis=2), "RGB")


def read_image_rgb8(path: str, format: str = "RGB") -> np.ndarray:
    """HxWx3 uint8 array of the image file ``path`` in ``format`` "RGB" or "BGR", EXIF
    orientation applied. Raises ``ImageModeError`` for an unsupported mode, ``OSError`` for a
    missing or corrupt file."""
    if format not in ("RGB", "BGR"):
        raise ValueError(f"format must be 'RGB' or 'BGR', got {format!r}")
    with open_image(path) as image:
        image.load()
        # converted before the EXIF turn: a turned copy forgets image.format (16-bit PNG rule)
        rgb = np.asarray(exif_transposed(image, to_rgb8(image, path)))
    return rgb[:, :, ::-1].copy() if format == "BGR" else rgb


_T = getattr(Image, "Transpose", Image)  # Pillow >= 9.1: the Transpose enum
#: EXIF orientation -> the transpose that undoes it (as PIL.ImageOps.exif_transpose)
_TRANSPOSE = {2: _T.FLIP_LEFT_RIGHT, 3: _T.ROTATE_180, 4: _T.FLIP_TOP_BOTTOM, 5: _T.TRANSPOSE,
              6: _T.ROTATE_270, 7: _T.TRANSVERSE, 8: _T.ROTATE_90}


def exif_transposed(original: Image.Image, converted: Image.Image) -> Image.Image:
    """``converted`` (pixels of ``original``) turned as ``original``'s EXIF orientation says,
    as detectron2's reader does."""
    try:
        orientation = original.getexif().get(0x0112)
    except Exception:  # a broken EXIF block: ignored, as by detectron2
        orientation = None
    method = _TRANSPOSE.get(orientation)
    return converted.transpose(method) if method is not None else converted

"""Rendering of one synthetic detection image: shapes on a cluttered background.

Pure numpy/OpenCV, no detectron2 and no file I/O (``synthetic.py`` writes the files). Everything
random comes from the ``numpy.random.Generator`` passed in, so a seed gives the same image.

Design choices (what a detector can and cannot learn from these images):

* Class is decided by the *shape* only: every object gets a random colour (chosen to contrast
  with what is under it), so colour is no cue. Shapes stand upright, tilted by at most
  ``MAX_TILT_DEGREES``, as most things in photographs do. (Generator version 1 rotated them
  freely: the quick recipe then reached box AP 21.5 in 900 iterations, with most of the loss in
  telling rotated shapes apart; the runs are in the README of commit 00f9be2.)
* Object size (the longer side of its unoccluded tight box) is log-uniform in
  ``[MIN_OBJECT_SIZE, image_size // 2]``.
* Objects may overlap. A later object is only placed where every earlier object keeps at least
  ``MIN_VISIBLE_FRACTION`` of its pixels and a visible box whose longer side is still at least
  ``MIN_OBJECT_SIZE``; the ground-truth box is the tight box of the *visible* pixels.
* The background is a random colour gradient + low-frequency blotches + pixel noise, with
  distractors that are not objects: straight lines, random-walk scribbles and soft (blurred)
  blobs. Distractors are drawn first, so objects are always on top of them.
"""
import colorsys
from typing import List, NamedTuple, Tuple

import cv2
import numpy as np

#: Class names, in order: COCO category id ``i + 1`` is ``SHAPE_CLASSES[i]``.
SHAPE_CLASSES = ("circle", "square", "triangle", "cross", "ring", "star")

MIN_OBJECTS = 1
MAX_OBJECTS = 8
#: Smallest object: the longer side of its tight box, in pixels.
MIN_OBJECT_SIZE = 8
#: Every object keeps at least this fraction of its pixels visible.
MIN_VISIBLE_FRACTION = 0.5
#: Largest tilt of a shape from upright, either way, in degrees.
MAX_TILT_DEGREES = 0.0
#: Placement attempts per object before it is skipped (the first object never is).
MAX_PLACEMENT_TRIES = 20

_SHIFT = 4  # sub-pixel bits for cv2 drawing
_ONE = 1 << _SHIFT


class RenderedObject(NamedTuple):
    """One object of a rendered image; ``bbox`` is the visible tight box, XYWH in pixels."""

    category_index: int  # index into SHAPE_CLASSES (0-based)
    bbox: Tuple[int, int, int, int]
    area: int  # number of visible pixels


# ----------------------------------------------------------------------------- shapes


def _unit_polygon(shape: str) -> np.ndarray:
    """Vertices (P, 2) of a polygonal shape inside the unit circle, before rotation."""
    if shape == "square":
        return np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=np.float64)
    # image coordinates: y points down, so -90 degrees is "up"
    if shape == "triangle":
        t = np.deg2rad([-90.0, 30.0, 150.0])
        return np.stack([np.cos(t), np.sin(t)], axis=1)
    if shape == "star":
        t = np.deg2rad(-90.0 + 36.0 * np.arange(10))
        r = np.where(np.arange(10) % 2 == 0, 1.0, 0.42)
        return np.stack([r * np.cos(t), r * np.sin(t)], axis=1)
    if shape == "cross":
        a = 0.34  # half width of an arm
        return np.array(
            [[-a, -1], [a, -1], [a, -a], [1, -a], [1, a], [a, a],
             [a, 1], [-a, 1], [-a, a], [-1, a], [-1, -a], [-a, -a]],
            dtype=np.float64,
        )  # fmt: skip
    raise ValueError(f"not a polygonal shape: {shape!r}")


def shape_mask(shape: str, size: int, angle: float) -> np.ndarray:
    """Binary mask of ``shape`` rotated by ``angle`` (radians), cropped to its tight box.

    The longer side of the returned (h, w) bool array is ``size`` pixels (up to a pixel of
    rasterisation).
    """
    canvas = np.zeros((size + 2, size + 2), dtype=np.uint8)
    if shape in ("circle", "ring"):
        r = (size - 1) / 2.0
        center = (int(round((r + 0.5) * _ONE)),) * 2
        cv2.circle(canvas, center, int(round(r * _ONE)), 1, -1, cv2.LINE_8, _SHIFT)
        if shape == "ring":
            cv2.circle(canvas, center, int(round(0.55 * r * _ONE)), 0, -1, cv2.LINE_8, _SHIFT)
    else:
        pts = _unit_polygon(shape)
        c, s = np.cos(angle), np.sin(angle)
        pts = pts @ np.array([[c, s], [-s, c]])
        pts -= pts.min(axis=0)
        pts *= (size - 1) / pts.max()
        pts += 0.5
        cv2.fillPoly(canvas, [np.round(pts * _ONE).astype(np.int32)], 1, cv2.LINE_8, _SHIFT)
    ys, xs = np.nonzero(canvas)
    return canvas[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1].astype(bool)


# ----------------------------------------------------------------------------- background


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    """A random saturated-ish BGR colour, float32 in [0, 255]."""
    h, s, v = rng.uniform(0, 1), rng.uniform(0.35, 1.0), rng.uniform(0.3, 1.0)
    r, g, b = colorsys.hsv_to_rgb(h, s, v)
    return np.array([b, g, r], dtype=np.float32) * 255.0


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Gradient between two random colours + low-frequency colour blotches, (H, W, 3) float32.

    Both are smooth, so they are made on an 8 x 8 grid and upsampled.
    """
    c0 = rng.uniform(0, 255, 3).astype(np.float32)
    c1 = rng.uniform(0, 255, 3).astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    coords = np.linspace(0.0, 1.0, 8, dtype=np.float32)
    t = np.cos(angle) * coords[None, :] + np.sin(angle) * coords[:, None]
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    grid = c0 + (c1 - c0) * t[:, :, None]
    grid += rng.normal(0.0, rng.uniform(5, 30), (8, 8, 3)).astype(np.float32)
    # cubic to 32 x 32 (smooth), then linear to full size (a full-size cubic resize is slow)
    grid = cv2.resize(grid.astype(np.float32), (32, 32), interpolation=cv2.INTER_CUBIC)
    return cv2.resize(grid, (size, size), interpolation=cv2.INTER_LINEAR)


def _draw_distractors(rng: np.random.Generator, image: np.ndarray) -> None:
    """Lines, random-walk scribbles and soft blobs (in place): clutter that is not an object."""
    size = image.shape[0]
    for _ in range(rng.integers(1, 6)):  # straight lines, possibly crossing the whole image
        p0 = tuple(int(v) for v in rng.integers(-size // 4, size + size // 4, 2))
        p1 = tuple(int(v) for v in rng.integers(-size // 4, size + size // 4, 2))
        cv2.line(image, p0, p1, _random_colour(rng).tolist(), int(rng.integers(1, 3)))
    for _ in range(rng.integers(0, 3)):  # scribbles: random walks
        steps = rng.normal(0, size / 20, (int(rng.integers(4, 12)), 2))
        pts = np.cumsum(steps, axis=0) + rng.uniform(0, size, 2)
        cv2.polylines(image, [pts.astype(np.int32)], False, _random_colour(rng).tolist(), 1)
    for _ in range(rng.integers(1, 4)):  # soft blobs: blurred ellipses, alpha-blended
        # drawn and blurred at 1/4 scale, then upsampled: soft edges, no sharp outline
        axes = rng.uniform(size / 96, size / 32, 2)
        half = int(np.ceil(axes.max() + axes.min())) + 1  # room for the blur
        alpha = np.zeros((2 * half + 1, 2 * half + 1), dtype=np.float32)
        ax = tuple(max(int(a), 1) for a in axes)
        cv2.ellipse(alpha, (half, half), ax, float(rng.uniform(0, 180)), 0, 360, 1.0, -1)
        alpha = cv2.GaussianBlur(alpha, (0, 0), sigmaX=float(axes.min() / 2))
        alpha = cv2.resize(alpha, (8 * half + 4, 8 * half + 4), interpolation=cv2.INTER_LINEAR)
        alpha *= rng.uniform(0.3, 0.7)
        cx, cy = (int(v) for v in rng.integers(0, size, 2))
        half = alpha.shape[0] // 2
        _blend_patch(image, alpha, _random_colour(rng), cx - half, cy - half)


def _blend_patch(image: np.ndarray, alpha: np.ndarray, colour: np.ndarray, x0: int, y0: int):
    """``image = (1 - alpha) * image + alpha * colour`` over a patch clipped to the image."""
    h, w = alpha.shape
    H, W = image.shape[:2]
    ix0, iy0, ix1, iy1 = max(x0, 0), max(y0, 0), min(x0 + w, W), min(y0 + h, H)
    if ix0 >= ix1 or iy0 >= iy1:
        return
    a = np.ascontiguousarray(alpha[iy0 - y0 : iy1 - y0, ix0 - x0 : ix1 - x0])
    region = np.ascontiguousarray(image[iy0:iy1, ix0:ix1])
    flat = np.empty_like(region)
    flat[:] = colour
    image[iy0:iy1, ix0:ix1] = cv2.blendLinear(region, flat, 1.0 - a, a)


# ----------------------------------------------------------------------------- objects


def _visible_box(idmap: np.ndarray, obj_id: int, box: Tuple[int, int, int, int]):
    """(x, y, w, h, area) of the pixels of ``obj_id`` inside ``box`` (x0, y0, x1, y1)."""
    x0, y0, x1, y1 = box
    ys, xs = np.nonzero(idmap[y0:y1, x0:x1] == obj_id)
    if len(ys) == 0:
        return None
    bx, by = int(xs.min()) + x0, int(ys.min()) + y0
    return bx, by, int(xs.max()) + x0 - bx + 1, int(ys.max()) + y0 - by + 1, len(ys)


def _place(idmap, boxes, full_areas, mask, x0, y0, new_id):
    """Paint ``mask`` at (x0, y0) into a copy of ``idmap``; None if it hides too much of others."""
    h, w = mask.shape
    region = idmap[y0 : y0 + h, x0 : x0 + w]
    hidden = np.unique(region[mask])
    candidate = idmap.copy()
    candidate[y0 : y0 + h, x0 : x0 + w][mask] = new_id
    for obj_id in hidden[hidden > 0]:
        vis = _visible_box(candidate, int(obj_id), boxes[obj_id - 1])
        if vis is None or vis[4] < MIN_VISIBLE_FRACTION * full_areas[obj_id - 1]:
            return None
        if max(vis[2], vis[3]) < MIN_OBJECT_SIZE:
            return None
    return candidate


def _contrasting_colour(rng: np.random.Generator, under: np.ndarray) -> np.ndarray:
    """A random colour far (L1 >= 120) from ``under`` (the mean colour below), else the farthest."""
    best, best_dist = None, -1.0
    for _ in range(10):
        colour = _random_colour(rng)
        dist = float(np.abs(colour - under).sum())
        if dist >= 120:
            return colour
        if dist > best_dist:
            best, best_dist = colour, dist
    return best


def render_image(rng: np.random.Generator, image_size: int) -> Tuple[np.ndarray, List[RenderedObject]]:
    """Render one image; returns (BGR uint8 array (S, S, 3), its objects in drawing order)."""
    image = _background(rng, image_size)
    _draw_distractors(rng, image)

    max_size = image_size // 2
    idmap = np.zeros((image_size, image_size), dtype=np.int16)  # 0: background, k: object k
    classes, boxes, full_areas = [], [], []
    for _ in range(rng.integers(MIN_OBJECTS, MAX_OBJECTS + 1)):
        category = int(rng.integers(len(SHAPE_CLASSES)))
        size = int(round(np.exp(rng.uniform(np.log(MIN_OBJECT_SIZE), np.log(max_size)))))
        tilt = np.deg2rad(MAX_TILT_DEGREES) * rng.uniform(-1.0, 1.0)
        mask = shape_mask(SHAPE_CLASSES[category], size, tilt)
        h, w = mask.shape
        for _ in range(MAX_PLACEMENT_TRIES):
            x0 = int(rng.integers(0, image_size - w + 1))
            y0 = int(rng.integers(0, image_size - h + 1))
            placed = _place(idmap, boxes, full_areas, mask, x0, y0, len(classes) + 1)
            if placed is not None:
                break
        else:
            continue  # no room for this object
        idmap = placed
        classes.append(category)
        boxes.append((x0, y0, x0 + w, y0 + h))
        full_areas.append(int(mask.sum()))
        _paint_object(rng, image[y0 : y0 + h, x0 : x0 + w], mask)

    # pixel noise: uniform (cheaper to draw than normal), standard deviation 3 to 12
    amplitude = np.float32(rng.uniform(3, 12) * np.sqrt(12.0))
    image += (rng.random(image.shape, dtype=np.float32) - np.float32(0.5)) * amplitude
    image = np.clip(image, 0, 255).astype(np.uint8)

    objects = []
    for obj_id, (category, box) in enumerate(zip(classes, boxes), start=1):
        x, y, w, h, area = _visible_box(idmap, obj_id, box)
        objects.append(RenderedObject(category, (x, y, w, h), area))
    return image, objects


def _paint_object(rng: np.random.Generator, region: np.ndarray, mask: np.ndarray) -> None:
    """Fill ``mask`` of ``region`` (a view of the image) with a shaded contrasting colour."""
    colour = _contrasting_colour(rng, region[mask].mean(axis=0))
    h, w = mask.shape
    angle = rng.uniform(0, 2 * np.pi)
    ramp = np.cos(angle) * np.arange(w)[None, :] + np.sin(angle) * np.arange(h)[:, None]
    ramp = (ramp[mask] / max(h, w) - 0.5).astype(np.float32) * np.float32(rng.uniform(0, 50))
    region[mask] = np.clip(colour + ramp[:, None], 0, 255)

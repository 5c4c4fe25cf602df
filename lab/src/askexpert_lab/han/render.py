"""Rendering one Han character as a small grey image, with documented, seeded variation.

Every image is drawn from one face and one random draw of :class:`Augment` (a NumPy generator
seeded per image, so a build is the same whatever the order or the number of worker processes):

1. the glyph is rasterised by FreeType (Pillow) at ``RENDER`` pixels and cropped to its ink;
2. an affine warp places it on a ``CANVAS``-pixel canvas: its larger side ``scale`` of the canvas,
   the aspect ratio changed by up to ``aspect`` (log), rotated by up to ``rotate_deg``, sheared by up
   to ``shear``, moved off centre by up to ``shift`` of the canvas;
3. an elastic distortion bends the strokes: a smooth random displacement field (bicubic from a 4 x 4
   grid) of up to ``elastic`` canvas pixels, as one hand's strokes differ from another's;
4. up to ``neighbours`` times, each with probability ``neighbour_p``, a part of another character (a
   filler that is no class of the task or the pool) enters from an edge, as in a crop of a line of
   text; with probability ``occlude_p`` a rectangle of up to ``occlude`` of the canvas side loses its
   ink (a smudge, a fold, a stroke the scan missed);
5. the strokes are thickened or thinned (a 3x3 maximum or minimum filter) with probability
   ``stroke_p`` each, and blurred by a Gaussian of radius up to ``blur`` pixels;
6. ink and paper get grey levels at least ``contrast_min`` apart; the paper carries a smooth random
   texture of amplitude up to ``texture`` grey levels (and at most 0.6 of the ink's contrast) and a
   linear gradient; with probability
   ``invert_p`` the picture is inverted (light strokes on a dark ground);
7. the canvas is reduced to the output size (area averaging) and Gaussian noise of standard
   deviation up to ``noise`` grey levels is added.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image, ImageFilter, ImageFont

RENDER = 64  # FreeType's pixel size for the glyph
CANVAS = 64  # the working canvas, reduced to the output size at the end


@dataclass(frozen=True)
class Augment:
    """How much the images of a build vary (the maxima of the random draws; see the module text)."""

    scale: tuple[float, float] = (0.55, 0.95)
    aspect: float = 0.2
    rotate_deg: float = 15.0
    shear: float = 0.25
    shift: float = 0.1
    elastic: float = 3.0
    neighbours: int = 2
    neighbour_p: float = 0.45
    occlude_p: float = 0.4
    occlude: float = 0.35
    stroke_p: float = 0.25
    blur: float = 1.6
    contrast_min: float = 0.35
    texture: float = 50.0
    invert_p: float = 0.1
    noise: float = 14.0

    def to_json(self) -> dict:
        return asdict(self)


class Glyphs:
    """One face, loaded once: each character's ink bitmap (cropped), cached."""

    def __init__(self, path: str, index: int = 0) -> None:
        self.path, self.index = path, index
        self.font = ImageFont.truetype(path, RENDER, index=index)
        self._cache: dict[str, np.ndarray] = {}

    @property
    def name(self) -> str:
        family, style = self.font.getname()
        return f"{family} {style}".strip()

    def ink(self, char: str) -> np.ndarray:
        """The glyph's ink as float32 in [0, 1], cropped to its bounding box (empty: no glyph)."""
        if char not in self._cache:
            try:
                core = self.font.getmask(char, mode="L")
                mask = np.asarray(core, dtype=np.uint8).reshape(core.size[1], core.size[0])
            except OSError:  # a broken glyph program in the font
                mask = np.zeros((0, 0), dtype=np.uint8)
            if mask.size:
                rows, cols = np.flatnonzero(mask.max(1) > 32), np.flatnonzero(mask.max(0) > 32)
                mask = mask[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1] if len(rows) else mask[:0, :0]
            self._cache[char] = mask.astype(np.float32) / 255.0
        return self._cache[char]

    def has(self, char: str) -> bool:
        ink = self.ink(char)
        return ink.size > 0 and ink.shape[0] >= 4 and ink.shape[1] >= 4


def _place(ink: np.ndarray, rng: np.random.Generator, aug: Augment, *, centre: tuple[float, float] | None = None,
           side: float | None = None) -> np.ndarray:
    """The ink warped onto the canvas (float32 [CANVAS, CANVAS] in [0, 1])."""
    h, w = ink.shape
    side = side if side is not None else rng.uniform(*aug.scale) * CANVAS
    base = side / max(h, w)
    log_aspect = rng.uniform(-aug.aspect, aug.aspect)
    sx, sy = base * math.exp(log_aspect / 2), base * math.exp(-log_aspect / 2)
    angle = math.radians(rng.uniform(-aug.rotate_deg, aug.rotate_deg))
    shear = rng.uniform(-aug.shear, aug.shear)
    if centre is None:
        centre = (CANVAS / 2 + rng.uniform(-aug.shift, aug.shift) * CANVAS,
                  CANVAS / 2 + rng.uniform(-aug.shift, aug.shift) * CANVAS)
    cos, sin = math.cos(angle), math.sin(angle)
    # forward map: glyph (x, y) centred -> canvas: rotation @ shear @ scale
    a = np.array([[cos, -sin], [sin, cos]]) @ np.array([[1.0, shear], [0.0, 1.0]]) @ np.diag([sx, sy])
    inv = np.linalg.inv(a)
    cx, cy = centre
    # PIL's AFFINE takes the inverse map: canvas (u, v) -> glyph (x, y)
    off = np.array([w / 2, h / 2]) - inv @ np.array([cx, cy])
    coeffs = (inv[0, 0], inv[0, 1], off[0], inv[1, 0], inv[1, 1], off[1])
    src = Image.fromarray(ink, mode="F")
    out = src.transform((CANVAS, CANVAS), Image.Transform.AFFINE, coeffs, resample=Image.Resampling.BILINEAR)
    return np.asarray(out, dtype=np.float32)


def _elastic(ink: np.ndarray, rng: np.random.Generator, amplitude: float) -> np.ndarray:
    """``ink`` resampled (bilinear) through a smooth random displacement of up to ``amplitude`` pixels."""
    if amplitude <= 0:
        return ink
    fields = []
    for _ in range(2):
        coarse = rng.uniform(-1, 1, (4, 4)).astype(np.float32)
        fields.append(np.asarray(Image.fromarray(coarse, mode="F").resize((CANVAS, CANVAS), Image.Resampling.BICUBIC)))
    gy, gx = np.mgrid[0:CANVAS, 0:CANVAS].astype(np.float32)
    x = np.clip(gx + amplitude * fields[0], 0, CANVAS - 1.001)
    y = np.clip(gy + amplitude * fields[1], 0, CANVAS - 1.001)
    x0, y0 = x.astype(np.int32), y.astype(np.int32)
    fx, fy = x - x0, y - y0
    return ((ink[y0, x0] * (1 - fx) + ink[y0, x0 + 1] * fx) * (1 - fy)
            + (ink[y0 + 1, x0] * (1 - fx) + ink[y0 + 1, x0 + 1] * fx) * fy)


def _texture(rng: np.random.Generator, amplitude: float) -> np.ndarray:
    """A smooth random field (bicubic from 4x4 or 8x8 noise) plus a linear gradient, in grey levels."""
    cells = int(rng.choice([4, 8]))
    field = rng.standard_normal((cells, cells)).astype(np.float32)
    smooth = np.asarray(Image.fromarray(field, mode="F").resize((CANVAS, CANVAS), Image.Resampling.BICUBIC))
    gy, gx = np.mgrid[0:CANVAS, 0:CANVAS].astype(np.float32) / CANVAS - 0.5
    direction = rng.uniform(0, 2 * math.pi)
    gradient = math.cos(direction) * gx + math.sin(direction) * gy
    return rng.uniform(0, amplitude) * (0.5 * smooth + gradient)


def render(glyphs: Glyphs, char: str, rng: np.random.Generator, aug: Augment, *, size: int = 32,
           filler: tuple[Glyphs, list[str]] | None = None) -> np.ndarray:
    """One ``uint8 [size, size]`` image of ``char`` in ``glyphs``' face (see the module text)."""
    ink = _elastic(_place(glyphs.ink(char), rng, aug), rng, rng.uniform(0, aug.elastic))
    others = filler if filler is not None else None
    for _ in range(aug.neighbours):
        if others is None or rng.random() >= aug.neighbour_p:
            continue
        face, chars = others
        other = face.ink(chars[int(rng.integers(len(chars)))])
        if other.size:
            edge = int(rng.integers(4))
            reach = rng.uniform(0.68, 0.92) * CANVAS  # how far from the centre the neighbour's centre sits
            dx, dy = [(reach, 0.0), (-reach, 0.0), (0.0, reach), (0.0, -reach)][edge]
            neighbour = _place(other, rng, aug, centre=(CANVAS / 2 + dx, CANVAS / 2 + dy),
                               side=rng.uniform(*aug.scale) * CANVAS)
            ink = np.maximum(ink, neighbour)
    if rng.random() < aug.occlude_p:
        h, w = (rng.uniform(0.12, aug.occlude, 2) * CANVAS).astype(int) + 1
        y, x = int(rng.integers(0, CANVAS - h + 1)), int(rng.integers(0, CANVAS - w + 1))
        ink = ink.copy()
        ink[y:y + h, x:x + w] = 0.0
    picture = Image.fromarray(np.clip(ink * 255, 0, 255).astype(np.uint8), mode="L")
    stroke = rng.random()
    if stroke < aug.stroke_p:
        picture = picture.filter(ImageFilter.MaxFilter(3))
    elif stroke < 2 * aug.stroke_p:
        picture = picture.filter(ImageFilter.MinFilter(3))
    radius = rng.uniform(0, aug.blur)
    if radius > 0.05:
        picture = picture.filter(ImageFilter.GaussianBlur(radius))
    alpha = np.asarray(picture, dtype=np.float32) / 255.0
    contrast = rng.uniform(aug.contrast_min, 1.0) * 255
    paper = rng.uniform(contrast, 255.0)
    background = paper + _texture(rng, min(aug.texture, 0.6 * contrast))  # the strokes stay readable
    grey = background * (1 - alpha) + (paper - contrast) * alpha
    if rng.random() < aug.invert_p:
        grey = 255.0 - grey
    small = Image.fromarray(np.clip(grey, 0, 255).astype(np.float32), mode="F").resize(
        (size, size), Image.Resampling.BOX)
    out = np.asarray(small, dtype=np.float32) + rng.standard_normal((size, size)) * rng.uniform(0, aug.noise)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)

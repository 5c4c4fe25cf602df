"""Drifted inputs: common corruptions applied to uint8 images, written by the code (never downloaded).

After Hendrycks and Dietterich, "Benchmarking Neural Network Robustness to Common Corruptions and
Perturbations" (ICLR 2019), with the severities of their small-image set (CIFAR-10-C,
``make_cifar_c.py``), which suit 28-32 px images:

=============== ========================================================== ===============================
name            what                                                       severity 1..5
=============== ========================================================== ===============================
gaussian_noise  x + N(0, c), on [0, 1]                                     c = 0.04, 0.06, 0.08, 0.09, 0.10
brightness      the HSV value + c (hue and saturation kept), on [0, 1]     c = 0.05, 0.10, 0.15, 0.20, 0.30
contrast        (x - mean) * c + mean, each image and channel              c = 0.75, 0.50, 0.40, 0.30, 0.15
gaussian_blur   a Gaussian blur of standard deviation c pixels             c = 0.4, 0.6, 0.7, 0.8, 1.0
=============== ========================================================== ===============================

Every result is clipped to [0, 1] and rounded back to uint8. The noise is seeded per image (its index
in the stream), so a corrupted stream is the same on every run and on a resumed one.

NumPy only (the edge's own install).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from askexpert.errors import ConfigError

SEVERITIES = {
    "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),
    "brightness": (0.05, 0.10, 0.15, 0.20, 0.30),
    "contrast": (0.75, 0.50, 0.40, 0.30, 0.15),
    "gaussian_blur": (0.4, 0.6, 0.7, 0.8, 1.0),
}


def _noise(x: np.ndarray, c: float, rng: np.random.Generator) -> np.ndarray:
    return x + rng.normal(0.0, c, x.shape)


def _brightness(x: np.ndarray, c: float, rng) -> np.ndarray:
    # HSV value = the largest channel; raising it by c with hue and saturation kept scales every channel
    # by the same factor (grey pixels, and every pixel of a one-channel image, just gain c)
    v = x.max(axis=1, keepdims=True)
    scale = np.where(v > 0, np.minimum(v + c, 1.0) / np.maximum(v, 1e-12), 1.0)
    return np.where(v > 0, x * scale, c)


def _contrast(x: np.ndarray, c: float, rng) -> np.ndarray:
    means = x.mean(axis=(2, 3), keepdims=True)
    return (x - means) * c + means


def _blur(x: np.ndarray, c: float, rng) -> np.ndarray:
    # what skimage.filters.gaussian does for CIFAR-10-C: a separable kernel truncated at 4 sigma, edges
    # extended ("nearest")
    r = max(int(4.0 * c + 0.5), 1)
    taps = np.exp(-0.5 * (np.arange(-r, r + 1) / c) ** 2)
    taps /= taps.sum()
    h, w = x.shape[2], x.shape[3]
    padded = np.pad(x, ((0, 0), (0, 0), (r, r), (r, r)), mode="edge")
    rows = sum(t * padded[:, :, i:i + h, :] for i, t in enumerate(taps))
    return sum(t * rows[:, :, :, i:i + w] for i, t in enumerate(taps))


_APPLY: dict[str, Callable[[np.ndarray, float, np.random.Generator], np.ndarray]] = {
    "gaussian_noise": _noise, "brightness": _brightness, "contrast": _contrast, "gaussian_blur": _blur}


@dataclass(frozen=True)
class Corruption:
    """A corruption at one severity, from image ``start`` of a stream on (``NAME:SEVERITY[@START]``)."""

    name: str
    severity: int
    start: int = 0
    seed: int = 0

    @property
    def strength(self) -> float:
        return SEVERITIES[self.name][self.severity - 1]

    def describe(self) -> str:
        return (f"{self.name} at severity {self.severity} (c = {self.strength:g}, Hendrycks & Dietterich's "
                f"CIFAR-10-C setting)" + (f" from image {self.start}" if self.start else ""))

    def apply(self, images: np.ndarray, first_index: int = 0) -> np.ndarray:
        """``images`` (``uint8 [N, C, H, W]``, the first being image ``first_index`` of the stream) with the
        corruption on those at or after ``start``."""
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim != 4:
            raise ValueError(f"corrupt uint8 [N, C, H, W] images, got {images.dtype} {list(images.shape)}")
        index = first_index + np.arange(len(images))
        hit = np.flatnonzero(index >= self.start)
        if not len(hit):
            return images
        out = images.copy()
        for i in hit:  # seeded by the image's index: the same stream, however it is batched
            rng = np.random.default_rng([self.seed, int(index[i])])
            x = images[i:i + 1].astype(np.float64) / 255.0
            y = _APPLY[self.name](x, self.strength, rng)
            out[i] = np.clip(np.rint(np.clip(y, 0.0, 1.0) * 255.0), 0, 255).astype(np.uint8)[0]
        return out


def parse_corruption(text: str) -> Corruption:
    """``gaussian_noise:3`` or ``contrast:5@1000`` (from image 1000 of the stream on)."""
    spec, _, start = text.partition("@")
    name, _, severity = spec.partition(":")
    name = name.strip().lower().replace("-", "_")
    if name not in SEVERITIES:
        raise ConfigError(f"unknown corruption {name!r}", fix=f"choose one of: {', '.join(SEVERITIES)}")
    if not severity.strip().isdigit() or not 1 <= int(severity) <= 5:
        raise ConfigError(f"corruption {text!r} needs a severity 1..5", fix=f"e.g. {name}:3")
    if start and not start.strip().isdigit():
        raise ConfigError(f"cannot read the start image {start!r} of corruption {text!r}", fix=f"e.g. {name}:3@1000")
    return Corruption(name, int(severity), int(start or 0))

"""Seeded, stratified index splits. The same labels and seed always give the same indices.

NumPy only (a CPU torch tensor of labels is accepted as it is), so the edge can subsample too."""

from __future__ import annotations

import numpy as np


def _as_numpy(labels) -> np.ndarray:
    return np.asarray(labels)


def stratified_split(labels, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into (kept, held_out) with ``fraction`` of every class held out.

    Each class contributes ``round(fraction * class_size)`` samples (at least one when the class has
    two or more), so class proportions are the same on both sides. Both index arrays are sorted.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    y = _as_numpy(labels)
    rng = np.random.default_rng(seed)
    held: list[np.ndarray] = []
    for cls in np.unique(y):
        idx = np.flatnonzero(y == cls)
        n_held = int(round(fraction * len(idx)))
        if len(idx) >= 2:
            n_held = min(max(n_held, 1), len(idx) - 1)
        held.append(rng.permutation(idx)[:n_held])
    held_idx = np.sort(np.concatenate(held)) if held else np.zeros(0, dtype=np.int64)
    mask = np.ones(len(y), dtype=bool)
    mask[held_idx] = False
    return np.flatnonzero(mask), held_idx


def stratified_subset(labels, size: int, seed: int) -> np.ndarray:
    """Sorted indices of ``size`` samples drawn with the class proportions of ``labels``."""
    y = _as_numpy(labels)
    if size >= len(y):
        return np.arange(len(y))
    if size <= 0:
        raise ValueError(f"subset size must be positive, got {size}")
    _, held = stratified_split(y, size / len(y), seed)
    return held

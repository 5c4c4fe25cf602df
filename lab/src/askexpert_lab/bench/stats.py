"""Seed statistics for the benchmarks: paired differences over seeds with a 95% t interval."""

from __future__ import annotations

import math
import statistics

T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}  # two-sided, by dof


def paired(a: list[float], b: list[float]) -> dict:
    """Per-seed differences a - b, their mean and a 95% t interval (None with one seed)."""
    d = [x - y for x, y in zip(a, b, strict=True)]
    out = {"per_seed": d, "mean": statistics.mean(d), "ci95": None}
    if len(d) > 1:
        half = T95.get(len(d) - 1, 1.96) * statistics.stdev(d) / math.sqrt(len(d))
        out["ci95"] = [out["mean"] - half, out["mean"] + half]
    return out

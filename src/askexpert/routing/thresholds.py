"""Choosing tau on validation data: for a target offload rate, or for a target accuracy (NumPy only)."""

from __future__ import annotations

import numpy as np

ALL = 1.0 + 1e-6  # above every confidence score: offload everything


def tau_for_offload(confidence, rate: float) -> float:
    """The tau at which a share ``rate`` of the samples has confidence below tau."""
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"offload rate must be in [0, 1], got {rate}")
    conf = np.asarray(confidence, dtype=np.float32)
    n = len(conf)
    m = int(round(rate * n))
    if m == 0:
        return 0.0
    if m >= n:
        return ALL
    return float(np.sort(conf, kind="stable")[m])


def tau_for_accuracy(confidence, local_correct, offload_correct, target: float) -> tuple[float, float]:
    """The least offloading that reaches ``target`` accuracy (%) on validation: ``(tau, accuracy)``.

    ``local_correct`` / ``offload_correct`` say, per sample, whether the answer is right when kept
    locally / when offloaded. Samples are offloaded least-confident first. When no offload rate
    reaches the target, the most accurate one is returned.
    """
    conf = np.asarray(confidence, dtype=np.float32)
    order = np.argsort(conf, kind="stable")
    local = np.asarray(local_correct, dtype=np.float64)[order]
    remote = np.asarray(offload_correct, dtype=np.float64)[order]
    n = len(order)
    # accuracy when the first m samples (m = 0..n) are offloaded
    offloaded_right = np.concatenate([[0.0], np.cumsum(remote)])
    kept_right = np.concatenate([np.cumsum(local[::-1])[::-1], [0.0]])
    acc = (offloaded_right + kept_right) / n * 100
    reach = np.flatnonzero(acc >= target - 1e-9)
    m = int(reach[0]) if len(reach) else int(acc.argmax())
    ordered = conf[order]
    tau = 0.0 if m == 0 else (ALL if m >= n else float(ordered[m]))
    return tau, float(acc[m])

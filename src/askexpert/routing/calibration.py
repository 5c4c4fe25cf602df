"""Temperature scaling (Guo et al., 2017): one scalar T fitted on validation logits by minimising
the negative log-likelihood, so that softmax(logits / T) is calibrated.

NumPy only. The NLL is convex in beta = 1/T (its second derivative is the mean variance of the
logits under the scaled softmax), so a safeguarded Newton search over beta finds the optimum to
machine precision within the allowed range T in [0.05, 20].
"""

from __future__ import annotations

import numpy as np

T_MIN, T_MAX = 0.05, 20.0


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of ``logits / temperature`` (float32 in, float32 out)."""
    z = np.asarray(logits, dtype=np.float32) / np.float32(temperature)
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _derivatives(z: np.ndarray, y: np.ndarray, beta: float) -> tuple[float, float]:
    """First and second derivative of the mean NLL of ``softmax(beta * z)`` with respect to beta."""
    s = beta * z
    p = np.exp(s - s.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    mean_z = (p * z).sum(1)
    var_z = (p * z * z).sum(1) - mean_z**2
    return float((mean_z - z[np.arange(len(y)), y]).mean()), float(max(var_z.mean(), 0.0))


def fit_temperature(logits, labels, *, max_iter: int = 100) -> float:
    """The temperature minimising NLL of ``labels`` under ``softmax(logits / T)``, clipped to [0.05, 20]."""
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    lo, hi = 1.0 / T_MAX, 1.0 / T_MIN  # bracket on beta
    if _derivatives(z, y, lo)[0] >= 0:
        return T_MAX
    if _derivatives(z, y, hi)[0] <= 0:
        return T_MIN
    beta = 1.0
    for _ in range(max_iter):
        g, h = _derivatives(z, y, beta)
        if abs(g) < 1e-12:
            break
        if g > 0:
            hi = beta
        else:
            lo = beta
        step = beta - g / h if h > 0 else None
        new = step if step is not None and lo < step < hi else (lo + hi) / 2
        if abs(new - beta) < 1e-13 or hi - lo < 1e-13:
            beta = new
            break
        beta = new
    return float(min(max(1.0 / beta, T_MIN), T_MAX))

"""Choosing tau on validation data: for a target offload rate, or for a target accuracy."""

from __future__ import annotations

import torch

ALL = 1.0 + 1e-6  # above every confidence score: offload everything


def tau_for_offload(confidence: torch.Tensor, rate: float) -> float:
    """The tau at which a share ``rate`` of the samples has confidence below tau."""
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"offload rate must be in [0, 1], got {rate}")
    n = len(confidence)
    m = int(round(rate * n))
    if m == 0:
        return 0.0
    if m >= n:
        return ALL
    ordered = confidence.float().sort().values
    return float(ordered[m])


def tau_for_accuracy(confidence: torch.Tensor, local_correct: torch.Tensor, offload_correct: torch.Tensor,
                     target: float) -> tuple[float, float]:
    """The least offloading that reaches ``target`` accuracy (%) on validation: ``(tau, accuracy)``.

    ``local_correct`` / ``offload_correct`` say, per sample, whether the answer is right when kept
    locally / when offloaded. Samples are offloaded least-confident first. When no offload rate
    reaches the target, the most accurate one is returned.
    """
    order = confidence.float().argsort()
    local = local_correct[order].float()
    remote = offload_correct[order].float()
    n = len(order)
    # accuracy when the first m samples (m = 0..n) are offloaded
    acc = (torch.cat([torch.zeros(1), remote.cumsum(0)]) + torch.cat([local.flip(0).cumsum(0).flip(0),
                                                                      torch.zeros(1)])) / n * 100
    reach = torch.nonzero(acc >= target - 1e-9)
    m = int(reach[0]) if len(reach) else int(acc.argmax())
    ordered = confidence.float()[order]
    tau = 0.0 if m == 0 else (ALL if m >= n else float(ordered[m]))
    return tau, float(acc[m])

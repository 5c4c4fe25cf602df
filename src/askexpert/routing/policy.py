"""The routing policy: tensors in, decisions out, vectorised over a batch.

For every sample the generalist's logits are temperature-scaled; a confidence score (max softmax,
margin or normalised negative entropy) at or above ``tau`` keeps the generalist's answer locally.
Otherwise the generalist's Top-k classes vote with their probabilities for the expert whose class
subset holds the largest share of that mass (ties go to the lowest expert id), and the sample is
offloaded to that expert. When the expert answers, its answer stands unless it says "other" or,
under the ``other-or-less-confident`` rule, it is less confident than the generalist.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

Confidence = Literal["max-prob", "margin", "entropy"]
Fallback = Literal["other", "other-or-less-confident"]
OTHER = -1  # an expert's "not one of my classes"


def confidence_scores(probs: torch.Tensor, kind: Confidence = "max-prob") -> torch.Tensor:
    """Confidence in [0, 1] of each row of ``probs``: higher means more sure."""
    if kind == "max-prob":
        return probs.max(1).values
    if kind == "margin":
        top2 = probs.topk(2, dim=1).values
        return top2[:, 0] - top2[:, 1]
    if kind == "entropy":
        ent = -(probs * probs.clamp_min(1e-12).log()).sum(1)
        return 1.0 - ent / torch.log(torch.tensor(float(probs.shape[1])))
    raise ValueError(f"unknown confidence {kind!r}: use max-prob, margin or entropy")


def membership_matrix(subsets: list[list[int]], num_classes: int) -> torch.Tensor:
    """``[E, C]`` float matrix, 1 where class c belongs to expert e's subset."""
    m = torch.zeros(len(subsets), num_classes)
    for e, classes in enumerate(subsets):
        m[e, classes] = 1.0
    return m


@dataclass(frozen=True)
class RoutingPolicy:
    tau: float
    k: int = 3
    temperature: float = 1.0
    confidence: Confidence = "max-prob"
    fallback: Fallback = "other"


@dataclass
class RouteDecision:
    """Per-sample routing of a batch (all tensors ``[N]``)."""

    offload: torch.Tensor  # bool: send to an expert
    expert: torch.Tensor  # int64 expert id, -1 where kept locally
    confidence: torch.Tensor  # float, the generalist's calibrated confidence
    local_pred: torch.Tensor  # int64, the generalist's answer
    probs: torch.Tensor  # [N, C] calibrated generalist probabilities


def route(logits: torch.Tensor, policy: RoutingPolicy, membership: torch.Tensor) -> RouteDecision:
    """Decide, for every row of the generalist's ``logits`` ``[N, C]``, keep or offload and to which expert."""
    probs = torch.softmax(logits.float() / policy.temperature, dim=1)
    conf = confidence_scores(probs, policy.confidence)
    local_pred = probs.argmax(1)
    k = min(policy.k, probs.shape[1])
    top_p, top_i = probs.topk(k, dim=1)
    # mass[n, e] = sum of the top-k probabilities whose class belongs to expert e
    mass = (top_p.unsqueeze(2) * membership.t()[top_i]).sum(1)
    expert = mass.argmax(1)  # first maximum: the lowest expert id wins a tie
    offload = conf < policy.tau
    expert = torch.where(offload, expert, torch.full_like(expert, -1))
    return RouteDecision(offload, expert, conf, local_pred, probs)


def finalize(decision: RouteDecision, expert_pred: torch.Tensor, expert_conf: torch.Tensor,
             policy: RoutingPolicy, answered: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Final predictions ``[N]`` and a ``[N]`` bool "fell back to the generalist" flag.

    ``expert_pred`` holds the chosen expert's global class id (``OTHER`` for "not mine") and
    ``expert_conf`` its confidence, for every sample (values of kept samples are ignored).
    ``answered`` marks offloaded samples whose expert did answer (default: all of them); an
    unanswered one (dead server, error) keeps the generalist's answer.
    """
    offload = decision.offload
    answered = offload if answered is None else offload & answered
    use_expert = answered & (expert_pred != OTHER)
    if policy.fallback == "other-or-less-confident":
        use_expert &= expert_conf >= decision.confidence
    final = torch.where(use_expert, expert_pred, decision.local_pred)
    fell_back = offload & ~use_expert
    return final, fell_back

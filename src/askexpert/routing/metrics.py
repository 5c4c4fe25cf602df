"""Offline evaluation of the collaborative system from saved logits (NumPy only).

Given the generalist's logits, every expert's logits on the same samples and the labels, it
computes what the deployed system would answer for any (tau, k): accuracy overall and on the
offloaded samples, offload rate, per-expert load, routing hit rate and expert rejections.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from askexpert.routing.calibration import softmax
from askexpert.routing.policy import OTHER, RoutingPolicy, finalize, route


@dataclass
class ExpertAnswers:
    """Every expert's answer for every sample: global class id (or OTHER) and confidence, ``[E, N]``;
    ``pred_no_other``: the answer of the argmax over the expert's own classes alone (never OTHER)."""

    pred: np.ndarray
    conf: np.ndarray
    pred_no_other: np.ndarray | None = None

    @classmethod
    def from_logits(cls, logits: list, subsets: list[list[int]],
                    temperatures: list[float] | None = None) -> ExpertAnswers:
        """Expert e's logits ``[N, len(subset_e) + 1]`` (last output: "other") -> answers, with each
        expert's softmax at its temperature (the server answers with the same ones).

        A logits matrix without the extra column (a model over exactly its subset) never says "other".
        """
        preds, confs, inside = [], [], []
        for e, (z, subset) in enumerate(zip(logits, subsets, strict=True)):
            p = softmax(np.asarray(z), temperatures[e] if temperatures else 1.0)
            idx = p.argmax(1)
            ids = np.array(list(subset) + [OTHER], dtype=np.int64)[: p.shape[1]]
            preds.append(ids[idx])
            confs.append(p[np.arange(len(idx)), idx])
            inside.append(ids[p[:, :len(subset)].argmax(1)])
        return cls(np.stack(preds), np.stack(confs), np.stack(inside))

    def for_route(self, expert: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The answers of each sample's chosen expert (kept samples get OTHER / 0)."""
        idx = np.maximum(expert, 0)
        n = np.arange(len(expert))
        pred = np.where(expert >= 0, self.pred[idx, n], OTHER)
        conf = np.where(expert >= 0, self.conf[idx, n], 0.0).astype(np.float32)
        return pred, conf


@dataclass
class SystemMetrics:
    """What the collaborative system achieves on one set of samples under one policy (percentages)."""

    tau: float
    k: int
    samples: int
    accuracy: float
    generalist_accuracy: float
    offload_rate: float
    offloaded: int
    offloaded_accuracy_generalist: float
    offloaded_accuracy_system: float
    routing_hit_rate: float
    expert_load: list[int]
    expert_other_rate: float
    fallback_rate: float
    offloaded_accuracy_general: float | None = None  # the general model on the same offloaded samples


def subset_accuracies(answers: ExpertAnswers, subsets: list[list[int]], labels, *, other: bool = True) -> list[float]:
    """Each expert's accuracy on the samples of its own subset (its answer names the true class). With
    ``other`` an "other" answer counts as an error (what the system meets); without, the argmax over the
    expert's own classes alone is scored (like for like with a model that cannot say "other")."""
    labels = np.asarray(labels, dtype=np.int64)
    pred = answers.pred if other or answers.pred_no_other is None else answers.pred_no_other
    inside = [np.isin(labels, subset) for subset in subsets]
    return [share(pred[e][mask] == labels[mask]) for e, mask in enumerate(inside)]


def share(hits: np.ndarray) -> float:
    """The share (%) of true entries of a boolean array: the one accuracy of the NumPy side (NaN when empty:
    a rate of nothing is not 0%)."""
    return 100.0 * float(np.mean(hits)) if hits.size else float("nan")


def oracle_experts(labels: np.ndarray, membership: np.ndarray, offload: np.ndarray) -> np.ndarray:
    """Each offloaded sample's expert under oracle routing: the first expert that holds its true class
    (the upper bound of any router on the same offloaded samples); -1 where kept."""
    holds = membership[:, labels] > 0  # [E, N]
    return np.where(offload, holds.argmax(0), -1).astype(np.int64)


def system_metrics(gen_logits, labels, membership, answers: ExpertAnswers, policy: RoutingPolicy, *,
                   oracle: bool = False) -> SystemMetrics:
    """What the collaborative system achieves on these samples under ``policy``; with ``oracle``, on the
    same offloaded samples with each sent to an expert that holds its true class."""
    labels = np.asarray(labels, dtype=np.int64)
    membership = np.asarray(membership, dtype=np.float32)
    d = route(gen_logits, policy, membership)
    if oracle:
        d.expert = oracle_experts(labels, membership, d.offload)
    pred, conf = answers.for_route(d.expert)
    final, fell_back = finalize(d, pred, conf, policy)
    off = d.offload
    n, n_off = len(labels), int(off.sum())
    local_ok = d.local_pred == labels
    final_ok = final == labels
    experts = membership.shape[0]
    load = np.bincount(d.expert[off], minlength=experts) if n_off else np.zeros(experts, dtype=np.int64)
    hit = membership[d.expert[off], labels[off]].astype(bool) if n_off else np.zeros(0, dtype=bool)
    return SystemMetrics(
        tau=policy.tau, k=policy.k, samples=n, accuracy=share(final_ok), generalist_accuracy=share(local_ok),
        offload_rate=100.0 * n_off / n, offloaded=n_off, offloaded_accuracy_generalist=share(local_ok[off]),
        offloaded_accuracy_system=share(final_ok[off]), routing_hit_rate=share(hit),
        expert_load=[int(v) for v in load], expert_other_rate=share(pred[off] == OTHER),
        fallback_rate=share(fell_back[off]),
    )

"""Offline evaluation of the collaborative system from saved logits (NumPy only).

Given the generalist's logits, every expert's logits on the same samples and the labels, it
computes what the deployed system would answer for any (tau, k): accuracy overall and on the
offloaded samples, offload rate, per-expert load, routing hit rate and expert rejections.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from askexpert.contract.reroute import Reroute
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
    # share (%) of the offloaded samples that reach an expert holding their class (any try when re-routed;
    # the general model holds every class)
    coverage: float = float("nan")
    expert_calls_per_offload: float = 1.0  # experts asked an offload on the server (above 1: re-routing)


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


@dataclass
class Rerouted:
    """What the server answers each sample under a re-routing rule (contract.reroute), simulated: the answer
    that stands, its confidence, the experts asked, and whether any of them holds the sample's class."""

    pred: np.ndarray
    conf: np.ndarray
    calls: np.ndarray  # experts asked (0 where kept)
    covered: np.ndarray  # bool: an expert asked holds the class


def chains(decision, rule: Reroute, experts: int) -> np.ndarray:
    """``[N, T]`` expert indices each offloaded sample is asked of, in order (``experts`` stands for the general
    model; -1: no try), as the server builds them (:meth:`Reroute.chain`)."""
    routed = decision.expert
    if rule.to == "general":
        chain = np.stack([routed, np.full_like(routed, experts)], 1)[:, : rule.tries]
    else:
        chain = decision.ranking[:, : rule.tries].copy()
        chain[:, 0] = routed
    chain[routed < 0] = -1
    return chain


def rerouted_answers(answers: ExpertAnswers, general: ExpertAnswers | None, decision, rule: Reroute,
                     labels: np.ndarray, membership: np.ndarray) -> Rerouted:
    """Every offloaded sample's answer as the server settles it (:func:`askexpert.contract.reroute.settle`,
    vectorised): the first try neither "other" nor under ``rule.below``; else the most confident answer that
    is not "other"; else "other"."""
    experts, n = answers.pred.shape
    if rule.to == "general" and general is None:
        raise ValueError("re-routing to the general model needs its answers (general=...)")
    chain = chains(decision, rule, experts)
    t = chain.shape[1]
    pred = np.full((n, t), OTHER, dtype=np.int64)
    conf = np.zeros((n, t), dtype=np.float32)
    held = np.zeros((n, t), dtype=bool)
    cols = np.arange(n)
    for j in range(t):
        e = chain[:, j]
        mine = (e >= 0) & (e < experts)
        pred[mine, j] = answers.pred[e[mine], cols[mine]]
        conf[mine, j] = answers.conf[e[mine], cols[mine]]
        held[mine, j] = membership[e[mine], labels[mine]] > 0
        if general is not None:
            gen = e == experts
            pred[gen, j], conf[gen, j], held[gen, j] = general.pred[0, gen], general.conf[0, gen], True
    retry = (pred == OTHER) | (conf < np.float32(rule.below)) | (chain < 0)
    passes = ~retry & (chain >= 0)
    first_pass = np.where(passes.any(1), passes.argmax(1), -1)
    calls = np.where(first_pass >= 0, first_pass + 1, (chain >= 0).sum(1))
    asked = np.arange(t)[None, :] < calls[:, None]
    answered = asked & (pred != OTHER)
    best = np.where(answered, conf, -1.0).argmax(1)  # the earliest of the most confident
    stands = np.where(first_pass >= 0, first_pass, np.where(answered.any(1), best, np.maximum(calls - 1, 0)))
    return Rerouted(pred[cols, stands], conf[cols, stands], calls, (held & asked).any(1))


def system_metrics(gen_logits, labels, membership, answers: ExpertAnswers, policy: RoutingPolicy, *,
                   oracle: bool = False, general: ExpertAnswers | None = None) -> SystemMetrics:
    """What the collaborative system achieves on these samples under ``policy``; with ``oracle``, on the
    same offloaded samples with each sent to an expert that holds its true class. Under a re-routing
    policy (``policy.reroute``) the server's tries are simulated (``general``: the general model's answers,
    for re-routing to it)."""
    labels = np.asarray(labels, dtype=np.int64)
    membership = np.asarray(membership, dtype=np.float32)
    d = route(gen_logits, policy, membership)
    if oracle:
        d.expert = oracle_experts(labels, membership, d.offload)
    pred, conf = answers.for_route(d.expert)
    calls = d.offload.astype(np.int64)
    covered = np.zeros(len(labels), dtype=bool)
    covered[d.offload] = membership[d.expert[d.offload], labels[d.offload]] > 0
    if policy.reroute is not None and not oracle:
        r = rerouted_answers(answers, general, d, policy.reroute, labels, membership)
        pred, conf, calls, covered = r.pred, r.conf, r.calls, r.covered
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
        fallback_rate=share(fell_back[off]), coverage=share(covered[off]),
        expert_calls_per_offload=float(calls[off].mean()) if n_off else 0.0,
    )

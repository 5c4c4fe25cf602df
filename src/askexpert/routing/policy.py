"""The routing policy: NumPy arrays in, decisions out, vectorised over a batch.

For every sample the generalist's logits are temperature-scaled; a confidence score (max softmax,
margin or normalised negative entropy) at or above ``tau`` keeps the generalist's answer locally.
Otherwise the generalist's Top-k classes vote with their probabilities for the expert whose class
subset holds the largest share of that mass (ties go to the lowest expert id), and the sample is
offloaded to that expert. When the expert answers, its answer stands unless it says "other" or,
under the ``other-or-less-confident`` rule, it is less confident than the generalist.

NumPy only, no torch: the edge device runs this next to ONNX Runtime. Anything array-like is
accepted (a CPU torch tensor converts without a copy). A router sees one sample at a time on an
edge device, and a dozen NumPy operations on a 10-element row cost a fraction of the same dozen
torch dispatches (benchmarks/topics/routing.md, "Router cost").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from askexpert.contract.confidence import Confidence, rule
from askexpert.contract.labels import OTHER, Fallback
from askexpert.contract.reroute import Reroute
from askexpert.routing.deferral import DeferralModel, base_features, deferral_features


def _confidence(p: np.ndarray, top_p: np.ndarray, kind: str) -> np.ndarray:
    r = rule(kind)  # contract.confidence.RULES
    if r.fitted:
        raise ValueError(f"the {kind} deferral score needs its fitted rule and the experts: route with a "
                         "RoutingPolicy that carries the rule (deferral=...)")
    return r.score(p, top_p)


def confidence_scores(probs, kind: Confidence = "max-prob") -> np.ndarray:
    """Confidence in [0, 1] of each row of ``probs``: higher means more sure."""
    p = np.asarray(probs, dtype=np.float32)
    top = -np.sort(-p, axis=1)[:, :2]
    return np.ascontiguousarray(_confidence(p, top, kind))


def membership_matrix(subsets: list[list[int]], num_classes: int) -> np.ndarray:
    """``[E, C]`` float32 matrix, 1 where class c belongs to expert e's subset."""
    m = np.zeros((len(subsets), num_classes), dtype=np.float32)
    for e, classes in enumerate(subsets):
        m[e, list(classes)] = 1.0
    return m


DEFAULT_K = 3  # Top-k classes that choose the expert: the one default of the edge, build-system, evaluate-system


@dataclass(frozen=True)
class RoutingPolicy:
    tau: float
    k: int = DEFAULT_K
    temperature: float = 1.0
    confidence: Confidence = "max-prob"
    fallback: Fallback = "other"
    deferral: DeferralModel | None = None  # a fitted confidence rule's parameters (routing.deferral)
    reroute: Reroute | None = None  # re-routing on the server (contract.reroute): the decision carries a ranking

    def __post_init__(self) -> None:
        if rule(self.confidence).fitted != (self.deferral is not None):
            raise ValueError(f"confidence {self.confidence!r} and a fitted deferral rule: a fitted rule's confidence "
                             "and its parameters go together, pass both or neither")

    @classmethod
    def from_spec(cls, spec, *, tau: float | None = None, k: int | None = None, temperature: float | None = None,
                  confidence: str | None = None, fallback: str | None = None) -> RoutingPolicy:
        """The policy a bundle's ``routing`` (``contract.schema.RoutingSpec``) describes, with any field given
        here in its place. A learned rule comes with it unless another confidence is given; it reads the top-k
        mass it was fitted at, so it refuses another k."""
        confidence = confidence or spec.confidence
        deferral = None
        if rule(confidence).fitted:
            if spec.deferral is None:
                raise ValueError("this bundle carries no learned deferral rule: build it with --deferral learned")
            deferral = DeferralModel.from_dict(spec.deferral.model_dump())
            if k is not None and k != deferral.k:
                raise ValueError(f"the bundle's learned deferral rule was fitted at k {deferral.k}, not k {k}: run "
                                 f"at k {deferral.k}, or with --confidence max-prob")
        reroute = spec.reroute.rule() if getattr(spec, "reroute", None) is not None else None
        return cls(tau=spec.tau if tau is None else tau, k=spec.k if k is None else k,
                   temperature=spec.temperature if temperature is None else temperature, confidence=confidence,
                   fallback=fallback or spec.fallback, deferral=deferral,
                   reroute=reroute if reroute is not None and reroute.active else None)


@dataclass
class RouteDecision:
    """Per-sample routing of a batch (all arrays ``[N]``)."""

    offload: np.ndarray  # bool: send to an expert
    expert: np.ndarray  # int64 expert id, -1 where kept locally
    confidence: np.ndarray  # float32, the score tau is compared with (the calibrated confidence or the rule's)
    local_pred: np.ndarray  # int64, the generalist's answer
    top_prob: np.ndarray  # float32, the generalist's calibrated probability of its answer
    # [N, E] int64: every expert by falling routing mass (ties: whole probability mass, then the lower id); the
    # first is the routed one. Only under a re-routing policy (None otherwise)
    ranking: np.ndarray | None = None


def _top_classes(p: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` most probable classes of each row, by falling probability (ties: lower id)."""
    if p.shape[1] <= 16:
        return np.argsort(-p, axis=1, kind="stable")[:, :k]
    part = np.argpartition(-p, k - 1, axis=1)[:, :k]  # the k largest, unordered
    keys = np.take_along_axis(p, part, 1)
    rank = np.lexsort((part, -keys), axis=1)  # by probability, then class id
    return np.take_along_axis(part, rank, 1)


class Router:
    """A routing policy bound to an expert membership matrix, ready to route batch after batch."""

    def __init__(self, policy: RoutingPolicy, membership) -> None:
        self.policy = policy
        self.member_t = np.ascontiguousarray(np.asarray(membership, dtype=np.float32).T)  # [C, E]
        if policy.deferral is not None:
            policy.deferral.check(self.member_t.shape[1], self.member_t.shape[0])

    def with_policy(self, policy: RoutingPolicy) -> Router:
        """The same experts under another policy (a controller moved tau)."""
        router = Router.__new__(Router)
        router.policy, router.member_t = policy, self.member_t
        return router

    def route(self, logits) -> RouteDecision:
        """Keep or offload every row of the generalist's ``logits`` ``[N, C]``, and to which expert."""
        z = np.asarray(logits, dtype=np.float32)
        if z.shape[0] == 1:
            return self._route_one(z[0])
        policy = self.policy
        p, order, top_p, mass = self._ranked(z, 2 if policy.deferral is None else 3)
        best = mass.argmax(1)
        if policy.deferral is None:
            conf = _confidence(p, top_p, policy.confidence)
        else:
            routed = mass[np.arange(len(best)), best]
            conf = policy.deferral.score_parts(base_features(p, top_p, routed, min(policy.k, p.shape[1])), best,
                                               order[:, 0])
        offload = conf < policy.tau
        expert = np.where(offload, best, -1).astype(np.int64)
        ranking = self._ranking(p, mass) if policy.reroute is not None else None
        return RouteDecision(offload, expert, np.ascontiguousarray(conf), order[:, 0].astype(np.int64),
                             np.ascontiguousarray(top_p[:, 0]), ranking)

    def _ranking(self, p: np.ndarray, mass: np.ndarray) -> np.ndarray:
        """``[N, E]``: the routed expert (``mass.argmax``) first, then the others by falling routing ``mass``,
        ties (the experts the top-k classes do not reach) by falling whole probability mass, then by id."""
        whole = p @ self.member_t  # [N, E]
        ids = np.broadcast_to(np.arange(mass.shape[1]), mass.shape)
        routed = ids != mass.argmax(1)[:, None]
        return np.lexsort((ids, -whole, -mass, routed), axis=1).astype(np.int64)

    def _ranked(self, z: np.ndarray, least: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The calibrated probabilities ``p``, the top classes and their probabilities (k of them, and at
        least ``least``) and the top-k probability mass each expert's classes hold ``[N, E]``."""
        policy = self.policy
        z = z / np.float32(policy.temperature)
        e = np.exp(z - z.max(1, keepdims=True))
        p = e / e.sum(1, keepdims=True)
        k = min(policy.k, p.shape[1])
        order = _top_classes(p, min(max(k, least), p.shape[1]))
        top_p = np.take_along_axis(p, order, 1)
        # mass[n, e] = the top-k probability held by expert e's classes; argmax takes the lowest id on a tie
        mass = (top_p[:, :k, None] * self.member_t[order[:, :k]]).sum(1)
        return p, order, top_p, mass

    def deferral_inputs(self, logits) -> np.ndarray:
        """The learned rule's features of every row of ``logits`` under this router's temperature and k
        (what :func:`askexpert.routing.deferral.fit_deferral` is fitted on)."""
        p, order, top_p, mass = self._ranked(np.asarray(logits, dtype=np.float32), 3)
        return deferral_features(p, top_p, order[:, 0], mass, min(self.policy.k, p.shape[1]))

    def _route_one(self, z: np.ndarray) -> RouteDecision:
        """The same policy for one row (what an edge streaming one image at a time asks for): the same
        NumPy operations on the same float32 values, in the same order, as :meth:`route` on a batch, so
        the answers are bit-identical; half the calls, as a batch of one pays each call's fixed cost."""
        policy = self.policy
        c = z.shape[0]
        z = z / np.float32(policy.temperature)
        e = np.exp(z - z.max())
        p = e / e.sum()
        k = min(policy.k, c)
        kk = min(max(k, 2 if policy.deferral is None else 3), c)
        if c <= 16:
            order = np.argsort(-p, kind="stable")[:kk]
        else:
            part = np.argpartition(-p, kk - 1)[:kk]
            order = part[np.lexsort((part, -p[part]))]
        top_p = p[order]
        mass = None
        if policy.deferral is None:
            conf = _confidence(p[None], top_p[None], policy.confidence)[0]
            offload = bool(conf < policy.tau)
            if offload or policy.reroute is not None:
                mass = (top_p[:k, None] * self.member_t[order[:k]]).sum(0)
            expert = int(mass.argmax()) if offload else -1
        else:
            mass = (top_p[:k, None] * self.member_t[order[:k]]).sum(0)
            best = int(mass.argmax())
            conf = policy.deferral.score_one(base_features(p, top_p, mass[best], k), best, int(order[0]))
            offload = bool(conf < policy.tau)
            expert = best if offload else -1
        ranking = self._ranking(p[None], mass[None]) if policy.reroute is not None else None
        return RouteDecision(np.array([offload]), np.array([expert], dtype=np.int64),
                             np.array([conf]), np.array([order[0]], dtype=np.int64), top_p[:1].copy(), ranking)


def route(logits, policy: RoutingPolicy, membership) -> RouteDecision:
    """Decide, for every row of the generalist's ``logits`` ``[N, C]``, keep or offload and to which expert."""
    return Router(policy, membership).route(logits)


def finalize(decision: RouteDecision, expert_pred, expert_conf, policy: RoutingPolicy,
             answered=None) -> tuple[np.ndarray, np.ndarray]:
    """Final predictions ``[N]`` and a ``[N]`` bool "fell back to the generalist" flag.

    ``expert_pred`` holds the chosen expert's global class id (``OTHER`` for "not mine") and
    ``expert_conf`` its confidence, for every sample (values of kept samples are ignored).
    ``answered`` marks offloaded samples whose expert did answer (default: all of them); an
    unanswered one (dead server, error) keeps the generalist's answer.
    """
    offload = decision.offload
    if len(offload) == 1:  # one image (the edge's stream): the same rule in scalar arithmetic
        use = bool(offload[0] and (answered is None or answered[0]) and int(expert_pred[0]) != OTHER and (
            policy.fallback != "other-or-less-confident" or
            np.float32(expert_conf[0]) >= decision.confidence[0]))
        final = int(expert_pred[0]) if use else int(decision.local_pred[0])
        return np.array([final], dtype=np.int64), np.array([bool(offload[0]) and not use])
    pred = np.asarray(expert_pred, dtype=np.int64)
    answered_np = offload if answered is None else offload & np.asarray(answered, dtype=bool)
    use_expert = answered_np & (pred != OTHER)
    if policy.fallback == "other-or-less-confident":
        use_expert &= np.asarray(expert_conf, dtype=np.float32) >= decision.confidence
    final = np.where(use_expert, pred, decision.local_pred)
    return final, offload & ~use_expert

"""The edge runner: the generalist over every input, the router, the experts for the unsure ones.

Each input batch goes: generalist -> router -> (for each chosen expert) encode + request -> final
answers. Every sample gets a prediction, whatever happens to the network or the server: when its
expert cannot answer, or answers something invalid (a class it does not have, a confidence that is
not a probability), the generalist's answer stands and the sample is flagged ``degraded``. Every sample also
gets a trace: where its time went (edge compute, encoding, the round trip on the real socket,
emulated link delay, server queue, expert compute) and which route it took.

Two kinds of time are kept apart: the latency an image lived through (its whole batch's compute,
``edge_ms`` / ``expert_ms``) and the share of a cost it is charged (the batch's compute divided
by the images in it, ``edge_share_ms`` / ``expert_share_ms``), so energy is right at any batch size.

NumPy and httpx only: no torch, so the deployable edge (ONNX Runtime) runs exactly this code.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from enum import Enum
from typing import Protocol

import numpy as np

from askexpert.contract.labels import GENERAL
from askexpert.contract.protocol import ExpertInfo
from askexpert.routing import ALL, OTHER, Router, RoutingPolicy, finalize, membership_matrix
from askexpert.routing.metrics import share
from askexpert.runtime.clients import ExpertReply, ExpertUnavailable
from askexpert.runtime.control import Controller, Observation
from askexpert.runtime.link import LinkSchedule

log = logging.getLogger("askexpert.edge")


class Route(str, Enum):
    """Where a sample's answer came from."""

    LOCAL = "local"  # the generalist was sure enough
    EXPERT = "expert"  # offloaded; the expert's answer stands
    EXPERT_FALLBACK = "expert-fallback"  # offloaded; the expert said "other" (or was less sure): generalist's answer
    DEGRADED = "degraded"  # offloaded but no expert answered: generalist's answer, flagged

    @property
    def offloaded(self) -> bool:
        return self is not Route.LOCAL


class EdgeModel(Protocol):
    backend: str
    class_names: list[str]

    def logits(self, images: np.ndarray) -> np.ndarray: ...


class ExpertClient(Protocol):
    def infer(self, expert_id: str, images: np.ndarray) -> ExpertReply:
        """(A client that re-routes also takes ``ranking``: the generalist's ranking of the other experts.)"""

    def experts(self) -> list[ExpertInfo]: ...


@dataclass(frozen=True)
class ExpertTarget:
    """An expert the router can choose: its id on the server and the class ids it knows."""

    id: str
    classes: list[int]


@dataclass(frozen=True)
class OffloadTiming:
    """What one offloaded image lived through on its way to an expert and back, and its share of the
    request's bytes and of the expert batch's compute."""

    encode_ms: float = 0.0
    network_ms: float = 0.0  # round trip on the socket minus the server's own time
    link_ms: float = 0.0  # emulated link delay
    queue_ms: float = 0.0
    expert_ms: float = 0.0  # the expert's time for the batch this image ran in (latency lived)
    expert_share_ms: float = 0.0  # this image's share of that batch's compute (cost)
    expert_on_edge: bool = False  # the expert ran on the edge device itself (edge execution)
    up_bytes: float = 0.0
    down_bytes: float = 0.0

    @classmethod
    def of(cls, reply: ExpertReply, images: int, *, on_edge: bool) -> OffloadTiming:
        """Each of the ``images`` images of one answered request."""
        server_ms = reply.queue_ms + reply.compute_ms
        return cls(reply.encode_ms, max(reply.round_trip_ms - server_ms, 0.0), reply.link_ms, reply.queue_ms,
                   reply.compute_ms, reply.compute_ms / max(reply.batch_size, 1), on_edge,
                   reply.up_bytes / images, reply.down_bytes / images)

    @classmethod
    def of_tries(cls, reply: ExpertReply, *, on_edge: bool) -> list[OffloadTiming]:
        """Each image of one re-routed request: its tries' model time summed (latency lived, and each try's
        share of its batch: the energy of every expert asked); the time it waited for the other images of
        its request counts as queueing."""
        n = len(reply.tries)
        server = [sum(t.queue_ms + t.compute_ms for t in tries) for tries in reply.tries]
        network = max(reply.round_trip_ms - max(server), 0.0)
        out = []
        for tries in reply.tries:
            compute = sum(t.compute_ms for t in tries)
            out.append(cls(reply.encode_ms, network, reply.link_ms, max(server) - compute, compute,
                           sum(t.compute_ms / max(t.batch_size, 1) for t in tries), on_edge,
                           reply.up_bytes / n, reply.down_bytes / n))
        return out


class _Offloads:
    """What the experts answered for one batch: per image the answer, its confidence, whether it is a valid
    answer, the timing of its request, and why it got none."""

    def __init__(self, n: int) -> None:
        self.pred = np.full(n, OTHER, dtype=np.int64)
        self.conf = np.zeros(n, dtype=np.float32)
        self.answered = np.zeros(n, dtype=bool)
        self.ranked: dict[int, dict[int, float]] = {}  # the expert's top outputs and their probabilities
        self.answered_by: dict[int, str] = {}  # a re-routed image: the expert whose answer stands
        self.tries: dict[int, int] = {}  # a re-routed image: the experts asked
        self.timing: dict[int, OffloadTiming] = {}
        self.errors: dict[int, str] = {}


@dataclass
class SampleTrace:
    index: int
    label: int | None
    pred: int
    local_pred: int
    confidence: float
    route: Route
    expert: str | None
    degraded: bool
    edge_ms: float  # the generalist's time for the batch this image was in (latency lived)
    edge_share_ms: float = 0.0  # this image's share of it (cost)
    encode_ms: float = 0.0
    network_ms: float = 0.0  # round trip on the socket minus the server's own time
    link_ms: float = 0.0
    queue_ms: float = 0.0
    expert_ms: float = 0.0  # the expert's time for the batch this image ran in (latency lived)
    expert_share_ms: float = 0.0  # this image's share of that batch's compute (cost)
    expert_on_edge: bool = False  # the expert ran on the edge device itself (edge execution)
    total_ms: float = 0.0
    up_bytes: float = 0.0  # this sample's share of its request's bytes
    down_bytes: float = 0.0
    error: str | None = None
    tau: float | None = None  # the threshold in force for this image
    tau_why: str | None = None  # why it last changed ("fixed": no controller)
    link: str | None = None  # the emulated link in force (a schedule's entry)
    top_prob: float | None = None  # the generalist's calibrated probability of its own answer
    probe: bool = False  # kept by the rule, offloaded at random to check the kept answers (--target-accuracy)
    # the answering expert's probability that the generalist's answer is right (None: no expert answered, or
    # the answer is not one of its classes, or the client gave no probabilities)
    expert_backs: float | None = None
    answered_by: str | None = None  # the expert whose answer came back (re-routing: maybe not the routed one)
    tries: int = 0  # experts asked on the server (1 without re-routing; 0: kept, or no answer)

    def lived(self, t: OffloadTiming) -> None:
        """Take the timing of the offload this image went through."""
        self.encode_ms, self.network_ms, self.link_ms, self.queue_ms = t.encode_ms, t.network_ms, t.link_ms, t.queue_ms
        self.expert_ms, self.expert_share_ms, self.expert_on_edge = t.expert_ms, t.expert_share_ms, t.expert_on_edge
        self.up_bytes, self.down_bytes = t.up_bytes, t.down_bytes

    def finish(self) -> SampleTrace:
        self.total_ms = self.edge_ms + self.encode_ms + self.network_ms + self.link_ms + self.queue_ms + self.expert_ms
        return self


def targets_from_infos(infos: list[ExpertInfo]) -> list[ExpertTarget]:
    """The specialists a server offers (the general model, without "other", is not routed to)."""
    return [ExpertTarget(x.id, list(x.classes)) for x in infos if x.has_other]


class EdgeRunner:
    """Runs the generalist, routes, asks the experts. ``experts`` lists the experts the router may
    choose (from a bundle's ``system.json``); when it is not given it is fetched from the server, and
    while the server cannot be reached the unsure samples keep the generalist's answer, flagged degraded."""

    def __init__(self, generalist: EdgeModel, policy: RoutingPolicy, client: ExpertClient | None,
                 experts: list[ExpertTarget] | None = None, *, experts_on_edge: bool = False,
                 controller: Controller | None = None, link: LinkSchedule | None = None) -> None:
        """``controller`` moves tau as the run goes (:mod:`askexpert.runtime.control`); ``link`` is the
        schedule of the emulated link the client adds, moved to each batch's first image."""
        self.generalist, self.policy, self.client = generalist, policy, client
        self.experts_on_edge = experts_on_edge
        self.controller, self.link = controller, link
        self.router: Router | None = None
        self.expert_ids: list[str] = []
        self.expert_classes: list[set[int]] = []
        # per expert (several servers may hold them): (first image of its outage, degraded answers since)
        self.outages: dict[str, tuple[int, int]] = {}
        self.invalid_answers = 0
        self._list_retry_at = 0.0  # when the expert list may be asked for again after a failure
        self._list_error = "no expert list yet"
        if experts is not None:
            if not experts:
                raise ValueError("no specialist experts to route to")
            self._set_experts(experts)

    def _server_failed(self, who: str, index: int, n: int, why: str) -> None:
        """Say once that a server (or, when no one server is to blame, an expert) stopped answering; count
        what degrades meanwhile."""
        if who not in self.outages:
            self.outages[who] = (index, 0)
            log.warning("%s stopped answering at image %d (%s): the generalist's answers stand, flagged degraded, "
                        "until it is back; retrying on later offloads", who, index, why)
        first, lost = self.outages[who]
        self.outages[who] = (first, lost + n)

    def _server_answered(self, who: str, index: int) -> None:
        """Say once that a server (or an expert) answers again, and what its outage cost."""
        if who in self.outages:
            first, lost = self.outages.pop(who)
            log.warning("%s answers again at image %d; %d answers from image %d on were degraded (the "
                        "generalist's)", who, index, lost, first)

    def _set_experts(self, experts: list[ExpertTarget]) -> None:
        self.expert_ids = [x.id for x in experts]
        self.expert_classes = [set(x.classes) for x in experts]
        self.router = Router(self.policy, membership_matrix([x.classes for x in experts],
                                                            len(self.generalist.class_names)))

    def _ensure_experts(self) -> str | None:
        """Fetch the expert list if it is not known yet; returns why it is unknown, or None. After a
        failure the list is asked for again at most once a second."""
        if self.router is not None:
            return None
        if self.client is None:
            return "no expert server configured"
        if time.monotonic() < self._list_retry_at:
            return self._list_error
        self._list_retry_at = time.monotonic() + 1.0
        try:
            infos = self.client.experts()
        except ExpertUnavailable as err:
            self._list_error = f"expert list unavailable: {err}"
            return self._list_error
        n = len(self.generalist.class_names)
        targets = [t for t in targets_from_infos(infos) if t.classes and all(0 <= c < n for c in t.classes)]
        if not targets:
            self._list_error = (f"the server lists no specialist expert of this generalist's {n} classes "
                                f"({len(infos)} experts, none with 'other' and valid classes)")
            return self._list_error
        self._set_experts(targets)
        return None

    def _classes_of(self, expert_id: str) -> set[int] | range | None:
        """The classes expert ``expert_id`` may answer (the general model: all), None for one not routed to."""
        if expert_id == GENERAL:
            return range(len(self.generalist.class_names))
        return self.expert_classes[self.expert_ids.index(expert_id)] if expert_id in self.expert_ids else None

    def _check_answers(self, e: int, reply: ExpertReply, idx: np.ndarray, start_index: int,
                       errors: dict[int, str]) -> np.ndarray:
        """Which answers of expert ``e`` (or, re-routed, of the expert that answered) are valid: a class of
        its own or 'other', a finite confidence in [0, 1]. The invalid ones are recorded in ``errors`` (said
        once a run in the log)."""
        by = reply.answered_by or [self.expert_ids[e]] * len(reply.pred)
        allowed = [self._classes_of(x) for x in by]
        ok = np.array([(p == OTHER or (cl is not None and int(p) in cl)) and math.isfinite(c) and -1e-6 <= c <= 1 + 1e-6
                       for p, c, cl in zip(reply.pred.tolist(), reply.confidence.tolist(), allowed, strict=True)],
                      dtype=bool)
        for j in np.flatnonzero(~ok):
            why = (f"expert {by[j]} answered class {int(reply.pred[j])} with confidence "
                   f"{float(reply.confidence[j])}: not one of its classes or not a probability")
            errors[idx[j]] = why
            if not self.invalid_answers:
                log.warning("%s (image %d); such answers are not used: the generalist's stands, flagged degraded",
                            why, start_index + int(idx[j]))
            self.invalid_answers += 1
        return ok

    def process(self, images: np.ndarray, labels: np.ndarray | None = None, start_index: int = 0) -> list[SampleTrace]:
        """Answer one batch of ``uint8 [B, C, H, W]`` images; returns one trace per image."""
        n = len(images)
        if self.link is not None:
            self.link.at(start_index)
        if self.controller is not None and self.controller.tau != self.policy.tau:
            self.policy = replace(self.policy, tau=self.controller.tau)
            if self.router is not None:
                self.router = self.router.with_policy(self.policy)
        t0 = time.perf_counter()
        logits = self.generalist.logits(images)
        edge_ms = (time.perf_counter() - t0) * 1000  # every sample of the batch waits for all of it
        unknown = self._ensure_experts()
        router = self.router or Router(self.policy, np.ones((1, len(self.generalist.class_names)), np.float32))
        decision = router.route(logits)
        probe = self._probes(decision, logits, start_index)
        asked = _Offloads(n)
        expert = decision.expert
        for e, ranking, idx in self._requests(decision):
            if unknown is not None or self.client is None:
                why = unknown or "no expert server configured"
                asked.errors.update((i, why) for i in idx)
                if self.client is not None:
                    self._server_failed("the expert server", start_index + int(idx[0]), len(idx), why)
            else:
                self._offload(e, images, idx, start_index, asked, ranking)
        final, fell_back = finalize(decision, asked.pred, asked.conf, self.policy, answered=asked.answered)
        traces = []
        for i in range(n):
            t = SampleTrace(index=start_index + i, label=None if labels is None else int(labels[i]),
                            pred=int(final[i]), local_pred=int(decision.local_pred[i]),
                            confidence=float(decision.confidence[i]), route=Route.LOCAL, expert=None,
                            degraded=False, edge_ms=edge_ms, edge_share_ms=edge_ms / n,
                            top_prob=float(decision.top_prob[i]), probe=bool(probe[i]))
            if decision.offload[i]:
                t.expert = self.expert_ids[expert[i]] if unknown is None else None
                if not asked.answered[i]:
                    t.route, t.degraded, t.error = Route.DEGRADED, True, asked.errors.get(i)
                else:
                    t.route = Route.EXPERT_FALLBACK if fell_back[i] else Route.EXPERT
                    t.answered_by, t.tries = asked.answered_by.get(i, t.expert), asked.tries.get(i, 1)
                    if t.answered_by == t.expert:
                        t.expert_backs = self._backs(int(expert[i]), asked.ranked.get(i), t.local_pred)
                t.lived(asked.timing.get(i, OffloadTiming()))
            t.tau, t.tau_why = self.policy.tau, self.controller.why if self.controller is not None else "fixed"
            t.link = self.link.name if self.link is not None else None
            traces.append(t.finish())
        if self.controller is not None:
            for t in traces:
                self.controller.observe(Observation.of(t))
        return traces

    def _probes(self, decision, logits: np.ndarray, start_index: int) -> np.ndarray:
        """The kept images the controller sends to their routed expert anyway (``probe``: a check on the
        answers the edge keeps, :class:`askexpert.runtime.control.AccuracyKeeper`); marked offloaded in
        ``decision``."""
        pick = getattr(self.controller, "probes", None)
        if pick is None or self.router is None:
            return np.zeros(len(decision.offload), dtype=bool)
        probe = pick(start_index, ~decision.offload)
        if probe.any():
            idx = np.flatnonzero(probe)
            routed = self.router.with_policy(replace(self.policy, tau=ALL)).route(logits[idx])
            decision.offload[idx], decision.expert[idx] = True, routed.expert
        return probe

    def _backs(self, e: int, ranked: dict[int, float] | None, local_pred: int) -> float | None:
        """Expert ``e``'s probability for the generalist's answer (0 outside its top outputs): a soft label of
        whether that answer is right. None for an answer that is not one of the expert's classes (its "other"
        covers it and many more) or a reply without probabilities."""
        if ranked is None or local_pred not in self.expert_classes[e]:
            return None
        return float(ranked.get(local_pred, 0.0))

    def _requests(self, decision) -> list[tuple[int, list[str] | None, np.ndarray]]:
        """The requests a batch's offloads make: (routed expert, the ranking of the others sent with it
        under a re-routing policy, else None; the images), one per expert and ranking."""
        expert, rule = decision.expert, self.policy.reroute
        if rule is None or decision.ranking is None or self.router is None:
            return [(int(e), None, np.flatnonzero(expert == e)) for e in np.unique(expert[expert >= 0])]
        groups: dict[tuple[int, tuple[str, ...]], list[int]] = {}
        for i in np.flatnonzero(expert >= 0):
            rest = () if rule.to == "general" else \
                tuple(self.expert_ids[j] for j in decision.ranking[i][1:rule.tries])
            groups.setdefault((int(expert[i]), rest), []).append(int(i))
        return [(e, list(rest), np.array(idx)) for (e, rest), idx in groups.items()]

    def _offload(self, e: int, images: np.ndarray, idx: np.ndarray, start_index: int, asked: _Offloads,
                 ranking: list[str] | None = None) -> None:
        """Ask expert ``e`` about the images ``idx`` of the batch (with the ranking of the others, for a
        server that re-routes); its valid answers, the time each image lived through and any failure go
        into ``asked``."""
        t_ask = time.perf_counter()
        try:
            reply = self.client.infer(self.expert_ids[e], images[idx]) if ranking is None else \
                self.client.infer(self.expert_ids[e], images[idx], ranking)
            if len(reply.pred) != len(idx) or len(reply.confidence) != len(idx):
                raise ExpertUnavailable(f"expert {self.expert_ids[e]} answered {len(reply.pred)} results for "
                                        f"{len(idx)} images")
        except ExpertUnavailable as err:
            lost = OffloadTiming(network_ms=(time.perf_counter() - t_ask) * 1000)  # time spent failing is latency
            for i in idx:
                asked.errors[i] = str(err)
                asked.timing[i] = lost
            who = f"the expert server {err.server}" if err.server else f"expert {self.expert_ids[e]}"
            self._server_failed(who, start_index + int(idx[0]), len(idx), str(err))
            return
        for who in ("the expert server", f"the expert server {reply.server}", f"expert {self.expert_ids[e]}"):
            self._server_answered(who, start_index + int(idx[0]))
        valid = self._check_answers(e, reply, idx, start_index, asked.errors)
        asked.pred[idx[valid]], asked.conf[idx[valid]], asked.answered[idx[valid]] = (
            reply.pred[valid], reply.confidence[valid], True)
        if reply.ranked is not None and len(reply.ranked) == len(idx):
            asked.ranked.update((int(idx[j]), reply.ranked[j]) for j in np.flatnonzero(valid))
        if reply.tries is not None and len(reply.tries) == len(idx):
            for j, (i, lived) in enumerate(zip(idx, OffloadTiming.of_tries(reply, on_edge=self.experts_on_edge),
                                               strict=True)):
                asked.timing[i], asked.tries[i], asked.answered_by[i] = lived, len(reply.tries[j]), reply.answered_by[j]
            return
        lived = OffloadTiming.of(reply, len(idx), on_edge=self.experts_on_edge)
        for i in idx:
            asked.timing[i] = lived

    def run(self, batches: Iterable[tuple[np.ndarray, np.ndarray | None]], *, start_index: int = 0,
            on_batch: Callable[[list[SampleTrace]], None] | None = None, progress=None,
            task=None) -> Iterator[SampleTrace]:
        """Answer every batch (the first image being input ``start_index``), handing each batch's traces
        to ``on_batch`` (e.g. :class:`~askexpert.runtime.records.AnswerLog`) as soon as it is answered."""
        index = start_index
        for images, labels in batches:
            traces = self.process(images, labels, index)
            index += len(traces)
            if on_batch is not None:
                on_batch(traces)
            yield from traces
            if progress is not None:
                progress.advance(task, len(traces))


BREAKDOWN = ("edge_ms", "encode_ms", "network_ms", "link_ms", "queue_ms", "expert_ms")


@dataclass
class Latency:
    p50: float
    p95: float
    mean: float


@dataclass
class EdgeSummary:
    """What a stream of traces adds up to. Accuracies are percentages, None without labels."""

    samples: int
    offload_rate: float
    degraded: int
    expert_fallbacks: int
    latency_ms: Latency
    breakdown_ms_all: dict[str, float]
    breakdown_ms_offloaded: dict[str, float]
    accuracy: float | None = None
    generalist_accuracy: float | None = None
    offloaded_accuracy: float | None = None
    offloaded_generalist_accuracy: float | None = None
    up_bytes_per_offload: float = 0.0  # mean bytes an offloaded image sent (its share of its request)
    down_bytes_per_offload: float = 0.0
    expert_calls_per_offload: float = 0.0  # experts asked an answered offload (above 1: re-routing)
    rerouted: int = 0  # offloads answered by another expert than the routed one


def summarize(traces: list[SampleTrace]) -> EdgeSummary:
    """Accuracy, offload and degraded rates, latency percentiles and the mean breakdown. Timings are
    over the traces that have them (answers resumed from a predictions file have none)."""
    n = len(traces)
    timed = [t for t in traces if math.isfinite(t.total_ms)]
    total = np.array([t.total_ms for t in timed]) if timed else np.zeros(1)
    offloaded = [t for t in traces if t.route.offloaded]
    offloaded_timed = [t for t in timed if t.route.offloaded]

    def mean(key: str, ts) -> float:
        return float(np.mean([getattr(t, key) for t in ts])) if ts else 0.0

    def pct(ok: list[bool]) -> float | None:
        return share(np.asarray(ok)) if ok else None

    labelled = [t for t in traces if t.label is not None]
    off = [t for t in labelled if t.route.offloaded]
    return EdgeSummary(
        samples=n, offload_rate=100 * len(offloaded) / n if n else 0.0,
        degraded=sum(t.degraded for t in traces),
        expert_fallbacks=sum(t.route is Route.EXPERT_FALLBACK for t in traces),
        latency_ms=Latency(float(np.percentile(total, 50)), float(np.percentile(total, 95)), float(total.mean())),
        breakdown_ms_all={k: mean(k, timed) for k in BREAKDOWN},
        breakdown_ms_offloaded={k: mean(k, offloaded_timed) for k in BREAKDOWN},
        accuracy=pct([t.pred == t.label for t in labelled]),
        generalist_accuracy=pct([t.local_pred == t.label for t in labelled]),
        offloaded_accuracy=pct([t.pred == t.label for t in off]),
        offloaded_generalist_accuracy=pct([t.local_pred == t.label for t in off]),
        up_bytes_per_offload=mean("up_bytes", offloaded), down_bytes_per_offload=mean("down_bytes", offloaded),
        expert_calls_per_offload=mean("tries", [t for t in offloaded if t.tries]),
        rerouted=sum(t.answered_by is not None and t.answered_by != t.expert for t in offloaded),
    )

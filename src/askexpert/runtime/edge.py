"""The edge runner: the generalist over every input, the router, the experts for the unsure ones.

Each input batch goes: generalist -> router -> (for each chosen expert) encode + request -> final
answers. Every sample gets a prediction, whatever happens to the network: when its expert cannot
answer, the generalist's answer stands and the sample is flagged ``degraded``. Every sample also
gets a trace: where its time went (edge compute, encoding, the round trip on the real socket,
emulated link delay, server queue, expert compute) and which route it took.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from askexpert.routing import OTHER, Router, RoutingPolicy, finalize, membership_matrix
from askexpert.runtime.clients import ExpertReply, ExpertUnavailable
from askexpert.runtime.protocol import ExpertInfo


class EdgeModel(Protocol):
    backend: str
    class_names: list[str]

    def logits(self, images: np.ndarray) -> torch.Tensor: ...


class ExpertClient(Protocol):
    def infer(self, expert_id: str, images: np.ndarray) -> ExpertReply: ...

    def experts(self) -> list[ExpertInfo]: ...


@dataclass
class SampleTrace:
    index: int
    label: int | None
    pred: int
    local_pred: int
    confidence: float
    route: str  # "local", "expert", "expert-fallback" (expert said other / less sure) or "degraded"
    expert: str | None
    degraded: bool
    edge_ms: float
    encode_ms: float = 0.0
    network_ms: float = 0.0  # round trip on the socket minus the server's own time
    link_ms: float = 0.0
    queue_ms: float = 0.0
    expert_ms: float = 0.0
    total_ms: float = 0.0
    server_share_ms: float = 0.0  # this sample's share of its server batch's compute (for energy)
    up_bytes: float = 0.0  # this sample's share of its request's bytes
    down_bytes: float = 0.0
    error: str | None = None


class EdgeRunner:
    """Runs the generalist, routes, asks the experts. ``experts`` lists the server's experts (their
    class subsets drive the routing); when it is not given it is fetched from the server, and while
    the server cannot be reached the unsure samples keep the generalist's answer, flagged degraded."""

    def __init__(self, generalist: EdgeModel, policy: RoutingPolicy, client: ExpertClient | None,
                 experts: list[ExpertInfo] | None = None) -> None:
        self.generalist, self.policy, self.client = generalist, policy, client
        self.router: Router | None = None
        self.expert_ids: list[str] = []
        if experts is not None:
            self._set_experts(experts)

    def _set_experts(self, experts: list[ExpertInfo]) -> None:
        specialists = [x for x in experts if x.has_other]  # the general model (no "other") is not routed to
        if not specialists:
            raise ValueError("the server offers no specialist experts")
        self.expert_ids = [x.id for x in specialists]
        subsets = [x.classes for x in specialists]
        self.router = Router(self.policy, membership_matrix(subsets, len(self.generalist.class_names)))

    def _ensure_experts(self) -> str | None:
        """Fetch the expert list if it is not known yet; returns why it is unknown, or None."""
        if self.router is not None:
            return None
        if self.client is None:
            return "no expert server configured"
        try:
            self._set_experts(self.client.experts())
        except ExpertUnavailable as err:
            return f"expert list unavailable: {err}"
        return None

    def process(self, images: np.ndarray, labels: np.ndarray | None = None, start_index: int = 0) -> list[SampleTrace]:
        """Answer one batch of ``uint8 [B, C, H, W]`` images; returns one trace per image."""
        t0 = time.perf_counter()
        logits = self.generalist.logits(images)
        edge_ms = (time.perf_counter() - t0) * 1000  # every sample of the batch waits for all of it
        unknown = self._ensure_experts()
        router = self.router or Router(self.policy, torch.ones(1, len(self.generalist.class_names)))
        decision = router.route(logits)
        n = len(images)
        expert_pred = np.full(n, OTHER, dtype=np.int64)
        expert_conf = np.zeros(n, dtype=np.float32)
        answered = np.zeros(n, dtype=bool)
        per_sample: dict[int, dict] = {}
        errors: dict[int, str] = {}
        expert = decision.expert.numpy()
        for e in np.unique(expert[expert >= 0]):
            idx = np.flatnonzero(expert == e)
            if unknown is not None or self.client is None:
                for i in idx:
                    errors[i] = unknown or "no expert server configured"
                continue
            t_ask = time.perf_counter()
            try:
                reply = self.client.infer(self.expert_ids[e], images[idx])
            except ExpertUnavailable as err:
                lost = {"network_ms": (time.perf_counter() - t_ask) * 1000}  # time spent failing is latency too
                for i in idx:
                    errors[i] = str(err)
                    per_sample[i] = lost
                continue
            expert_pred[idx], expert_conf[idx], answered[idx] = reply.pred, reply.confidence, True
            server_ms = reply.queue_ms + reply.compute_ms
            # the latency each sample of the request lived through (not shares of a cost)
            lived = {"encode_ms": reply.encode_ms, "queue_ms": reply.queue_ms, "expert_ms": reply.compute_ms,
                     "network_ms": max(reply.round_trip_ms - server_ms, 0.0), "link_ms": reply.link_ms,
                     "server_share_ms": reply.compute_ms / max(reply.batch_size, 1),
                     "up_bytes": reply.up_bytes / len(idx), "down_bytes": reply.down_bytes / len(idx)}
            for i in idx:
                per_sample[i] = lived
        final, fell_back = finalize(decision, torch.from_numpy(expert_pred), torch.from_numpy(expert_conf),
                                    self.policy, answered=torch.from_numpy(answered))
        final, fell_back = final.numpy(), fell_back.numpy()
        local = decision.local_pred.numpy()
        conf = decision.confidence.numpy()
        offload = decision.offload.numpy()
        traces = []
        for i in range(n):
            t = SampleTrace(index=start_index + i, label=None if labels is None else int(labels[i]),
                            pred=int(final[i]), local_pred=int(local[i]), confidence=float(conf[i]),
                            route="local", expert=None, degraded=False, edge_ms=edge_ms)
            if offload[i]:
                t.expert = self.expert_ids[expert[i]] if unknown is None else None
                if not answered[i]:
                    t.route, t.degraded, t.error = "degraded", True, errors.get(i)
                else:
                    t.route = "expert-fallback" if fell_back[i] else "expert"
                for key, value in per_sample.get(i, {}).items():
                    setattr(t, key, value)
            t.total_ms = t.edge_ms + t.encode_ms + t.network_ms + t.link_ms + t.queue_ms + t.expert_ms
            traces.append(t)
        return traces

    def run(self, batches: Iterable[tuple[np.ndarray, np.ndarray | None]], *, trace_path: Path | None = None,
            progress=None, task=None) -> Iterator[SampleTrace]:
        """Answer every batch, writing one JSON line per sample to ``trace_path`` when given."""
        handle = open(trace_path, "w") if trace_path is not None else None  # noqa: SIM115 (closed below)
        index = 0
        try:
            for images, labels in batches:
                traces = self.process(images, labels, index)
                index += len(traces)
                for t in traces:
                    if handle is not None:
                        handle.write(json.dumps(asdict(t)) + "\n")
                    yield t
                if progress is not None:
                    progress.advance(task, len(traces))
        finally:
            if handle is not None:
                handle.close()


def summarize(traces: list[SampleTrace]) -> dict:
    """Accuracy, offload and degraded rates, latency percentiles and the mean breakdown."""
    n = len(traces)
    labelled = [t for t in traces if t.label is not None]
    total = np.array([t.total_ms for t in traces])
    offloaded = [t for t in traces if t.route != "local"]

    def mean(key: str, ts) -> float:
        return float(np.mean([getattr(t, key) for t in ts])) if ts else 0.0

    out = {
        "samples": n,
        "offload_rate": 100 * len(offloaded) / n if n else 0.0,
        "degraded": sum(t.degraded for t in traces),
        "expert_fallbacks": sum(t.route == "expert-fallback" for t in traces),
        "latency_ms": {"p50": float(np.percentile(total, 50)), "p95": float(np.percentile(total, 95)),
                       "mean": float(total.mean())} if n else {},
        "breakdown_ms_all": {k: mean(k, traces) for k in ("edge_ms", "encode_ms", "network_ms", "link_ms",
                                                           "queue_ms", "expert_ms")},
        "breakdown_ms_offloaded": {k: mean(k, offloaded) for k in ("edge_ms", "encode_ms", "network_ms", "link_ms",
                                                                    "queue_ms", "expert_ms")},
    }
    if labelled:
        out["accuracy"] = 100 * float(np.mean([t.pred == t.label for t in labelled]))
        out["generalist_accuracy"] = 100 * float(np.mean([t.local_pred == t.label for t in labelled]))
        off = [t for t in labelled if t.route != "local"]
        out["offloaded_accuracy"] = 100 * float(np.mean([t.pred == t.label for t in off])) if off else None
        out["offloaded_generalist_accuracy"] = (100 * float(np.mean([t.local_pred == t.label for t in off]))
                                                if off else None)
    return out

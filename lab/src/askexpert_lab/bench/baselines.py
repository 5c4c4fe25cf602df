"""The systems a benchmark compares, all run over the same test images and the same link.

* ``edge-only``: the generalist alone on the edge.
* ``edge-execution``: the generalist and, for the unsure images, the router's expert, both on the
  edge device (the experts exported to ONNX, run where the generalist runs; no network).
* ``edge-general``: the medium general model on the edge for every image (the other reading of
  "edge execution": no generalist, no routing).
* ``full-offload-general``: every image sent to the server's general model (the edge computes nothing).
* ``full-offload-expert``: the generalist picks the expert, then every image goes to it.
* ``collaborative``: the generalist keeps its confident answers and offloads the rest (static or
  progressive experts, over HTTP).

Every system's edge side runs through :func:`run_on_edge`, in the emulated edge's own process when
the bench emulates a device (:mod:`askexpert_lab.testbed.placement`), so the edge computes at the
device's speed and the server at the host's.

Each run yields a :class:`SystemRow`: the summary of its traces plus their energy
(:mod:`askexpert.costs.energy`, the one formula the demo uses too).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from askexpert.contract.codecs import Encoding
from askexpert.contract.labels import GENERAL
from askexpert.contract.protocol import RAW
from askexpert.costs.energy import CostModel, Energy
from askexpert.routing import ALL, RoutingPolicy
from askexpert.runtime.clients import ExpertUnavailable, HttpExpertClient
from askexpert.runtime.edge import (
    EdgeModel,
    EdgeRunner,
    EdgeSummary,
    ExpertTarget,
    Latency,
    OffloadTiming,
    Route,
    SampleTrace,
    summarize,
)
from askexpert.runtime.link import Link
from askexpert.runtime.onnx_model import OnnxGeneralist
from askexpert.runtime.pacing import NO_PACING, Pacer
from askexpert.runtime.settings import Connection
from askexpert_lab.bench.local_experts import LocalExperts, LocalModelSpec

SYSTEMS = ("edge-only", "edge-execution", "edge-general", "full-offload-general", "full-offload-expert",
           "collaborative")
ON_EDGE = ("edge-only", "edge-execution", "edge-general")  # no server involved
WITH_LOCAL_MODELS = ("edge-execution", "edge-general")  # the bundle's experts / general model run on the edge


@dataclass
class SystemRow:
    """One system measured over a set of test images."""

    name: str
    kind: str
    summary: EdgeSummary
    energy: Energy
    experts: str | None = None
    link: str | None = None
    target_offload: float | None = None
    k: int | None = None
    tau: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> SystemRow:
        summary = dict(d["summary"])
        summary["latency_ms"] = Latency(**summary["latency_ms"])
        return cls(**{**d, "summary": EdgeSummary(**summary), "energy": Energy(**d["energy"])})


def full_offload_general(client: HttpExpertClient, batches, start_index: int = 0) -> list[SampleTrace]:
    """Every image to the server's general model; the edge only encodes and sends."""
    traces = []
    index = start_index
    for images, labels in batches:
        t0 = time.perf_counter()
        try:
            reply = client.infer(GENERAL, images)
        except ExpertUnavailable as err:
            for i in range(len(images)):
                traces.append(SampleTrace(index=index + i, label=None if labels is None else int(labels[i]), pred=-1,
                                          local_pred=-1, confidence=0.0, route=Route.DEGRADED, expert=GENERAL,
                                          degraded=True, edge_ms=0.0, error=str(err),
                                          network_ms=(time.perf_counter() - t0) * 1000).finish())
            index += len(images)
            continue
        lived = OffloadTiming.of(reply, len(images), on_edge=False)
        for i in range(len(images)):
            trace = SampleTrace(index=index + i, label=None if labels is None else int(labels[i]),
                                pred=int(reply.pred[i]), local_pred=int(reply.pred[i]),
                                confidence=float(reply.confidence[i]), route=Route.EXPERT, expert=GENERAL,
                                degraded=False, edge_ms=0.0)
            trace.lived(lived)
            traces.append(trace.finish())
        index += len(images)
    return traces


def run_system(kind: str, *, generalist: EdgeModel, policy: RoutingPolicy, experts: list[ExpertTarget],
               images: np.ndarray, labels: np.ndarray, url: str | None = None, local: LocalExperts | None = None,
               link: Link | None = None, timeout_s: float = 10.0, link_sleep: bool = False,
               encoding: Encoding = RAW, pacer: Pacer = NO_PACING) -> list[SampleTrace]:
    """Traces of one system over ``images`` (one image at a time, as an edge device streams them).

    One edge device streams its images one after another, so the emulated link's delay is added to
    each trace (``link_ms``, part of ``total_ms``) without sleeping through it unless ``link_sleep``:
    the latencies are the same and a sweep over slow links does not take minutes of idle waiting.
    ``encoding``: how offloaded images travel (raw bytes by default; PNG, JPEG, WebP). ``pacer``: the
    emulated edge's, for the client's encoding and exchange (the models carry it already).
    """
    batches = ((images[i:i + 1], labels[i:i + 1]) for i in range(len(images)))
    if kind in ("edge-only", "edge-general"):  # one model on the edge for every image, nothing offloaded
        if kind == "edge-only":
            model, never = generalist, replace(policy, tau=0.0)
        else:  # the general model's own confidence (a learned rule reads the generalist's outputs only)
            model = local.model(GENERAL)
            never = RoutingPolicy(tau=0.0, k=policy.k, temperature=1.0,
                                  confidence="max-prob" if policy.deferral else policy.confidence)
        return list(EdgeRunner(model, never, None, experts).run(batches))
    if kind == "edge-execution":
        runner = EdgeRunner(generalist, policy, local, experts, experts_on_edge=True)
        return list(runner.run(batches))
    connection = Connection(timeout_s=timeout_s, link=link, encoding=encoding)
    with HttpExpertClient(url, connection, link_sleep=link_sleep, pacer=pacer) as client:
        if kind == "full-offload-general":
            return full_offload_general(client, batches)
        if kind == "full-offload-expert":
            everything = replace(policy, tau=ALL)
            return list(EdgeRunner(generalist, everything, client, experts).run(batches))
        if kind == "collaborative":
            return list(EdgeRunner(generalist, policy, client, experts).run(batches))
    raise ValueError(f"unknown system {kind!r}; one of {SYSTEMS}")


_loaded: dict = {}  # models of this process (the edge's), loaded once


def run_on_edge(kind: str, *, generalist_onnx: Path, local_models: list[LocalModelSpec] | None = None,
                threads: int = 1, pacer: Pacer = NO_PACING, **kwargs) -> list[SampleTrace]:
    """:func:`run_system` from model files, where the edge runs (its models loaded once per process),
    paced by this call's ``pacer`` (an emulated edge's, which recalibration may change between calls;
    :meth:`askexpert_lab.testbed.placement.EmulatedEdge.call` passes it)."""
    key = ("generalist", str(generalist_onnx), threads)
    if key not in _loaded:
        _loaded[key] = OnnxGeneralist(generalist_onnx, threads=threads)
    generalist = _loaded[key]
    generalist.pacer = pacer
    local = None
    if kind in WITH_LOCAL_MODELS:
        lkey = ("local", tuple(local_models or ()), threads)
        if lkey not in _loaded:
            _loaded[lkey] = LocalExperts(list(local_models or ()), threads=threads)
        local = _loaded[lkey]
        for model in local.models.values():
            model.pacer = pacer
    return run_system(kind, generalist=generalist, local=local, pacer=pacer, **kwargs)


def measure(name: str, kind: str, traces: list[SampleTrace], costs: CostModel, **extra) -> SystemRow:
    return SystemRow(name=name, kind=kind, summary=summarize(traces), energy=costs.energy(traces), **extra)

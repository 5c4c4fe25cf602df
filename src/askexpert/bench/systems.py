"""The systems a benchmark compares, all run over the same test images and the same link.

* ``edge-only``: the generalist alone on the edge.
* ``edge-execution``: the generalist and, for the unsure images, the router's expert, both on the
  edge device (in-process; no network).
* ``full-offload-general``: every image sent to the server's general model (the edge computes nothing).
* ``full-offload-expert``: the generalist picks the expert, then every image goes to it.
* ``collaborative``: the generalist keeps its confident answers and offloads the rest (static or
  progressive experts, over HTTP).

Each run yields the summary of its traces plus costs: edge energy (edge compute at the edge
profile's active power, the time spent waiting for offloaded answers at its idle power, plus radio
energy for the bytes moved), server energy (each image's share
of its server batch's compute at the server profile's power, or a measured meter when one exists),
every figure labelled measured or modelled with its source.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from askexpert.costs.profiles import DeviceProfile, NetworkProfile
from askexpert.routing import RoutingPolicy
from askexpert.routing.thresholds import ALL
from askexpert.runtime.clients import ExpertUnavailable, HttpExpertClient, InProcessExpertClient
from askexpert.runtime.edge import EdgeModel, EdgeRunner, SampleTrace, summarize
from askexpert.runtime.link import LinkProfile

SYSTEMS = ("edge-only", "edge-execution", "full-offload-general", "full-offload-expert", "collaborative")


@dataclass
class CostModel:
    edge: DeviceProfile
    server: DeviceProfile
    radio: NetworkProfile

    def costs(self, traces: list[SampleTrace], server_measured_j: float | None = None,
              server_meter: str | None = None) -> dict:
        n = max(len(traces), 1)
        edge_busy_s = sum(t.edge_ms + (t.expert_ms if t.route.startswith("local-expert") else 0.0)
                          for t in traces) / 1000
        moved = sum(t.up_bytes + t.down_bytes for t in traces)
        server_busy_s = sum(t.server_share_ms for t in traces) / 1000
        # while an offload is in flight the edge device stays powered, waiting: idle power x that time
        edge_wait_s = sum(t.network_ms + t.link_ms + t.queue_ms + t.expert_ms for t in traces
                          if not t.route.startswith("local")) / 1000
        edge_compute = self.edge.energy_j(edge_busy_s)
        edge_wait = (self.edge.idle_w or 0.0) * edge_wait_s
        radio = self.radio.energy_j(int(moved))
        wait_text = (f"{self.edge.idle_w} W idle x time waiting for offloads" if self.edge.idle_w
                     else "waiting not counted (no sourced idle power)")
        out = {
            "edge_mj_per_image": 1000 * (edge_compute + edge_wait + radio) / n,
            "edge_compute_mj_per_image": 1000 * edge_compute / n,
            "edge_wait_mj_per_image": 1000 * edge_wait / n,
            "radio_mj_per_image": 1000 * radio / n,
            "edge_energy_kind": "modelled",
            "edge_energy_source": f"{self.edge.name} ({self.edge.active_w} W active) x edge compute time measured "
                                  f"on this host; {wait_text}; {self.radio.name} radio "
                                  f"{self.radio.joules_per_bit:g} J/bit",
            "bytes_per_image": moved / n,
        }
        if server_measured_j is not None:
            out.update(server_mj_per_image=1000 * server_measured_j / n, server_energy_kind="measured",
                       server_energy_source=server_meter)
        else:
            out.update(server_mj_per_image=1000 * self.server.energy_j(server_busy_s) / n,
                       server_energy_kind="modelled",
                       server_energy_source=f"{self.server.name} ({self.server.active_w} W) x each image's share "
                                            f"of its server batch's compute time, measured on this host")
        offloaded = sum(not t.route.startswith("local") for t in traces)
        out["server_mj_per_offloaded_image"] = out["server_mj_per_image"] * n / offloaded if offloaded else 0.0
        out["total_mj_per_image"] = out["edge_mj_per_image"] + out["server_mj_per_image"]
        return out


class _LocalExperts(InProcessExpertClient):
    """Experts run on the edge device itself (edge execution): the same models, no network."""


def _label_local(traces: list[SampleTrace]) -> list[SampleTrace]:
    for t in traces:
        if t.route.startswith("expert"):
            t.route = "local-expert" + t.route[len("expert"):]
            t.server_share_ms = 0.0
    return traces


def full_offload_general(client: HttpExpertClient, batches, start_index: int = 0) -> list[SampleTrace]:
    """Every image to the server's general model; the edge only encodes and sends."""
    traces = []
    index = start_index
    for images, labels in batches:
        t0 = time.perf_counter()
        try:
            reply = client.infer("general", images)
        except ExpertUnavailable as err:
            for i in range(len(images)):
                traces.append(SampleTrace(index=index + i, label=None if labels is None else int(labels[i]), pred=-1,
                                          local_pred=-1, confidence=0.0, route="degraded", expert="general",
                                          degraded=True, edge_ms=0.0, error=str(err),
                                          network_ms=(time.perf_counter() - t0) * 1000))
            index += len(images)
            continue
        server_ms = reply.queue_ms + reply.compute_ms
        for i in range(len(images)):
            t = SampleTrace(index=index + i, label=None if labels is None else int(labels[i]), pred=int(reply.pred[i]),
                            local_pred=int(reply.pred[i]), confidence=float(reply.confidence[i]), route="expert",
                            expert="general", degraded=False, edge_ms=0.0, encode_ms=reply.encode_ms,
                            network_ms=max(reply.round_trip_ms - server_ms, 0.0), link_ms=reply.link_ms,
                            queue_ms=reply.queue_ms, expert_ms=reply.compute_ms,
                            server_share_ms=reply.compute_ms / max(reply.batch_size, 1),
                            up_bytes=reply.up_bytes / len(images), down_bytes=reply.down_bytes / len(images))
            t.total_ms = t.encode_ms + t.network_ms + t.link_ms + t.queue_ms + t.expert_ms
            traces.append(t)
        index += len(images)
    return traces


def run_system(kind: str, *, generalist: EdgeModel, policy: RoutingPolicy, images: np.ndarray,
               labels: np.ndarray, url: str | None = None, local_pool=None, link: LinkProfile | None = None,
               timeout_s: float = 10.0, link_sleep: bool = False) -> list[SampleTrace]:
    """Traces of one system over ``images`` (one image at a time, as an edge device streams them).

    One edge device streams its images one after another, so the emulated link's delay is added to
    each trace (``link_ms``, part of ``total_ms``) without sleeping through it unless ``link_sleep``:
    the latencies are the same and a sweep over slow links does not take minutes of idle waiting.
    """
    batches = ((images[i:i + 1], labels[i:i + 1]) for i in range(len(images)))
    if kind == "edge-only":
        never = RoutingPolicy(tau=0.0, k=policy.k, temperature=policy.temperature, confidence=policy.confidence)
        return list(EdgeRunner(generalist, never, None).run(batches))
    if kind == "edge-execution":
        client = _LocalExperts(local_pool)
        return _label_local(list(EdgeRunner(generalist, policy, client).run(batches)))
    with HttpExpertClient(url, timeout_s=timeout_s, link=link, link_sleep=link_sleep) as client:
        if kind == "full-offload-general":
            return full_offload_general(client, batches)
        if kind == "full-offload-expert":
            everything = RoutingPolicy(tau=ALL, k=policy.k, temperature=policy.temperature,
                                       confidence=policy.confidence, fallback=policy.fallback)
            return list(EdgeRunner(generalist, everything, client).run(batches))
        if kind == "collaborative":
            return list(EdgeRunner(generalist, policy, client).run(batches))
    raise ValueError(f"unknown system {kind!r}; one of {SYSTEMS}")


def result_row(name: str, kind: str, traces: list[SampleTrace], costs: CostModel, **extra) -> dict:
    summary = summarize(traces)
    return {"system": name, "kind": kind, **extra, **summary, **costs.costs(traces)}

"""The cost model's parts, measured on the emulated edge device next to the real server, and a bundle
pointed at the most accurate operating point a budget allows (``build-system --p95-latency``).

:class:`PartsBench` places the edge as ``device`` (:class:`~askexpert_lab.testbed.placement.EmulatedEdge`),
serves the bundle on the other cores (a real ``askexpert serve``), optionally with competing clients
(:class:`~askexpert_lab.testbed.competing.CompetingLoad`: the server's queue at a stated load), and in the edge's
own process streams real images (the bundle's validation split) through the deployed edge's own runner at a
given tau: the generalist's time of every image and each offload's time (encoding, round trip, queue,
compute), per expert, as a run at that point lives them. The point matters under the older kernel-quota
emulation (how fast the generalist runs on a throttled core depends on how often the edge idles waiting for an
offload; benchmarks/topics/operating-points.md, "Operating points that hold"), and the offloads' share of the
server's queue depends on it under any, so :func:`plan_bundle` measures at the bundle's point, chooses
(:mod:`askexpert.costs.plan`), and measures again at the chosen point until the offload share it measured at
is within 5 points of the chosen one (three rounds at most); then it rewrites the bundle's routing there, with
what it predicts. The link's share
is modelled from its round trip and bandwidth and the bytes an offload really moved.
"""

from __future__ import annotations

from contextlib import ExitStack, nullcontext
from dataclasses import replace
from pathlib import Path

import numpy as np

from askexpert.contract.bundle import System, open_system
from askexpert.contract.schema import OperatingPoint
from askexpert.costs.plan import Choice, CostParts, choose
from askexpert.costs.profiles import device as device_profile
from askexpert.costs.profiles import network
from askexpert.errors import AskExpertError, ConfigError
from askexpert.runtime.link import LinkProfile
from askexpert.runtime.pacing import NO_PACING, Pacer
from askexpert_lab.testbed.competing import CompetingLoad
from askexpert_lab.testbed.placement import EmulatedEdge, Placement
from askexpert_lab.testbed.server import ServerProcess

RADIO_OF_LINK = {"wifi": "wifi", "lte": "cellular", "5g": "cellular"}  # the radio profile a link preset uses


def _time_on_edge(system: System, url: str, images: np.ndarray, tau: float, threads: int | None,
                  token: str | None, link: LinkProfile | None = None, min_offloads: int = 30,
                  pacer: Pacer = NO_PACING) -> dict:
    """In the edge's process, the real edge runner over ``images`` at ``tau``, its client waiting out the
    ``link`` as a run does: every image's generalist time and every offload's (without the link's share,
    which the cost model adds), per expert; when fewer than ``min_offloads`` were offloaded, as many more
    images are offloaded after (tau above every confidence) for the offloads' times alone."""
    from askexpert.routing import ALL, RoutingPolicy
    from askexpert.runtime.clients import HttpExpertClient
    from askexpert.runtime.edge import EdgeRunner, ExpertTarget
    from askexpert.runtime.onnx_model import OnnxGeneralist
    from askexpert.runtime.settings import Connection, Security

    b = system  # opened once, in the bench's process
    m, r = b.manifest, b.manifest.routing
    model = OnnxGeneralist(b.generalist_onnx, threads=threads, pacer=pacer)
    targets = [ExpertTarget(e.id, list(e.classes)) for e in m.experts]
    batches = [(images[i:i + 1], None) for i in range(len(images))]

    policy = RoutingPolicy.from_spec(r)

    def runner(at: float, client) -> EdgeRunner:
        return EdgeRunner(model, replace(policy, tau=at), client, targets)

    with HttpExpertClient(url, Connection(timeout_s=10, retries=0, link=link), Security(token=token),
                          system_id=b.system_id, pacer=pacer) as client:
        list(runner(ALL, client).run(batches[:10]))  # warm: the session, the connection, the experts' batchers
        traces = list(runner(tau, client).run(batches))
        sent = [t for t in traces if t.route.offloaded]
        if len(sent) < min_offloads:
            sent += list(runner(ALL, client).run(batches[:min_offloads - len(sent)]))
    failed = sum(t.degraded for t in sent)
    if failed:
        raise AskExpertError(f"the server at {url} failed {failed} of {len(sent)} offloads while the cost model was "
                             "measured", fix="check the server's log, and measure again")
    offload = [[t.encode_ms + t.network_ms + t.queue_ms + t.expert_ms for t in sent if t.expert == e.id]
               for e in m.experts]
    # an expert these images never reached is timed like the others: the same kind of model call on the server
    offload = [o or [x for oo in offload for x in oo] for o in offload]
    return {"edge_ms": [t.edge_ms for t in traces], "offload_ms": offload,
            "offload_rate": 100 * sum(t.route.offloaded for t in traces) / len(traces),
            "up_bytes": int(np.mean([t.up_bytes for t in sent])),
            "down_bytes": int(np.mean([t.down_bytes for t in sent]))}


def validation_images(system: System, limit: int = 1000) -> np.ndarray:
    """A stratified ``limit`` of the system's validation images (the full install: it reads the dataset)."""
    from askexpert.runtime.inputs import open_input

    m = system.manifest
    source = open_input(["split:val"], input_spec=m.input, class_names=m.classes, data=dict(m.data.config),
                        batch_size=256, limit=limit)
    return np.concatenate([images for images, _ in source.batches])


class PartsBench:
    """``with PartsBench(system, device, link) as bench: parts = bench.at(tau, images)``: the edge placed as
    ``device`` (or in the open placement ``edge``), the bundle served on the other cores, ``load`` competing
    clients, held open for as many measurements as asked."""

    def __init__(self, system: System, device: str, link: LinkProfile | None, *, load: int = 0,
                 think_ms: float = 30.0, mode: str = "auto", edge_profile: str | None = None,
                 radio: str | None = None, edge: EmulatedEdge | None = None) -> None:
        self.bundle = system
        self.device, self.link, self.load, self.think_ms = device, link, load, think_ms
        self._edge, self._mode = edge, mode
        self._edge_profile, self._radio = edge_profile, radio
        self._stack = ExitStack()

    def __enter__(self) -> PartsBench:
        m = self.bundle.manifest
        try:
            self.edge = self._stack.enter_context(nullcontext(self._edge) if self._edge is not None
                                                  else EmulatedEdge(self.device, mode=self._mode))
            cpus = self.edge.server_cores if self.edge.profile else None
            self.threads = self.edge.threads
            self.url = self._stack.enter_context(ServerProcess(self.bundle.root, threads=len(cpus) if cpus else 1,
                                                               cpus=cpus, extra_args=["--no-general"]))
            if self.load:
                self._stack.enter_context(CompetingLoad(
                    self.url, clients=self.load, experts=[e.id for e in m.experts],
                    shape=(m.input.channels, m.input.size, m.input.size), think_ms=self.think_ms, cpus=cpus))
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()

    @property
    def placement(self) -> Placement:
        return self.edge.placement

    def at(self, tau: float, images: np.ndarray) -> CostParts:
        """The parts, measured by streaming ``images`` through the edge runner at ``tau``."""
        self.edge.recalibrate("cost model")  # the host's speed drifts: the device's must not
        raw = self.edge.call(_time_on_edge, system=self.bundle, url=self.url, images=images, tau=tau,
                             threads=self.threads, token=None, link=self.link)
        link, load = self.link, self.load
        radio_name = self._radio or (RADIO_OF_LINK.get(link.name) if link is not None else None)
        notes = [f"{len(images)} validation images through the edge runner at tau {tau:.4f} "
                 f"({raw['offload_rate']:.1f}% offloaded) on {self.placement.label}"]
        if load:
            notes.append(f"{load} competing clients on the server, one image each, {self.think_ms:g} ms mean think "
                         "time")
        return CostParts(device=self.device, link=link.describe() if link else "loopback (none)", load=load,
                         edge_ms=tuple(raw["edge_ms"]), offload_ms=tuple(tuple(o) for o in raw["offload_ms"]),
                         link_ms=link.delay_s(raw["up_bytes"], raw["down_bytes"]) * 1000 if link is not None else 0.0,
                         up_bytes=raw["up_bytes"], down_bytes=raw["down_bytes"],
                         edge_profile=device_profile(self._edge_profile or self.edge.energy_profile("raspberry-pi-4")),
                         radio=network(radio_name) if radio_name else None, measured_at=raw["offload_rate"],
                         notes=notes)


def plan_bundle(bundle: Path | System, *, p95_ms: float | None = None, edge_mj: float | None = None,
                device: str = "host", link: LinkProfile | None = None, k: int | None = None,
                images: np.ndarray | None = None, rounds: int = 3, say=None,
                **bench) -> tuple[System, Choice, CostParts, Placement]:
    """Measure the parts at the bundle's point, choose the most accurate point within the budget, measure
    again at the chosen point until the share offloaded while measuring is within 5 points of it (at most
    ``rounds`` rounds, in one placement and one server), and rewrite the bundle's routing there (with the
    prediction). ``images``: what to stream (default: 1,000 of the bundle's validation images). Refuses
    (:class:`ConfigError`) when no point fits."""
    b = open_system(bundle)
    if b.manifest.curve is None:
        raise ConfigError(f"{bundle} has no operating curve (a schema-1 bundle)",
                          fix="build it again with this askexpert: askexpert build-system ...")
    images = validation_images(b) if images is None else images
    tau = b.manifest.routing.tau
    with PartsBench(b, device, link, **bench) as measuring:
        for _ in range(rounds):
            parts = measuring.at(tau, images)
            choice = choose(b.manifest.curve, parts, p95_ms=p95_ms, edge_mj=edge_mj, k=k)
            if say is not None:
                say(f"measured at {parts.measured_at:.1f}% offload: {choice.feasible} of {choice.considered} points "
                    f"fit, the most accurate offloads {choice.point.offload_rate:.1f}% on validation")
            if abs(parts.measured_at - choice.point.offload_rate) <= 5.0:
                break
            tau = choice.point.tau
        placement = measuring.placement
    target, value = ("p95-latency", p95_ms) if p95_ms is not None else ("edge-energy", edge_mj)
    point = OperatingPoint(target=target, value=value, val_offload_rate=choice.point.offload_rate,
                           val_accuracy=choice.point.accuracy, predicted=choice.prediction)
    return b.repoint(tau=choice.point.tau, k=choice.point.k, point=point), choice, parts, placement

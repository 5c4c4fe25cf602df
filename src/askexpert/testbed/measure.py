"""The cost model's parts, measured on the emulated edge device next to the real server, and a bundle
pointed at the most accurate operating point a budget allows (``build-system --p95-latency``).

:func:`measure_parts` places the edge as ``device`` (:class:`~askexpert.testbed.placement.EmulatedEdge`),
serves the bundle on the other cores (a real ``askexpert serve``), optionally with competing clients
(:class:`~askexpert.testbed.load.CompetingLoad`: the server's queue at a stated load), and in the edge's
own process runs the deployed edge's own runner over ``samples`` images twice: every image kept (the
generalist's time, as a stream lives it), then every image offloaded to the expert the router picks
(each offload's encoding, round trip, queue and compute, per expert). The link's share is modelled from its
round trip and bandwidth and the bytes an offload really moved. :func:`plan_bundle` feeds the parts to
the cost model (:mod:`askexpert.costs.plan`) and rewrites the bundle's routing at the chosen point,
with what it predicts.
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import numpy as np

from askexpert.contract.bundle import Bundle, load_bundle, repoint
from askexpert.contract.schema import OperatingPoint
from askexpert.costs.plan import Choice, CostParts, choose
from askexpert.costs.profiles import device as device_profile
from askexpert.costs.profiles import network
from askexpert.errors import AskExpertError, ConfigError
from askexpert.runtime.link import LinkProfile
from askexpert.serving.process import ServerProcess
from askexpert.testbed.load import CompetingLoad
from askexpert.testbed.placement import EmulatedEdge, Placement

RADIO_OF_LINK = {"wifi": "wifi", "lte": "cellular", "5g": "cellular"}  # the radio profile a link preset uses


def _time_on_edge(bundle: str, url: str, samples: int, threads: int | None, token: str | None) -> dict:
    """In the edge's process, the real edge runner over ``samples`` images twice: every image kept (tau 0,
    no server: the generalist's time as a stream of kept images lives it, the router and the bookkeeping
    on the same throttled core), then every image offloaded (tau above every confidence: each offload's
    encoding, round trip, queue and compute, per expert)."""
    from askexpert.routing import ALL, RoutingPolicy
    from askexpert.runtime.clients import HttpExpertClient
    from askexpert.runtime.edge import EdgeRunner, ExpertTarget
    from askexpert.runtime.onnx_model import OnnxGeneralist

    b = load_bundle(bundle, verify=False)
    m = b.manifest
    spec, ids = m.input, [e.id for e in m.experts]
    model = OnnxGeneralist(b.generalist_onnx, threads=threads)
    targets = [ExpertTarget(e.id, list(e.classes)) for e in m.experts]
    images = np.random.default_rng(0).integers(0, 256, (samples, spec.channels, spec.size, spec.size),
                                               dtype=np.uint8)
    batches = [(images[i:i + 1], None) for i in range(samples)]
    r = m.routing
    kept = EdgeRunner(model, RoutingPolicy(tau=0.0, k=r.k, temperature=r.temperature, confidence=r.confidence),
                      None, targets)
    list(kept.run(batches[:10]))  # warm: the session
    edge = [t.edge_ms for t in kept.run(batches)]
    with HttpExpertClient(url, timeout_s=10, retries=0, token=token, system_id=b.system_id) as client:
        sent = EdgeRunner(model, RoutingPolicy(tau=ALL, k=r.k, temperature=r.temperature, confidence=r.confidence),
                          client, targets)
        list(sent.run(batches[:10]))  # warm: the connection, the experts' batchers
        traces = list(sent.run(batches))
    if any(t.degraded for t in traces):
        raise AskExpertError(f"the server at {url} failed {sum(t.degraded for t in traces)} of {samples} offloads "
                             "while the cost model was measured", fix="check the server's log, and measure again")
    offload = [[t.encode_ms + t.network_ms + t.queue_ms + t.expert_ms for t in traces if t.expert == e] for e in ids]
    # an expert the random images never reached is timed like the others: the same model call on the server
    offload = [o or [x for oo in offload for x in oo] for o in offload]
    return {"edge_ms": edge, "offload_ms": offload, "up_bytes": int(np.mean([t.up_bytes for t in traces])),
            "down_bytes": int(np.mean([t.down_bytes for t in traces]))}


def measure_parts(bundle: Path, device: str, link: LinkProfile | None, *, load: int = 0, think_ms: float = 30.0,
                  samples: int = 200, mode: str = "auto", edge_profile: str | None = None,
                  radio: str | None = None, edge: EmulatedEdge | None = None) -> tuple[CostParts, Placement]:
    """The parts of the cost model of ``bundle`` on ``device`` over ``link``, with ``load`` competing clients
    on the server; and where the edge and server were placed. ``edge``: an open placement to measure in
    (the edge then runs in the same one; by default a new one is opened and closed)."""
    b = load_bundle(bundle)
    spec, ids = b.manifest.input, [e.id for e in b.manifest.experts]
    with (nullcontext(edge) if edge is not None else EmulatedEdge(device, mode=mode)) as edge:
        cpus = edge.server_cores if edge.profile else None
        threads = edge.profile.threads if edge.profile else None
        with ServerProcess(b.root, threads=len(cpus) if cpus else 1, cpus=cpus, extra_args=["--no-general"]) as url:
            competing = (CompetingLoad(url, clients=load, experts=ids, shape=(spec.channels, spec.size, spec.size),
                                       think_ms=think_ms, cpus=cpus) if load else nullcontext())
            with competing:
                raw = edge.call(_time_on_edge, bundle=str(b.root), url=url, samples=samples, threads=threads,
                                token=None)
        placement = edge.placement
        energy_name = edge_profile or edge.energy_profile("raspberry-pi-4")
    radio_name = radio or (RADIO_OF_LINK.get(link.name) if link is not None else None)
    notes = [f"{samples} images kept and {samples} offloaded by the edge runner on {placement.label}"]
    if load:
        notes.append(f"{load} competing clients on the server, one image each, {think_ms:g} ms mean think time")
    link_ms = link.delay_s(raw["up_bytes"], raw["down_bytes"]) * 1000 if link is not None else 0.0
    parts = CostParts(device=device, link=link.describe() if link else "loopback (none)", load=load,
                      edge_ms=tuple(raw["edge_ms"]), offload_ms=tuple(tuple(o) for o in raw["offload_ms"]),
                      link_ms=link_ms, up_bytes=raw["up_bytes"], down_bytes=raw["down_bytes"],
                      edge_profile=device_profile(energy_name),
                      radio=network(radio_name) if radio_name else None, notes=notes)
    return parts, placement


def plan_bundle(bundle: Path, *, p95_ms: float | None = None, edge_mj: float | None = None, device: str = "host",
                link: LinkProfile | None = None, k: int | None = None, **measure) -> tuple[Bundle, Choice, CostParts,
                                                                                        Placement]:
    """Measure the parts, choose the most accurate point within the budget, and rewrite the bundle's
    routing there (with the prediction). Refuses (:class:`ConfigError`) when no point fits."""
    b = load_bundle(bundle)
    if b.manifest.curve is None:
        raise ConfigError(f"{bundle} has no operating curve (a schema-1 bundle)",
                          fix="build it again with this askexpert: askexpert build-system ...")
    parts, placement = measure_parts(b.root, device, link, **measure)
    choice = choose(b.manifest.curve, parts, p95_ms=p95_ms, edge_mj=edge_mj, k=k)
    target, value = ("p95-latency", p95_ms) if p95_ms is not None else ("edge-energy", edge_mj)
    point = OperatingPoint(target=target, value=value, val_offload_rate=choice.point.offload_rate,
                           val_accuracy=choice.point.accuracy, predicted=choice.prediction)
    return repoint(b, tau=choice.point.tau, k=choice.point.k, point=point), choice, parts, placement

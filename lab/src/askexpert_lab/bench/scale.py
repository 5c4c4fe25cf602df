"""``askexpert bench --profile paper-scale``: what the system costs at the paper's scale.

A DeiT-Tiny generalist on the emulated edge device (``rpi4``, ``snapdragon-820``; one core of this
host, each model call at the device model's time for it: docs/testbed.md) and DeiT-Small experts and general model on
an expert server pinned to the other core, 224x224x3 images, as a cost bundle
(:mod:`askexpert_lab.bench.cost_bundle`: weights untrained unless files are given; accuracy is not measured
at this scale, the miniature shows it). Per device, over the same natural-photo crops:

* ``edge-only``: DeiT-Tiny for every image;
* ``edge-general``: DeiT-Small on the edge for every image;
* ``edge-execution`` at each offload rate: DeiT-Tiny, and for the offloaded share the routed
  DeiT-Small expert on the edge too (routed edge execution);
* ``full-offload``: every image to the server's general model;
* ``collaborative`` at each offload rate: DeiT-Tiny, the offloaded share to its expert on the server.

Offload rates are set by tau on the generalist's own confidences over these images. Each system's
socket round trip, the server's time and the edge's compute are measured once per device; each link
(wifi, lte, 5g) then adds its delay for the bytes each offload moved, as the edge client accounts it
(:class:`askexpert.runtime.clients.HttpExpertClient` without sleeping), and its radio's energy.
Measurements are cells under ``OUTPUT_DIR/paper-scale/cells-DEVICE``: an interrupted run resumes.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
from rich.console import Console

from askexpert.console import progress_bar
from askexpert.contract.bundle import System, open_system
from askexpert.contract.codecs import Encoding
from askexpert.contract.protocol import RAW
from askexpert.costs.energy import CostModel
from askexpert.costs.profiles import device, network, server_profile_for
from askexpert.devices import on_gpu, where
from askexpert.routing import RoutingPolicy
from askexpert.routing.thresholds import tau_for_offload
from askexpert.runtime.edge import ExpertTarget, Route, SampleTrace, summarize
from askexpert.runtime.link import PRESETS
from askexpert.system.plan import photo_crops
from askexpert_lab.bench.baselines import run_on_edge
from askexpert_lab.bench.cost_bundle import CostSystem, build_cost_bundle, confidences
from askexpert_lab.bench.local_experts import export_edge_models
from askexpert_lab.bench.machine import describe, machine_info
from askexpert_lab.bench.scale_report import write_scale_report
from askexpert_lab.bench.scale_results import H100_DEIT_SMALL_MS, Row, ScaleResult
from askexpert_lab.bench.suite import Cells
from askexpert_lab.testbed.placement import EmulatedEdge, Mode
from askexpert_lab.testbed.server import ServerProcess

RADIO = {"wifi": "wifi", "lte": "cellular", "5g": "cellular"}  # the radio whose J/bit each link is priced at


@dataclass(frozen=True)
class ScaleProfile:
    devices: tuple[str, ...] = ("rpi4", "snapdragon-820")
    links: tuple[str, ...] = ("wifi", "lte", "5g")
    rates: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5)
    headline_rate: float = 0.3
    images: int = 150  # the headline rate's and the baselines' images
    sweep_images: int = 75  # the other rates' (the first of the same images)
    encodings: tuple[str, ...] = ("png", "jpeg:85")  # collaborative at the headline rate and full offload, besides raw
    k: int = 3


@dataclass(frozen=True)
class Cell:
    system: str  # edge-only | edge-general | edge-execution | full-offload | collaborative
    rate: float | None = None
    encoding: str = "raw"

    @property
    def name(self) -> str:
        return self.system + (f"-{self.rate:g}" if self.rate is not None else "") + \
            ("" if self.encoding == "raw" else f"-{self.encoding.replace(':', '')}")


def plan(p: ScaleProfile) -> list[Cell]:
    return ([Cell("edge-only"), Cell("edge-general"), Cell("full-offload")]
            + [Cell(s, r) for r in p.rates for s in ("collaborative", "edge-execution")]
            + [Cell(s, p.headline_rate if s == "collaborative" else None, e) for e in p.encodings
               for s in ("collaborative", "full-offload")])


def _trace_dict(t: SampleTrace) -> dict:
    return {**asdict(t), "route": t.route.value}


def _trace(d: dict) -> SampleTrace:
    return SampleTrace(**{**d, "route": Route(d["route"])})


def on_link(traces: list[SampleTrace], link: str) -> list[SampleTrace]:
    """The traces as they would be on ``link``: each offload's emulated delay for the bytes it moved (the
    client's own accounting), added to its latency."""
    profile = PRESETS[link]
    out = []
    for t in traces:
        sent = t.route.offloaded and not t.expert_on_edge and (t.up_bytes or t.down_bytes)
        link_ms = profile.delay_s(t.up_bytes, t.down_bytes) * 1000 if sent else 0.0
        out.append(replace(t, link_ms=link_ms, link=link if sent else None).finish())
    return out


def gpu_projection(traces: list[SampleTrace], server_ms: float = H100_DEIT_SMALL_MS) -> list[SampleTrace]:
    """The traces with the server's compute replaced by ``server_ms`` an image (a projection, labelled so
    wherever it is shown: the measured H100 figure of DeiT-Small at batch 1, not this run's)."""
    return [replace(t, expert_ms=server_ms, expert_share_ms=server_ms).finish()
            if t.route.offloaded and not t.expert_on_edge else t for t in traces]


def rows_of(device_name: str, cell: Cell, traces: list[SampleTrace], links: tuple[str, ...],
            costs: dict[str, CostModel]) -> list[Row]:
    """One row per link (systems without a server: one row, priced on the first link's radio, which
    they never use)."""
    rows = []
    for link in (links if cell.system in ("full-offload", "collaborative") else (None,)):
        ts = on_link(traces, link) if link else traces
        s = summarize(ts)
        projected = summarize(gpu_projection(ts)).latency_ms if link else None
        rows.append(Row(device_name, cell.system, link, cell.rate, cell.encoding, len(ts), s.offload_rate,
                        s.latency_ms, s.breakdown_ms_offloaded, s.up_bytes_per_offload,
                        costs[link or links[0]].energy(ts), projected))
    return rows


class _Measure:
    def __init__(self, edge: EmulatedEdge, bundle, local_models, images: np.ndarray, conf: np.ndarray,
                 url: str, k: int) -> None:
        self.edge, self.bundle, self.local_models = edge, bundle, local_models
        self.images, self.conf, self.url, self.k = images, conf, url, k
        self.experts = [ExpertTarget(e.id, list(e.classes)) for e in bundle.manifest.experts]

    def run(self, cell: Cell, n: int) -> list[SampleTrace]:
        rate = cell.rate if cell.rate is not None else 0.0
        policy = RoutingPolicy(tau=tau_for_offload(self.conf[:n], rate), k=self.k, temperature=1.0)
        kind = "full-offload-general" if cell.system == "full-offload" else cell.system
        return self.edge.call(run_on_edge, kind=kind, generalist_onnx=self.bundle.generalist_onnx,
                              local_models=self.local_models, policy=policy,
                              threads=self.edge.threads or 1,
                              experts=self.experts, images=self.images[:n], labels=np.zeros(n, dtype=np.int64),
                              url=None if kind.startswith("edge") else self.url, link=None, timeout_s=60.0,
                              encoding=Encoding.parse(cell.encoding) if cell.encoding != "raw" else RAW)


def _cost_bundle(bundle_dir: Path, system: CostSystem, images: np.ndarray, profile: ScaleProfile, fresh: bool,
                 console: Console) -> System:
    """The cost bundle at ``bundle_dir``: built (``fresh``, or none there yet) or opened."""
    if fresh or not (bundle_dir / "system.json").is_file():
        console.log("building the cost bundle (models, ONNX generalist) ...")
        return build_cost_bundle(bundle_dir, system, images, offload=profile.headline_rate, k=profile.k,
                                 overwrite=True)
    return open_system(bundle_dir)


def _cells_on(dev: str, m: _Measure, cells: Cells, cells_plan: list, profile: ScaleProfile, costs: dict,
              console: Console, measured: list[str]) -> list:
    """Every cell of the plan on device ``dev``, measured (or read back from ``cells``), as result rows;
    the cells measured now are named in ``measured``."""
    rows = []
    with progress_bar(console) as progress:
        task = progress.add_task(f"paper scale on {dev}", total=len(cells_plan), info="")
        for cell in cells_plan:
            n = profile.images if cell.rate in (None, profile.headline_rate) else profile.sweep_images
            stored = cells.get(cell.name)
            if stored is None:
                progress.update(task, info=cell.name)
                m.edge.recalibrate(f"{dev}:{cell.name}")
                t0 = time.perf_counter()
                stored = {"traces": [_trace_dict(t) for t in m.run(cell, n)], "seconds": time.perf_counter() - t0}
                cells.put(cell.name, stored)
                measured.append(f"{dev}/{cell.name}")
            rows += rows_of(dev, cell, [_trace(d) for d in stored["traces"]], profile.links, costs)
            progress.advance(task)
    return rows


def run_paper_scale(*, output_dir: Path = Path("runs"), results_dir: Path = Path("results/paper-scale"),
                    profile: ScaleProfile = ScaleProfile(), system: CostSystem = CostSystem(), fresh: bool = False,
                    edge_mode: Mode = "auto", server_profile: str | None = None,
                    console: Console | None = None) -> ScaleResult:

    console = console or Console(stderr=True)
    work = Path(output_dir) / "paper-scale"
    started = time.perf_counter()
    images = photo_crops(profile.images, system.size)
    console.rule(f"paper scale: {system.generalist} edge, {system.expert} experts, {system.size}x{system.size}x3, "
                 f"{system.weights()}")
    bundle_dir = work / "bundle"
    from askexpert.models.checkpoint import load_checkpoint

    bundle = _cost_bundle(bundle_dir, system, images, profile, fresh, console)
    gen = load_checkpoint(bundle.path(bundle.manifest.generalist.checkpoint))
    conf = confidences(gen.model, gen.meta.model, images)
    console.log("the experts and general model in ONNX, for edge execution ...")
    local_models = export_edge_models(bundle, work / "edge-onnx")
    server_name = server_profile or server_profile_for(on_gpu())
    rows, placements, measured = [], {}, []
    cells_plan = plan(profile)
    for dev in profile.devices:
        cells = Cells(work / f"cells-{dev}")
        if fresh and cells.root.exists():
            shutil.rmtree(cells.root)
        with EmulatedEdge(dev, mode=edge_mode) as edge:
            placements[dev] = edge.placement.to_dict()
            console.log(edge.placement.describe())
            costs = {link: CostModel(device(edge.energy_profile("raspberry-pi-4")), device(server_name),
                                     network(RADIO[link]), server_where=where()) for link in profile.links}
            with ServerProcess(bundle_dir, threads=1, cpus=edge.server_cores, startup_timeout_s=600,
                               log_path=work / f"server-{dev}.log") as url:
                m = _Measure(edge, bundle, local_models, images, conf, url, profile.k)
                rows += _cells_on(dev, m, cells, cells_plan, profile, costs, console, measured)
            placements[dev] = edge.placement.to_dict()
    machine = machine_info()
    result = ScaleResult(
        profile=asdict(profile), machine={**machine, "described": describe(machine)},
        system={**asdict(system), "size": system.size, "generalist_weights": str(system.generalist_weights),
                "expert_weights": str(system.expert_weights), "weights": system.weights(),
                "bundle": str(bundle_dir), "server_profile": asdict(device(server_name)), "server_where": where(),
                "parameters": {"generalist": bundle.manifest.generalist.parameters,
                               "expert": bundle.manifest.experts[0].parameters}},
        placements=placements, rows=rows, seconds=time.perf_counter() - started, measured=measured)
    results_dir = Path(results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / "paper-scale.json").write_text(json.dumps(result.to_dict(), indent=1))
    result.report = str(write_scale_report(result, results_dir))
    (results_dir / "paper-scale.json").write_text(json.dumps(result.to_dict(), indent=1))
    return result

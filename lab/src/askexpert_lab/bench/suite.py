"""``askexpert bench``: baselines, sweeps and the report, in resumable cells.

A profile fixes the models (their configs and budgets), how many test images each measurement
uses, and the sweep grids. The models come from the one pipeline (:mod:`askexpert.system.pipeline`)
and are deployed as bundles, so the bench measures what a user deploys: the ONNX generalist and
servers holding the bundles' calibrated experts. Every measurement is a *cell* stored as JSON under
``<output_dir>/bench-<profile>/cells``; an interrupted run picks up at the first missing cell.
The report (Markdown + PNG plots) and ``results/<date>-<host>.json`` are written at the end.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import statistics
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np
from rich.console import Console

from askexpert.console import progress_bar
from askexpert.contract.bundle import System, open_system
from askexpert.contract.protocol import InferResponse, encode_images
from askexpert.contract.schema import DataIdentity
from askexpert.costs.energy import CostModel
from askexpert.costs.meters import measured_meter
from askexpert.costs.profiles import device, network, server_profile_for
from askexpert.data import load_dataset
from askexpert.devices import on_gpu, where
from askexpert.models import open_checkpoint
from askexpert.routing import RoutingPolicy
from askexpert.runtime.edge import ExpertTarget
from askexpert.runtime.link import PRESETS
from askexpert.splits import stratified_subset
from askexpert.system.build import Operating, build_system
from askexpert.system.calibrate import generalist_policy
from askexpert.system.pipeline import ExpertsStep, PipelineSpec, train_system
from askexpert_lab.bench.baselines import ON_EDGE, measure, run_on_edge
from askexpert_lab.bench.local_experts import LocalModelSpec, export_edge_models
from askexpert_lab.bench.machine import machine_info
from askexpert_lab.bench.report import write_report
from askexpert_lab.bench.results import BenchResult, ClientsRow, Row, row_from_dict
from askexpert_lab.testbed.placement import EmulatedEdge, Mode
from askexpert_lab.testbed.server import ServerProcess, server_pacing


@dataclass(frozen=True)
class Profile:
    name: str
    generalist: str
    general: str
    progressive: str
    static: str | None  # None: the progressive config with strategy static
    overrides: tuple[str, ...]
    test_images: int
    sweep_images: int
    rates: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5)
    ks: tuple[int, ...] = (1, 3)
    links: tuple[str, ...] = ("wifi", "lte", "5g")
    clients: tuple[int, ...] = (1, 4, 16)
    concurrency_seconds: float = 6.0
    headline_rate: float = 0.3
    headline_k: int = 3
    headline_link: str = "wifi"
    threads: int = 1

    def pipeline(self) -> PipelineSpec:
        static = (ExpertsStep("static", self.static) if self.static else
                  ExpertsStep("static", self.progressive, ("experts.strategy=static", "name=experts-static")))
        return PipelineSpec(self.generalist, self.general, (ExpertsStep("progressive", self.progressive), static),
                            common=self.overrides)


PROFILES = {
    # demo-sized models (trained in a few minutes, reused afterwards), 1,000 test images: <= 20 min on 2 cores
    "quick": Profile("quick", "demo-generalist", "demo-general", "demo-experts", None, (), test_images=1000,
                     sweep_images=400),
    # the full recipes of BENCHMARKS.md (hours on a CPU, ~11 minutes of training on an H100), half the
    # test split (stratified) for the baselines and 1,000 images a sweep point, sized for a few minutes
    # of measurement on a GPU server
    "full": Profile("full", "generalist-fmnist", "general-fmnist", "experts-progressive-fmnist",
                    "experts-static-fmnist", (), test_images=5000, sweep_images=1000, concurrency_seconds=6.0),
}

BASELINE_SYSTEMS = (("edge-only", "progressive"), ("edge-execution", "progressive"),
                    ("edge-general", "progressive"), ("full-offload-general", "progressive"),
                    ("full-offload-expert", "progressive"),
                    ("collaborative", "static"), ("collaborative", "progressive"))


@dataclass(frozen=True)
class Cell:
    """One measurement of the plan; its name is the file it is stored in."""

    kind: Literal["baseline", "tau", "link", "clients"]
    system: str = "collaborative"
    experts: str = "progressive"
    rate: float | None = None
    k: int | None = None
    link: str | None = None
    clients: int | None = None

    @property
    def name(self) -> str:
        if self.kind == "baseline":
            return f"baseline-{self.system}" + (f"-{self.experts}" if self.system == "collaborative" else "")
        if self.kind == "tau":
            return f"tau-{self.rate}-k{self.k}"
        if self.kind == "link":
            return f"link-{self.link}-{self.system}"
        return f"clients-{self.clients}"


def plan(profile: Profile) -> list[Cell]:
    return ([Cell("baseline", system, experts) for system, experts in BASELINE_SYSTEMS]
            + [Cell("tau", rate=r, k=k) for r in profile.rates for k in profile.ks]
            + [Cell("link", kind, link=name) for name in profile.links
               for kind in ("collaborative", "full-offload-general")]
            + [Cell("clients", clients=c) for c in profile.clients])


@dataclass
class Cells:
    root: Path
    done: list[str] = field(default_factory=list)

    def get(self, name: str) -> dict | None:
        path = self.root / f"{name}.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def put(self, name: str, value: dict) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".{name}.tmp"
        tmp.write_text(json.dumps(value, indent=1))
        tmp.replace(self.root / f"{name}.json")


def _bundles(models: dict, profile: Profile, work: Path) -> dict:
    """Build the bundle of every expert set that has none yet (models trained elsewhere come without)."""
    for label in ("progressive", "static"):
        if f"bundle-{label}" not in models:
            models[f"bundle-{label}"] = str(build_system(
                Path(models["generalist"]), Path(models[label]), work / f"system-{label}",
                Operating(offload=profile.headline_rate, k=profile.headline_k), overwrite=True).root)
    return models


def _models(profile: Profile, work: Path, console: Console) -> dict:
    trained = train_system(profile.pipeline(), work, console=console)
    return {"generalist": str(trained.generalist), "general": str(trained.general),
            **{label: str(run) for label, run in trained.experts.items()},
            "partition": json.loads(trained.partition.read_text())["experts"]}


def _test_images(data: DataIdentity, bundle: System, n: int) -> tuple[np.ndarray, np.ndarray]:
    from askexpert.config import DataConfig

    spec = bundle.manifest.input
    test = load_dataset(DataConfig(**data.config), image_size=spec.size, channels=spec.channels).test
    pick = stratified_subset(test.labels, min(n, len(test)), seed=0)
    return test.images[pick].numpy(), test.labels[pick].numpy()


async def _concurrency(url: str, images: np.ndarray, expert: str, clients: int, seconds: float) -> dict:
    import httpx

    body, headers = encode_images(images[:1])
    shares, batches, done = [], [], 0
    stop = time.perf_counter() + seconds

    async def one(client) -> None:
        nonlocal done
        while time.perf_counter() < stop:
            r = await client.post(f"/v1/experts/{expert}/infer", content=body, headers=headers)
            r.raise_for_status()
            t = InferResponse.model_validate_json(r.content).timings
            shares.append(t.compute_ms / max(t.batch_size, 1))
            batches.append(t.batch_size)
            done += 1

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*(one(client) for _ in range(clients)))
        elapsed = time.perf_counter() - t0
    return {"clients": clients, "images_per_s": done / elapsed, "mean_batch": statistics.mean(batches),
            "server_ms_per_image": statistics.mean(shares), "requests": done}


@dataclass
class _Bench:
    """Everything the cells of one run share; servers and the edge-side experts start on first use."""

    profile: Profile
    models: dict
    edge: EmulatedEdge
    generalist_onnx: Path
    local_models: list[LocalModelSpec]
    policy: RoutingPolicy
    experts: list[ExpertTarget]
    images: np.ndarray
    labels: np.ndarray
    sweep: np.ndarray  # indices of a stratified subset of ``images`` for the sweeps
    costs: CostModel
    meter: object = None
    servers: dict = field(default_factory=dict)
    server_args: list[str] = field(default_factory=list)  # a server device's pacing (askexpert serve flags)

    def url(self, experts: str) -> str:
        if experts not in self.servers:
            self.servers[experts] = ServerProcess(Path(self.models[f"bundle-{experts}"]), threads=1,
                                                  cpus=self.edge.server_cores, extra_args=self.server_args)
            self.servers[experts].start()
        return self.servers[experts].url

    def on_edge(self, kind: str, images: np.ndarray, labels: np.ndarray, *, policy: RoutingPolicy | None = None,
                experts: str = "progressive", link: str | None = None) -> list:
        """One system's traces, its edge side run where the edge is (the emulated device's process)."""
        return self.edge.call(run_on_edge, kind=kind, generalist_onnx=self.generalist_onnx,
                              local_models=self.local_models, threads=self.profile.threads,
                              policy=policy or self.policy, experts=self.experts, images=images, labels=labels,
                              url=None if kind in ON_EDGE else self.url(experts),
                              link=PRESETS[link or self.profile.headline_link])

    def stop(self) -> None:
        for server in self.servers.values():
            server.stop()

    def run(self, cell: Cell) -> dict:
        p = self.profile
        if cell.kind == "baseline":
            traces = self.on_edge(cell.system, self.images, self.labels, experts=cell.experts)
            return measure(cell.name, cell.system, traces, self.costs, experts=cell.experts,
                           link=p.headline_link).to_dict()
        if cell.kind == "tau":
            policy = generalist_policy(open_checkpoint(self.models["generalist"]), offload_rate=cell.rate, k=cell.k,
                                       temperature=self.policy.temperature)
            traces = self.on_edge("collaborative", self.images[self.sweep], self.labels[self.sweep], policy=policy)
            return measure(cell.name, "collaborative", traces, self.costs, target_offload=cell.rate, k=cell.k,
                           tau=policy.tau).to_dict()
        if cell.kind == "link":
            traces = self.on_edge(cell.system, self.images[self.sweep], self.labels[self.sweep], link=cell.link)
            return measure(cell.name, cell.system, traces, self.costs, link=cell.link).to_dict()
        return asdict(self._clients(cell.clients))

    def _clients(self, clients: int) -> ClientsRow:
        url = self.url("progressive")
        meter = self.meter if self.meter is not None and self.meter.source.startswith("NVML") else None
        if meter is not None:
            meter.start()
        row = asyncio.run(_concurrency(url, self.images, "0", clients, self.profile.concurrency_seconds))
        c = self.costs
        modelled = (1000 * c.server.energy_j(row["server_ms_per_image"] / 1000) if c.server_device is None else
                    c.server_device.share_mj(c.server_features["0"], row["server_ms_per_image"]))
        if meter is not None:  # the GPU's whole energy over the window (static power included) per image
            reading = meter.stop()
            return ClientsRow(**row, server_mj_per_image=1000 * reading.joules / max(row["requests"], 1),
                              server_mj_per_image_modelled=modelled, server_energy_kind="measured",
                              server_energy_source=meter.source, server_watts=reading.watts)
        source = (f"{self.costs.server.name} ({self.costs.server.active_w:g} W) x compute share per image on "
                  f"{self.costs.server_where}" if self.costs.server_device is None else
                  f"{self.costs.server_device.name}'s batch model (server paced to it)")
        return ClientsRow(**row, server_mj_per_image=modelled, server_mj_per_image_modelled=modelled,
                          server_energy_kind="modelled", server_energy_source=source)


def run_bench(profile_name: str | Profile = "quick", *, output_dir: Path = Path("runs"),
              results_dir: Path = Path("results"), fresh: bool = False, edge_profile: str | None = None,
              server_profile: str | None = None, radio: str = "wifi", edge_device: str = "host",
              edge_mode: Mode = "auto", server_device: str = "host", console: Console | None = None,
              models: dict | None = None) -> BenchResult:
    """Run (or resume) the bench. ``edge_device`` (a speed profile, or ``host``) emulates the edge
    device on one core of this host (:mod:`askexpert_lab.testbed.placement`); its energy profile is the
    device's own unless ``edge_profile`` names another. ``server_device`` paces the expert servers to a
    near-edge device (the test images' answers computed ahead) and prices their energy by its model.
    ``models``: runs trained elsewhere (``generalist``, ``general``, ``progressive``, ``static`` run
    directories and the ``partition``'s expert classes), benched instead of training the profile's."""
    import torch

    profile = profile_name if isinstance(profile_name, Profile) else PROFILES[profile_name]
    console = console or Console(stderr=True)
    work = Path(output_dir) / f"bench-{profile.name}"
    cells = Cells(work / ("cells" + ("" if edge_device == "host" else f"-{edge_device}")
                          + ("" if server_device == "host" else f"-server-{server_device}")))
    if fresh and cells.root.exists():
        shutil.rmtree(cells.root)
    torch.set_num_threads(profile.threads)
    edge = EmulatedEdge(edge_device, mode=edge_mode)
    costs = CostModel(device(edge_profile or edge.energy_profile("raspberry-pi-4")),
                      device(server_profile or server_profile_for(on_gpu())), network(radio),
                      server_where=where())
    started = time.perf_counter()

    console.rule(f"bench {profile.name}: models and bundles")
    models = ({k: v if k == "partition" else str(v) for k, v in models.items()} if models is not None else
              cells.get("models") or (Cells(work / "cells").get("models") if edge_device != "host" else None))
    models = _bundles(models or _models(profile, work, console), profile, work)
    cells.put("models", models)
    bundle = open_system(Path(models["bundle-progressive"]))
    r = bundle.manifest.routing
    policy = RoutingPolicy.from_spec(r)
    images, labels = _test_images(bundle.manifest.data, bundle, profile.test_images)
    sweep = stratified_subset(labels, min(profile.sweep_images, len(images)), seed=1)
    meter, meter_notes = measured_meter()
    console.log("edge models: the bundle's experts and general model in ONNX, for the edge-execution baselines")
    local_models = export_edge_models(bundle, work / "edge-onnx")
    server_args, costs = _pace_servers(bundle, server_device, images, work, costs)
    cells_plan = plan(profile)
    with edge:
        placement = edge.placement
        console.log(placement.describe())
        bench = _Bench(profile, models, edge, bundle.generalist_onnx, local_models, policy,
                       [ExpertTarget(e.id, list(e.classes)) for e in bundle.manifest.experts], images, labels, sweep,
                       costs, meter, server_args=server_args)
        with progress_bar(console) as progress:
            task = progress.add_task(f"bench {profile.name} ({placement.label})", total=len(cells_plan), info="")
            try:
                for cell in cells_plan:
                    if cells.get(cell.name) is None:
                        progress.update(task, info=cell.name)
                        edge.recalibrate(cell.name)  # the host's speed drifts: the device's must not
                        cells.put(cell.name, bench.run(cell))
                    progress.advance(task)
            finally:
                bench.stop()
    result = _result(profile, models, policy, costs, meter, meter_notes, images, sweep, placement,
                     {c.name: row_from_dict(cells.get(c.name)) for c in cells_plan}, time.perf_counter() - started)
    _write(result, Path(results_dir), f"{result.date}-{result.host}-{profile.name}"
           + ("" if edge_device == "host" else f"-{edge_device}")
           + ("" if server_device == "host" else f"-server-{server_device}"))
    return result


def _pace_servers(bundle, server_device: str, images: np.ndarray, work: Path,
                  costs: CostModel) -> tuple[list[str], CostModel]:
    """The servers' flags for a server device (the test images answered ahead) and the costs priced by it."""
    if server_device == "host":
        return [], costs
    from askexpert.costs.server_device import server_device as device_named

    known = work / "known-images.npz"
    np.savez(known, images=images)
    args, features = server_pacing(bundle, server_device, known)
    return args, replace(costs, server_device=device_named(server_device), server_features=features)


def _result(profile: Profile, models: dict, policy: RoutingPolicy, costs: CostModel, meter, meter_notes: list[str],
            images: np.ndarray, sweep: np.ndarray, placement, cells: dict[str, Row], seconds: float) -> BenchResult:
    machine = machine_info()
    return BenchResult(
        profile=profile.name, date=machine["date"], host=machine["host"],
        machine={"cpu": machine["cpu"], "cores": machine["cpu_cores"], "torch": machine["torch"],
                 "gpu": machine["gpu"]},
        models=models, policy={"tau": policy.tau, "k": policy.k, "temperature": policy.temperature,
                               "target_offload": profile.headline_rate},
        test_images=len(images), sweep_images=len(sweep), headline_link=PRESETS[profile.headline_link].describe(),
        energy={"edge_profile": costs.edge.__dict__, "server_profile": costs.server.__dict__,
                "server_where": costs.server_where,
                "radio": costs.radio.__dict__, "measured_meter": meter.source if meter else None,
                "meter_notes": meter_notes},
        cells=cells, seconds=seconds, placement=placement.to_dict(),
    )


def _write(result: BenchResult, results_dir: Path, stem: str) -> None:
    """``results_dir/<stem>.json`` (the data first, so a failing plot loses nothing) and the report beside it."""
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / f"{stem}.json").write_text(json.dumps(result.to_dict(), indent=1))
    result.report = str(write_report(result, results_dir / stem))
    (results_dir / f"{stem}.json").write_text(json.dumps(result.to_dict(), indent=1))

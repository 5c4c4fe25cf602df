"""``askexpert bench``: baselines, sweeps and the report, in resumable cells.

A profile fixes the models (their configs and budgets), how many test images each measurement
uses, and the sweep grids. Every measurement is a *cell* stored as JSON under
``<output_dir>/bench-<profile>/cells``; an interrupted run picks up at the first missing cell.
The report (Markdown + PNG plots) and ``results/<date>-<host>.json`` are written at the end.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from rich.console import Console

from askexpert.bench.machine import machine_info
from askexpert.bench.systems import CostModel, result_row, run_system
from askexpert.config import load_run_config
from askexpert.costs.meters import measured_meter
from askexpert.costs.profiles import device, network
from askexpert.data import load_dataset
from askexpert.data.splits import stratified_subset
from askexpert.runtime.edge_models import TorchGeneralist
from askexpert.runtime.link import PRESETS
from askexpert.runtime.protocol import InferResponse, encode_images
from askexpert.runtime.session import calibrate
from askexpert.serving.pool import ExpertPool
from askexpert.serving.process import ServerProcess
from askexpert.training import train_generalist
from askexpert.training.engine import progress_bar
from askexpert.training.experts import train_experts
from askexpert.training.logits import data_config_of
from askexpert.training.partition import make_partition


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


@dataclass
class Cells:
    root: Path
    done: list[str] = field(default_factory=list)

    def get(self, name: str):
        path = self.root / f"{name}.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def put(self, name: str, value) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".{name}.tmp"
        tmp.write_text(json.dumps(value, indent=1))
        tmp.replace(self.root / f"{name}.json")


def _train(profile: Profile, work: Path, console: Console) -> dict:
    common = [f"output_dir={work}", *profile.overrides]
    gen = train_generalist(load_run_config(profile.generalist, common), resume=True, console=console)
    general = train_experts(load_run_config(profile.general, common), resume=True, console=console)
    partition = work / "partition.json"
    if not partition.is_file():
        make_partition(gen.run_dir, 3).save(partition)
    links = [f"experts.init={general.run_dir}", f"experts.partition={partition}"]
    prog = train_experts(load_run_config(profile.progressive, [*common, *links]), resume=True, console=console)
    if profile.static:
        static_cfg = load_run_config(profile.static, [*common, *links])
    else:
        static_cfg = load_run_config(profile.progressive, [*common, *links, "experts.strategy=static",
                                                          "name=experts-static"])
    static = train_experts(static_cfg, resume=True, console=console)
    return {"generalist": str(gen.run_dir), "general": str(general.run_dir), "progressive": str(prog.run_dir),
            "static": str(static.run_dir), "partition": json.loads(partition.read_text())["experts"]}


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


def run_bench(profile_name: str | Profile = "quick", *, output_dir: Path = Path("runs"),
              results_dir: Path = Path("results"), fresh: bool = False, edge_profile: str = "raspberry-pi-4",
              server_profile: str = "h100-batch1", radio: str = "wifi", console: Console | None = None) -> dict:
    profile = profile_name if isinstance(profile_name, Profile) else PROFILES[profile_name]
    console = console or Console(stderr=True)
    work = Path(output_dir) / f"bench-{profile.name}"
    cells = Cells(work / "cells")
    if fresh and cells.root.exists():
        shutil.rmtree(cells.root)
    torch.set_num_threads(profile.threads)
    costs = CostModel(device(edge_profile), device(server_profile), network(radio))
    started = time.perf_counter()

    console.rule(f"bench {profile.name}: models")
    models = cells.get("models") or _train(profile, work, console)
    cells.put("models", models)
    generalist = TorchGeneralist(Path(models["generalist"]), threads=profile.threads)
    policy = calibrate(Path(models["generalist"]), offload_rate=profile.headline_rate, k=profile.headline_k)
    bundle = load_dataset(data_config_of(Path(models["generalist"])), image_size=generalist.input.size,
                          channels=generalist.input.channels)
    test = bundle.test
    pick = stratified_subset(test.labels, min(profile.test_images, len(test)), seed=0)
    images, labels = test.images[pick].numpy(), test.labels[pick].numpy()
    sweep_n = min(profile.sweep_images, len(images))
    link = PRESETS[profile.headline_link]
    meter, meter_notes = measured_meter()
    plan = (["baseline-" + s for s in ("edge-only", "edge-execution", "full-offload-general", "full-offload-expert",
                                         "collaborative-static", "collaborative-progressive")]
            + [f"tau-{r}-k{k}" for r in profile.rates for k in profile.ks]
            + [f"link-{name}-{kind}" for name in profile.links for kind in ("collaborative", "full-offload-general")]
            + [f"clients-{c}" for c in profile.clients])
    local = {"experts": None}  # the experts loaded onto the "edge" for edge execution, when needed
    servers: dict[str, ServerProcess] = {}

    def urls() -> dict[str, str]:
        for key in ("progressive", "static"):
            if key not in servers:
                servers[key] = ServerProcess(Path(models[key]), threads=1)
                servers[key].start()
        return {k: s.url for k, s in servers.items()}

    def local_experts() -> ExpertPool:
        if local["experts"] is None:
            # on the edge device's processor, whatever accelerator the benchmark host has
            local["experts"] = ExpertPool(Path(models["progressive"]), device="cpu", include_general=False)
        return local["experts"]

    with progress_bar(console) as progress:
        task = progress.add_task(f"bench {profile.name}", total=len(plan), info="")
        try:
            for name in plan:
                if cells.get(name) is None:
                    progress.update(task, info=name)
                    cells.put(name, _run_cell(name, profile, models, urls, local_experts, generalist, policy, images,
                                              labels, sweep_n, link, costs, meter))
                progress.advance(task)
        finally:
            for server in servers.values():
                server.stop()
    rows = {name: cells.get(name) for name in plan}
    machine = machine_info()
    result = {
        "profile": profile.name, "date": machine["date"], "host": machine["host"],
        "machine": {"cpu": machine["cpu"], "cores": machine["cpu_cores"], "torch": machine["torch"],
                    "gpu": machine["gpu"]},
        "models": models,
        "policy": {"tau": policy.tau, "k": policy.k, "temperature": policy.temperature,
                   "target_offload": profile.headline_rate},
        "test_images": len(images), "sweep_images": sweep_n, "headline_link": link.describe(),
        "energy": {"edge_profile": costs.edge.__dict__, "server_profile": costs.server.__dict__,
                   "radio": costs.radio.__dict__,
                   "measured_meter": meter.source if meter else None, "meter_notes": meter_notes},
        "cells": rows, "seconds": time.perf_counter() - started,
    }
    from askexpert.bench.report import write_report

    results_dir = Path(results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{result['date']}-{result['host']}-{profile.name}"
    (results_dir / f"{stem}.json").write_text(json.dumps(result, indent=1))
    result["report"] = str(write_report(result, results_dir / stem))
    return result


def _run_cell(name, profile, models, urls, local_experts, generalist, policy, images, labels, sweep_n, link, costs,
              meter=None):
    """One measurement. ``urls()`` starts the expert servers on first use; ``local_experts()`` loads the
    experts in this process (the edge device, for edge execution). ``meter``: a measured meter of the
    server's accelerator (NVML), read over each concurrency window; None where there is none."""
    if name.startswith("baseline-"):
        kind = name[len("baseline-"):]
        experts = "static" if kind.endswith("static") else "progressive"
        system = "collaborative" if kind.startswith("collaborative") else kind
        on_edge = system in ("edge-only", "edge-execution")
        traces = run_system(system, generalist=generalist, policy=policy, images=images, labels=labels,
                            url=None if on_edge else urls()[experts],
                            local_pool=local_experts() if system == "edge-execution" else None, link=link)
        return result_row(kind, system, traces, costs, experts=experts, link=link.name)
    if name.startswith("tau-"):
        _, rate, k = name.split("-")
        tau_policy = calibrate(Path(models["generalist"]), offload_rate=float(rate), k=int(k[1:]))
        traces = run_system("collaborative", generalist=generalist, policy=tau_policy, images=images[:sweep_n],
                            labels=labels[:sweep_n], url=urls()["progressive"], link=link)
        return result_row(name, "collaborative", traces, costs, target_offload=float(rate), k=int(k[1:]),
                          tau=tau_policy.tau)
    if name.startswith("link-"):
        _, link_name, *kind = name.split("-")
        kind = "-".join(kind)
        traces = run_system(kind, generalist=generalist, policy=policy, images=images[:sweep_n],
                            labels=labels[:sweep_n], url=urls()["progressive"], link=PRESETS[link_name])
        return result_row(name, kind, traces, costs, link=link_name)
    if name.startswith("clients-"):
        clients = int(name.split("-")[1])
        url = urls()["progressive"]
        gpu_meter = meter if meter is not None and meter.source.startswith("NVML") else None
        if gpu_meter is not None:
            gpu_meter.start()
        row = asyncio.run(_concurrency(url, images, "0", clients, profile.concurrency_seconds))
        modelled = 1000 * costs.server.energy_j(row["server_ms_per_image"] / 1000)
        row["server_mj_per_image_modelled"] = modelled
        if gpu_meter is not None:  # the GPU's whole energy over the window (static power included) per image
            reading = gpu_meter.stop()
            row.update(server_mj_per_image=1000 * reading.joules / max(row["requests"], 1),
                       server_watts=reading.watts, server_energy_kind="measured", server_energy_source=gpu_meter.source)
        else:
            source = f"{costs.server.name} ({costs.server.active_w} W) x compute share per image"
            row.update(server_mj_per_image=modelled, server_energy_kind="modelled", server_energy_source=source)
        return row
    raise ValueError(name)

"""``askexpert demo``: the whole collaborative system on Fashion-MNIST, offline, in a few minutes.

1. Train (or reuse from ``runs/demo``) a small generalist, a general model and progressive experts
   (configs ``demo-generalist``, ``demo-general``, ``demo-experts``; :mod:`askexpert.system.pipeline`).
2. Build the deployable bundle (``runs/demo/system``): calibration on validation, ONNX generalist.
3. Serve the bundle (``askexpert serve``) as a child process on a free loopback port.
4. Stream the test split through the bundle's edge runner (ONNX Runtime), one image at a time, over HTTP.
5. Print a table (accuracy, offload rate, latency with its breakdown, modelled energy) and write a
   report into ``runs/demo/report``; stop the server.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from rich.console import Console

from askexpert.console import progress_bar
from askexpert.costs.energy import CostModel, Energy
from askexpert.costs.profiles import device, network
from askexpert.runtime.link import LinkProfile
from askexpert.runtime.session import EdgeReport, EdgeSettings, freeze_split, run_edge
from askexpert.serving.process import ServerProcess
from askexpert.system.build import build_system
from askexpert.system.pipeline import ExpertsStep, PipelineSpec, TrainedSystem, train_system
from askexpert.testbed.placement import EmulatedEdge, Mode, Placement

# profiles with sourced figures (costs/profiles.yaml)
EDGE_DEVICE, SERVER_DEVICE, RADIO = "raspberry-pi-4", "h100-batch1", "wifi"


def demo_pipeline(overrides: list[str] | None = None) -> PipelineSpec:
    return PipelineSpec("demo-generalist", "demo-general", (ExpertsStep("progressive", "demo-experts"),),
                        common=("train.threads=2", *(overrides or [])))


@dataclass
class DemoResult:
    report: EdgeReport
    energy: Energy
    models: TrainedSystem
    bundle: Path
    report_dir: Path
    placement: Placement


def run_demo(*, output_dir: Path = Path("runs"), fresh: bool = False, limit: int | None = 2000,
             link: LinkProfile | None = None, console: Console | None = None,
             overrides: list[str] | None = None, edge_device: str = "host", edge_mode: Mode = "auto") -> DemoResult:
    """Run the demo; ``overrides`` (``section.key=value``) apply to all three demo configs. ``edge_device``
    emulates that device's speed on one core (:mod:`askexpert.testbed.placement`), the server pinned
    to the others."""
    base = Path(output_dir) / "demo"
    if fresh and base.exists():
        shutil.rmtree(base)
    console = console or Console(stderr=True)
    console.rule("1/4 models: generalist, general model, progressive experts (reused when already trained)")
    models = train_system(demo_pipeline(overrides), base, console=console)
    console.rule("2/4 bundle: calibrate on validation, export the generalist to ONNX")
    bundle = build_system(models.generalist, models.experts["progressive"], base / "system", offload=0.3, k=3,
                          overwrite=True).root
    console.log(f"bundle written to {bundle}")
    report_dir = base / "report"
    report_dir.mkdir(parents=True, exist_ok=True)
    console.rule("3/4 expert server: askexpert serve BUNDLE on a free loopback port")
    with EmulatedEdge(edge_device, mode=edge_mode) as edge, \
            ServerProcess(bundle, threads=1, log_path=report_dir / "server.log", cpus=edge.server_cores) as url:
        console.log(f"expert server up at {url}")
        console.log(edge.placement.describe())
        console.rule("4/4 edge: the bundle's ONNX generalist over the test split, one image at a time, over HTTP")
        settings = EdgeSettings(system=bundle, server=url, inputs=["split:test"], limit=limit, link=link, threads=1,
                                trace=report_dir / "trace.jsonl")
        if edge.profile is None:
            with progress_bar(console, transient=True) as progress:
                report = run_edge(settings, progress=progress)
        else:
            # the emulated edge reads a file of the same test images, as a deployed edge would (no dataset)
            settings = freeze_split(settings, report_dir / "test-images.npz")
            console.log(f"streaming {limit or 'all'} test images through the {edge.placement.label} ...")
            report = edge.call(run_edge, s=settings)
    energy = CostModel(device(edge.energy_profile(EDGE_DEVICE)), device(SERVER_DEVICE),
                       network(RADIO)).energy(report.traces)
    result = DemoResult(report, energy, models, bundle, report_dir, edge.placement)
    (report_dir / "summary.json").write_text(json.dumps({
        "summary": asdict(report.summary), "energy": asdict(energy), "policy": asdict(report.policy),
        "input": report.input, "backend": report.backend, "link": report.link, "bundle": str(bundle),
        "placement": edge.placement.to_dict(),
        "models": {"generalist": str(models.generalist), "general": str(models.general),
                   "experts": str(models.experts["progressive"]),
                   "partition": json.loads(models.partition.read_text())["experts"]},
        "settings": {k: str(v) for k, v in asdict(settings).items()}}, indent=1))
    (report_dir / "report.md").write_text(markdown(result))
    return result


def markdown(r: DemoResult) -> str:
    s, e, p = r.report.summary, r.energy, r.report.policy
    b = s.breakdown_ms_offloaded
    lines = [
        "# askexpert demo report", "",
        f"{s.samples} images of {r.report.input}, edge backend {r.report.backend} (bundle {r.bundle}), link "
        f"{r.report.link}, tau {p.tau:.3f} (chosen on validation at build time), k {p.k}.", "",
        f"**Edge: {r.placement.label}**. {r.placement.describe()}", "",
        "| metric | value |", "|---|---|",
        f"| accuracy, collaborative | {s.accuracy:.2f}% |",
        f"| accuracy, generalist alone | {s.generalist_accuracy:.2f}% |",
        f"| offload rate | {s.offload_rate:.1f}% |",
        f"| expert fallbacks ('other') / degraded (no expert answer) | {s.expert_fallbacks} / {s.degraded} |",
        f"| latency p50 / p95 | {s.latency_ms.p50:.2f} / {s.latency_ms.p95:.2f} ms |",
        "| offloaded: edge / encode / network / link / queue / expert | "
        + " / ".join(f"{b[k]:.2f}" for k in ("edge_ms", "encode_ms", "network_ms", "link_ms", "queue_ms", "expert_ms"))
        + " ms |",
        f"| edge energy per image ({e.edge_energy_kind}) | {e.edge_mj_per_image:.2f} mJ (compute "
        f"{e.edge_compute_mj_per_image:.2f}, waiting {e.edge_wait_mj_per_image:.2f}, "
        f"radio {e.radio_mj_per_image:.3f}) |",
        f"| server energy per image ({e.server_energy_kind}) | {e.server_mj_per_image:.2f} mJ |",
        "", f"Edge energy: {e.edge_energy_source}. Server energy: {e.server_energy_source}.", "",
        "Per-image traces: trace.jsonl; server log: server.log.",
    ]
    return "\n".join(lines) + "\n"

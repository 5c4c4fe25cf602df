"""``askexpert demo``: the whole collaborative system on Fashion-MNIST, offline, in a few minutes, and
what it buys against its two alternatives.

1. Train (or reuse from ``runs/demo``) a small generalist, a general model and progressive experts
   (configs ``demo-generalist``, ``demo-general``, ``demo-experts``; :mod:`askexpert.system.pipeline`).
2. Build the deployable bundle (``runs/demo/system``): calibration on validation, ONNX generalist.
3. Serve the bundle (``askexpert serve``) as a child process on a free loopback port, pinned to the
   cores the edge does not use.
4. Stream the test images through the bundle's edge runner (ONNX Runtime), one at a time, over HTTP and
   the emulated link, on an emulated Raspberry Pi 4 by default (:mod:`askexpert_lab.testbed.placement`:
   each model call at the Pi's device model's time; ``host``: unthrottled).
5. On the same images and edge: the generalist alone (edge only) and every image to the server's
   general model (full offload).
6. Print the three side by side (accuracy, latency p50 / p95, edge and total energy, bytes sent) and
   write a report into ``runs/demo/report``; stop the server.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from rich.console import Console

from askexpert.console import progress_bar
from askexpert.costs.energy import CostModel, Energy
from askexpert.costs.modes import Goals
from askexpert.costs.profiles import device, network, radio_for, server_profile_for
from askexpert.costs.server_device import DEFAULT_SERVER_DEVICE
from askexpert.costs.server_device import server_device as server_device_model
from askexpert.devices import on_gpu, where
from askexpert.routing import RoutingPolicy
from askexpert.runtime.edge import ExpertTarget
from askexpert.runtime.link import PRESETS, Link
from askexpert.runtime.session import EdgeReport, EdgeSettings, freeze_split, run_edge
from askexpert.runtime.settings import Connection, Inputs
from askexpert.system.build import Operating, build_system
from askexpert.system.pipeline import ExpertsStep, PipelineSpec, TrainedSystem, train_system
from askexpert_lab.bench.baselines import SystemRow, measure, run_on_edge
from askexpert_lab.testbed.placement import EmulatedEdge, Mode, Placement
from askexpert_lab.testbed.server import ServerProcess, server_pacing

EDGE_DEVICE = "raspberry-pi-4"  # the energy profile when the edge is not emulated (costs/profiles.yaml)
DEFAULT_LINK = PRESETS["wifi"]  # regime 1: a 784-byte picture over wifi (the plan recommends full offload)
SECOND_LINK = PRESETS["lte"]  # regime 2: the same over lte, where the decision map recommends collaboration


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
    systems: list[SystemRow]  # edge only, full offload, collaborative: the same images, edge and link
    regimes: list[Regime] = field(default_factory=list)  # every link the modes ran over (the first: systems)
    server_device: str = "host"

    def row(self, kind: str) -> SystemRow:
        return next(r for r in self.systems if r.kind == kind)


@dataclass
class Regime:
    """One setting the demo runs the three modes in: its link, what ``askexpert plan`` recommends there (on
    validation) and what the three modes measured (on the test images)."""

    link: str
    systems: list[SystemRow]
    plan: dict  # the plan's recommendation: mode, reasons, each mode's predicted option (askexpert.costs.modes)
    report: EdgeReport  # the collaborative run

    def row(self, kind: str) -> SystemRow:
        return next(r for r in self.systems if r.kind == kind)


def demo_plan(bundle, edge_device: str, server_device: str, link: Link | None) -> dict:
    """``askexpert plan`` for one regime: the floor halfway between edge only's and full offload's validation
    accuracy, the least total energy meeting it."""
    from askexpert.system.plan import ImageForm, plan

    curve = bundle.manifest.curve
    nothing = min(curve.points, key=lambda p: p.offload_rate)
    full = curve.general_accuracy if curve.general_accuracy is not None else nothing.accuracy
    goals = Goals(min_accuracy=round((nothing.accuracy + full) / 2, 2))
    return plan(bundle, goals, edge_device=edge_device, server_device_name=server_device, link=link,
                image=ImageForm()).to_dict()


def _run_regime(edge: EmulatedEdge, built, settings: EdgeSettings, link: Link | None, images, labels, *,
                console: Console, trace: Path, edge_only=None) -> tuple[EdgeReport, dict]:
    """Collaborative, full offload and (unless given) edge only on the same images over ``link``."""
    settings = settings.with_(link=link, trace=trace)
    console.log(f"streaming {len(images)} test images over {link.describe() if link else 'no link'} ...")
    if edge.profile is None:
        with progress_bar(console, transient=True) as progress:
            report = run_edge(settings, progress=progress)
    else:
        report = edge.call(run_edge, s=settings)
    policy = RoutingPolicy.from_spec(built.manifest.routing)
    experts = [ExpertTarget(e.id, list(e.classes)) for e in built.manifest.experts]
    baselines = {"edge-only": edge_only}
    for kind in ("edge-only", "full-offload-general") if edge_only is None else ("full-offload-general",):
        edge.recalibrate(kind)
        baselines[kind] = edge.call(run_on_edge, kind=kind, generalist_onnx=built.generalist_onnx, threads=1,
                                    policy=policy, experts=experts, images=images, labels=labels,
                                    url=None if kind == "edge-only" else settings.connection.server, link=link)
    return report, baselines


def run_demo(*, output_dir: Path = Path("runs"), fresh: bool = False, limit: int | None = 2000,
             link: Link | None = DEFAULT_LINK, second_link: Link | None = SECOND_LINK,
             server_device: str = DEFAULT_SERVER_DEVICE, console: Console | None = None,
             overrides: list[str] | None = None, edge_device: str = "rpi4", edge_mode: Mode = "auto") -> DemoResult:
    """Run the demo; ``overrides`` (``section.key=value``) apply to all three demo configs. ``edge_device``
    emulates that device's speed on one core (:mod:`askexpert_lab.testbed.placement`), the server pinned
    to the others and paced to ``server_device`` (``host``: this host's speed); ``host``: the edge unthrottled
    in this process. The three modes run over ``link``, then (unless None) over ``second_link``."""
    base = Path(output_dir) / "demo"
    if fresh and base.exists():
        shutil.rmtree(base)
    console = console or Console(stderr=True)
    console.rule("1/5 models: generalist, general model, progressive experts (reused when already trained)")
    models = train_system(demo_pipeline(overrides), base, console=console)
    console.rule("2/5 bundle: calibrate on validation, export the generalist to ONNX; askexpert plan for each link")
    built = build_system(models.generalist, models.experts["progressive"], base / "system",
                         Operating(offload=0.3, k=3), overwrite=True)
    bundle, report_dir = built.root, base / "report"
    report_dir.mkdir(parents=True, exist_ok=True)
    console.log(f"bundle written to {bundle}")
    links = [link] + ([second_link] if second_link is not None else [])
    plans = [demo_plan(built, edge_device, server_device, lk) for lk in links]
    for lk, pl in zip(links, plans, strict=True):
        console.log(f"askexpert plan, {lk.name if lk else 'no link'}: {pl['recommended'] or 'nothing meets the goals'}"
                    f" ({pl['reasons'][0]})")
    # the edge reads a file of the test images, as a deployed edge would (no dataset); the baselines too
    settings = freeze_split(EdgeSettings(system=built, threads=1, connection=Connection(server=None),
                                         inputs=Inputs(sources=["split:test"], limit=limit)),
                            report_dir / "test-images.npz")
    frozen = np.load(report_dir / "test-images.npz")
    images, labels = frozen["images"], frozen["labels"]
    paced, features = server_pacing(built, server_device, report_dir / "test-images.npz")
    console.rule(f"3/5 expert server: askexpert serve BUNDLE on a free loopback port, paced to {server_device}")
    with EmulatedEdge(edge_device, mode=edge_mode) as edge, \
            ServerProcess(bundle, threads=1, log_path=report_dir / "server.log", cpus=edge.server_cores,
                          extra_args=paced) as url:
        console.log(f"expert server up at {url}")
        console.log(edge.placement.describe())
        console.rule(f"4/5 on the {edge.placement.label}: collaborative, edge only and full offload, the same images")
        settings = settings.with_(server=url)
        runs = []
        for i, lk in enumerate(links):
            runs.append(_run_regime(edge, built, settings, lk, images, labels, console=console,
                                    trace=report_dir / ("trace.jsonl" if i == 0 else f"trace-{lk.name}.jsonl"),
                                    edge_only=runs[0][1]["edge-only"] if runs else None))
    console.rule("5/5 the modes side by side, for each link")
    regimes = []
    for lk, pl, (report, baselines) in zip(links, plans, runs, strict=True):
        costs = CostModel(device(edge.energy_profile(EDGE_DEVICE)), device(server_profile_for(on_gpu())),
                          network(radio_for(lk.name if lk else None)), server_where=where(),
                          server_device=server_device_model(server_device), server_features=features)
        energy = costs.energy(report.traces)
        systems = [measure("edge only", "edge-only", baselines["edge-only"], costs),
                   measure("full offload", "full-offload-general", baselines["full-offload-general"], costs),
                   SystemRow("collaborative", "collaborative", report.summary, energy, "progressive",
                             lk.name if lk else None, k=report.policy.k, tau=report.policy.tau)]
        regimes.append(Regime(lk.name if lk else "none", systems, pl, report))
    first = regimes[0]
    result = DemoResult(first.report, first.row("collaborative").energy, models, bundle, report_dir, edge.placement,
                        first.systems, regimes, server_device)
    (report_dir / "summary.json").write_text(json.dumps(_summary(result, settings.with_(link=link)), indent=1))
    (report_dir / "report.md").write_text(markdown(result))
    return result


def _summary(result: DemoResult, settings: EdgeSettings) -> dict:
    """What ``summary.json`` holds: the collaborative run, the three systems, the placement, the models."""
    report, models = result.report, result.models
    return {
        "summary": asdict(report.summary), "energy": asdict(result.energy), "policy": asdict(report.policy),
        "systems": [s.to_dict() for s in result.systems],
        "input": report.input, "backend": report.backend, "link": report.link, "bundle": str(result.bundle),
        "placement": result.placement.to_dict(),
        "models": {"generalist": str(models.generalist), "general": str(models.general),
                   "experts": str(models.experts["progressive"]),
                   "partition": json.loads(models.partition.read_text())["experts"]},
        "settings": settings.described(), "server_device": result.server_device,
        "regimes": [{"link": g.link, "plan": g.plan, "systems": [x.to_dict() for x in g.systems]}
                    for g in result.regimes]}


COMPARISON = (  # (label, value of a SystemRow, format)
    ("accuracy %", lambda r: r.summary.accuracy, "{:.2f}"),
    ("offloaded %", lambda r: r.summary.offload_rate, "{:.1f}"),
    ("latency p50 ms", lambda r: r.summary.latency_ms.p50, "{:.2f}"),
    ("latency p95 ms", lambda r: r.summary.latency_ms.p95, "{:.2f}"),
    ("edge energy mJ an image", lambda r: r.energy.edge_mj_per_image, "{:.2f}"),
    ("near-edge (server) energy mJ an image", lambda r: r.energy.server_mj_per_image, "{:.2f}"),
    ("total energy mJ an image (edge + server)", lambda r: r.energy.total_mj_per_image, "{:.2f}"),
    ("bytes sent an image (up + down)", lambda r: r.energy.bytes_per_image, "{:,.0f}"),
)


def comparison(result: DemoResult | Regime) -> list[tuple[str, list[str]]]:
    """The three systems' figures, a row a metric (what the CLI and the report print)."""
    return [(label, [fmt.format(get(r)) for r in result.systems]) for label, get, fmt in COMPARISON]


def plan_line(regime: Regime) -> str:
    """What ``askexpert plan`` predicted for the regime, and whether the measured modes agree."""
    pl = regime.plan
    measured = min(regime.systems, key=lambda r: r.energy.total_mj_per_image
                   if r.summary.accuracy >= pl["goals"]["min_accuracy"] else float("inf"))
    meets = [r for r in regime.systems if r.summary.accuracy >= pl["goals"]["min_accuracy"]]
    agree = ("the measured modes agree" if meets and measured.name == pl["recommended"] else
             "no measured mode meets the floor on the test images" if not meets else
             f"on the test images {measured.name} measured the least total energy meeting the floor")
    return (f"{regime.link}: askexpert plan recommends {pl['recommended'] or 'nothing'} for an accuracy floor of "
            f"{pl['goals']['min_accuracy']:g}% on validation at the least total energy ({pl['reasons'][0]}); {agree}")


PAPER_ENERGY_CUT = 46.0  # % less energy than full offload (Liu and Fahmy, arXiv:2602.13334, abstract)


def energy_claim(c: Energy, full: Energy) -> str:
    """The paper's energy claim (46% less than full offload) against both readings of this run: total (edge +
    near-edge) and the near-edge side alone."""
    parts = []
    for name, mine, theirs in (("total", c.total_mj_per_image, full.total_mj_per_image),
                               ("near-edge", c.server_mj_per_image, full.server_mj_per_image)):
        cut = 100 * (1 - mine / theirs) if theirs else float("nan")
        verdict = "met" if cut >= PAPER_ENERGY_CUT else "missed"
        change = f"{cut:.0f}% less" if cut >= 0 else f"{-cut:.0f}% more"
        parts.append(f"{name} {mine:.2f} vs {theirs:.2f} mJ ({change}: {verdict})")
    return f"the paper's 46% less energy than full offload, read two ways: {'; '.join(parts)}"


def reading(result: DemoResult | Regime) -> list[str]:
    """What collaboration bought against each alternative, in words, from this run's figures."""
    c = result.row("collaborative")
    out = []
    for kind, name in (("edge-only", "edge only"), ("full-offload-general", "full offload")):
        o = result.row(kind)
        cs, os_ = c.summary, o.summary
        sent = (f"{100 * (1 - c.energy.bytes_per_image / o.energy.bytes_per_image):.0f}% fewer bytes sent"
                if o.energy.bytes_per_image else f"{c.energy.bytes_per_image:,.0f} bytes an image sent ({name}: none)")
        p50, p95 = cs.latency_ms.p50 - os_.latency_ms.p50, cs.latency_ms.p95 - os_.latency_ms.p95
        out.append(f"against {name}: {cs.accuracy - os_.accuracy:+.2f} points of accuracy, p50 {p50:+.2f} ms and "
                   f"p95 {p95:+.2f} ms, "
                   f"total energy x{c.energy.total_mj_per_image / o.energy.total_mj_per_image:.2f}, "
                   f"near-edge energy {c.energy.server_mj_per_image:.2f} vs {o.energy.server_mj_per_image:.2f} mJ, "
                   f"{sent}")
    out.append(energy_claim(c.energy, result.row("full-offload-general").energy))
    return out


def _regime_section(g: Regime) -> list[str]:
    return [f"## {g.link}: what collaboration buys (the same images and edge)", "", f"- {plan_line(g)}.", "",
            "| metric | " + " | ".join(x.name for x in g.systems) + " |", "|---|" + "---|" * len(g.systems),
            *(f"| {label} | " + " | ".join(values) + " |" for label, values in comparison(g)), "",
            *(f"- {'Collaborative ' if line.startswith('against') else ''}{line}." for line in reading(g)), ""]


def markdown(r: DemoResult) -> str:
    s, e, p = r.report.summary, r.energy, r.report.policy
    b = s.breakdown_ms_offloaded
    lines = [
        "# askexpert demo report", "",
        f"{s.samples} images of {r.report.input}, edge backend {r.report.backend} (bundle {r.bundle}), link "
        f"{r.report.link}, tau {p.tau:.3f} (chosen on validation at build time), k {p.k}.", "",
        f"**Edge:** {r.placement.describe()}", "",
        f"**Server:** paced to {r.server_device}" + (" (answers to the test images computed ahead, each batch served "
                                                     "at the device's time; docs/testbed.md)"
                                                     if r.server_device != "host" else " (this host's speed)"), "",
        *(line for g in r.regimes for line in _regime_section(g)),
        "On the 28x28 miniature an image is 784 bytes and the generalist costs the edge more than sending it "
        "does; what collaboration buys grows with the image and the radio's cost "
        "(benchmarks/topics/paper-scale.md).", "",
        "## Collaborative, in detail", "",
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
        f"| server energy per image ({e.server_label}) | {e.server_mj_per_image:.2f} mJ |",
        "", f"Edge energy: {e.edge_energy_source}. Server energy: {e.server_energy_source}.", "",
        "Per-image traces: trace.jsonl; server log: server.log.",
    ]
    return "\n".join(lines) + "\n"

"""The benchmark report: Markdown tables (the reference paper's table, goals, sweeps) and PNG plots."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from askexpert_lab.bench.baselines import SystemRow
from askexpert_lab.bench.results import BenchResult, ClientsRow
from askexpert_lab.testbed.placement import Placement

BASELINES = [
    ("edge-only", "edge only (generalist on the edge)"),
    ("edge-execution", "edge execution (generalist + expert on the edge)"),
    ("edge-general", "edge execution (the medium general model on the edge, every image)"),
    ("full-offload-general", "full offload to the general model"),
    ("full-offload-expert", "full offload to the router's expert"),
    ("collaborative-static", "collaborative, static experts"),
    ("collaborative-progressive", "collaborative, progressive experts"),
]


@dataclass
class Goal:
    goal: str
    ratio: float
    target: float
    accuracy_ok: bool
    detail: str

    @property
    def met(self) -> bool:
        return self.ratio <= self.target and self.accuracy_ok


def _fmt(v, digits=2) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _systems(result: BenchResult, prefix: str) -> list[SystemRow]:
    return [r for k, r in result.cells.items() if k.startswith(prefix) and isinstance(r, SystemRow)]


def _clients(result: BenchResult) -> list[ClientsRow]:
    return sorted((r for r in result.cells.values() if isinstance(r, ClientsRow)), key=lambda r: r.clients)


def goals(result: BenchResult) -> list[Goal]:
    """The goals as ratios from this run, each with whether it was met: latency against both readings
    of edge execution (the paper: 0.55x; ours: <= 0.50x against the routed one), whole-system energy
    against full offload (the paper: 0.54x; ours: <= 0.45x), and the edge's own energy."""
    c = result.cells
    collab, offload = c["baseline-collaborative-progressive"], c["baseline-full-offload-general"]
    cs = collab.summary
    out = []
    for key, reading in (("edge-execution", "routed edge execution"), ("edge-general", "the medium model on the edge")):
        row = c.get(f"baseline-{key}")
        if row is None:
            continue
        es = row.summary
        out.append(Goal(
            f"collaborative latency <= 0.50x {reading}, at equal or better accuracy",
            cs.latency_ms.mean / es.latency_ms.mean, 0.50, cs.accuracy >= es.accuracy - 1e-9,
            f"mean latency {cs.latency_ms.mean:.2f} vs {es.latency_ms.mean:.2f} ms; "
            f"accuracy {cs.accuracy:.2f} vs {es.accuracy:.2f}%"))
    out += [Goal(
        "total energy (edge + radio + server) <= 0.45x full offload",
        collab.energy.total_mj_per_image / offload.energy.total_mj_per_image, 0.45, True,
        f"{collab.energy.total_mj_per_image:.1f} vs {offload.energy.total_mj_per_image:.1f} mJ an image "
        f"(server {collab.energy.server_mj_per_image:.1f} vs {offload.energy.server_mj_per_image:.1f})",
    ), Goal(
        "near-edge energy (the server alone; the paper's claim read without the edge) <= 0.54x full offload",
        collab.energy.server_mj_per_image / offload.energy.server_mj_per_image
        if offload.energy.server_mj_per_image else float("nan"), 0.54, True,
        f"{collab.energy.server_mj_per_image:.2f} vs {offload.energy.server_mj_per_image:.2f} mJ an image "
        f"({collab.energy.server_label})",
    ), Goal(
        "edge energy <= 0.54x full offload", collab.energy.edge_mj_per_image / offload.energy.edge_mj_per_image,
        0.54, True, f"{collab.energy.edge_mj_per_image:.2f} vs {offload.energy.edge_mj_per_image:.2f} mJ an image "
                    f"({collab.energy.edge_energy_kind})",
    )]
    clients = _clients(result)
    if len(clients) > 1:
        one, many = clients[0], clients[-1]
        out.append(Goal(
            f"server energy per offloaded image at {many.clients} clients <= 0.2x at {one.clients} client",
            many.server_mj_per_image / one.server_mj_per_image, 0.2, True,
            f"{many.server_mj_per_image:.1f} vs {one.server_mj_per_image:.1f} mJ an image, mean batch "
            f"{many.mean_batch:.1f} vs {one.mean_batch:.1f} ({many.server_energy_kind})",
        ))
    return out


def _accuracy_against(plt, metric: str, xlabel: str, base: list, taus: list[SystemRow], sweep_images: int):
    """Accuracy against mean latency (``metric`` "latency") or edge energy: the baselines as points, the tau
    sweep as one line a k."""
    def x(row: SystemRow) -> float:
        return row.summary.latency_ms.mean if metric == "latency" else row.energy.edge_mj_per_image

    fig, ax = plt.subplots(figsize=(8, 4.8))
    markers = "osD^vP"
    for i, (label, row) in enumerate(base):
        ax.scatter(x(row), row.summary.accuracy, s=70, marker=markers[i % len(markers)], label=label, zorder=3)
    for k in sorted({r.k for r in taus}):
        pts = [r for r in taus if r.k == k]
        ax.plot([x(r) for r in pts], [r.summary.accuracy for r in pts], "--", marker="x", alpha=0.7,
                label=f"collaborative, tau sweep, k={k} ({sweep_images} images, stratified)")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return fig


def plots(result: BenchResult, out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c = result.cells
    made = []

    def save(fig, name):
        path = out_dir / name
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
        made.append(path)

    base = [(label, c[f"baseline-{key}"]) for key, label in BASELINES if c.get(f"baseline-{key}")]
    taus = sorted(_systems(result, "tau-"), key=lambda r: (r.k, r.tau))
    for metric, xlabel, name in (("latency", "mean latency an image (ms)", "accuracy_vs_latency.png"),
                                 ("edge", "edge energy an image (mJ, modelled)", "accuracy_vs_edge_energy.png")):
        save(_accuracy_against(plt, metric, xlabel, base, taus, result.sweep_images), name)

    if taus:
        fig, ax = plt.subplots(figsize=(6, 4))
        for k in sorted({r.k for r in taus}):
            pts = [r for r in taus if r.k == k]
            ax.plot([r.tau for r in pts], [r.summary.offload_rate for r in pts], marker="o", label=f"k={k}")
        ax.set_xlabel("tau (confidence threshold, chosen on validation)")
        ax.set_ylabel("offload rate on test (%)")
        ax.grid(alpha=0.3)
        ax.legend()
        save(fig, "offload_vs_tau.png")

    clients = _clients(result)
    if clients:
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot([r.clients for r in clients], [r.server_mj_per_image for r in clients], marker="o")
        for r in clients:
            ax.annotate(f"batch {r.mean_batch:.1f}", (r.clients, r.server_mj_per_image), fontsize=7,
                        xytext=(4, 4), textcoords="offset points")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent edge clients sharing one server")
        ax.set_ylabel(f"server energy an image (mJ, {clients[0].server_energy_kind})")
        ax.grid(alpha=0.3)
        save(fig, "server_energy_vs_clients.png")
    return made


def placement_lines(p: dict | None) -> list[str]:
    """How the edge and the server were placed (:meth:`Placement.describe`); every edge latency below is
    that of this edge."""
    if not p:  # a result written before placements were recorded: the edge ran on the host
        return ["**Edge: host CPU (no edge emulation)**: edge latencies are this host's, not a device's.", ""]
    placement = Placement.from_dict(p)
    if placement.mode == "host":
        return [f"**Edge**: {placement.describe()}; edge latencies are this host's, not a device's.", ""]
    return [f"**Edge**: {placement.describe()}. {_checks(p)}Source: {p['source']}. Every edge latency and edge "
            f"energy below is that of this {placement.label}.", ""]


def _checks(p: dict) -> str:
    achieved = [c["achieved_ms"] for c in p.get("checks", [])]
    if len(achieved) < 2:
        return ""
    return (f"Re-calibrated before each of {len(achieved) - 1} measurements: {min(achieved):.1f}-"
            f"{max(achieved):.1f} ms ({len(p.get('adjustments', []))} corrections). ")


def write_report(result: BenchResult, out_dir: Path) -> Path:
    """``out_dir/report.md`` plus the plots; returns the Markdown path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    made = plots(result, out_dir)
    c = result.cells
    e = result.energy
    m = result.machine
    lines = [
        f"# askexpert benchmark report ({result.profile} profile)", "",
        f"{result.date}, host {result.host}: {m['cpu']} ({m['cores']} cores), GPU: {m['gpu'] or 'none'}, torch "
        f"{m['torch']}. {result.test_images} test images for the baselines, {result.sweep_images} (a stratified "
        f"subset of them) for each sweep point; link {result.headline_link} (emulated on loopback); tau "
        f"{result.policy['tau']:.3f} chosen on validation for {100 * result.policy['target_offload']:.0f}% offload, "
        f"k {result.policy['k']}. The edge runs the bundle's ONNX generalist; the servers hold the bundles. "
        f"Took {result.seconds / 60:.1f} min.", "",
        *placement_lines(result.placement),
        "Energy is **modelled** here: " + (f"measured meter available: {e['measured_meter']}" if e["measured_meter"]
                                           else "no energy counter on this machine (" + "; ".join(e["meter_notes"])
                                           + ")") + ".",
        f"Edge: {e['edge_profile']['name']} at {e['edge_profile']['active_w']} W ({e['edge_profile']['source']}); "
        f"radio: {e['radio']['name']}, {e['radio']['joules_per_bit']:g} J/bit ({e['radio']['source']}); "
        f"server: {e['server_profile']['name']} at {e['server_profile']['active_w']} W "
        f"({e['server_profile']['source']}) x the experts' compute time on {e.get('server_where', 'this host')}. "
        "Compute times are measured on this host, edge and server alike.", "",
        "## Systems on the same test images and link", "",
        "| system | accuracy % | on offloaded % | offload % | expert fallbacks | latency p50 / p95 / mean ms "
        f"({(result.placement or {}).get('label', 'host CPU')}) | edge mJ/img | server mJ/img "
        f"({e['server_profile']['name']}, modelled) | total mJ/img |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for key, label in BASELINES:
        r = c.get(f"baseline-{key}")
        if not r:
            continue
        s, lat = r.summary, r.summary.latency_ms
        lines.append(f"| {label} | {_fmt(s.accuracy)} | {_fmt(s.offloaded_accuracy)} | {s.offload_rate:.1f} | "
                     f"{s.expert_fallbacks} | {lat.p50:.2f} / {lat.p95:.2f} / {lat.mean:.2f} | "
                     f"{r.energy.edge_mj_per_image:.2f} | {r.energy.server_mj_per_image:.1f} | "
                     f"{r.energy.total_mj_per_image:.1f} |")
    lines += ["", "## Goals (ratios from this run)", "", "| goal | ratio | met | detail |", "|---|---|---|---|"]
    for g in goals(result):
        lines.append(f"| {g.goal} | {g.ratio:.2f}x | {'yes' if g.met else 'no'} | {g.detail} |")
    lines += _sweep_lines(result)
    lines += ["", "## Plots", ""] + [f"![{p.stem}]({p.name})" for p in made]
    path = out_dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def _sweep_lines(result: BenchResult) -> list[str]:
    """The report's three sweeps: tau and k, the links, the clients sharing one server."""
    lines = ["", "## Sweep: tau and k (collaborative, progressive experts)", "",
             "| target offload | k | tau | offload % | accuracy % | latency mean ms | edge mJ/img |",
             "|---|---|---|---|---|---|---|"]
    for r in sorted(_systems(result, "tau-"), key=lambda r: (r.k, r.target_offload)):
        lines.append(f"| {100 * r.target_offload:.0f}% | {r.k} | {r.tau:.3f} | {r.summary.offload_rate:.1f} | "
                     f"{r.summary.accuracy:.2f} | {r.summary.latency_ms.mean:.2f} | {r.energy.edge_mj_per_image:.2f} |")
    lines += ["", "## Sweep: links", "", "| link | system | accuracy % | latency p50 / mean ms | edge mJ/img |",
              "|---|---|---|---|---|"]
    for r in _systems(result, "link-"):
        lines.append(f"| {r.link} | {r.kind} | {r.summary.accuracy:.2f} | {r.summary.latency_ms.p50:.2f} / "
                     f"{r.summary.latency_ms.mean:.2f} | {r.energy.edge_mj_per_image:.2f} |")
    lines += ["", "## Sweep: edge clients sharing one server", "",
              "| clients | images/s | mean batch | server ms/img | server mJ/img |", "|---|---|---|---|---|"]
    for r in _clients(result):
        lines.append(f"| {r.clients} | {r.images_per_s:.0f} | {r.mean_batch:.1f} | {r.server_ms_per_image:.2f} | "
                     f"{r.server_mj_per_image:.1f} |")
    return lines

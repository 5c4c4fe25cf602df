"""The benchmark report: Markdown tables (the reference paper's table, goals, sweeps) and PNG plots."""

from __future__ import annotations

from pathlib import Path

BASELINES = [
    ("edge-only", "edge only (generalist on the edge)"),
    ("edge-execution", "edge execution (generalist + expert on the edge)"),
    ("full-offload-general", "full offload to the general model"),
    ("full-offload-expert", "full offload to the router's expert"),
    ("collaborative-static", "collaborative, static experts"),
    ("collaborative-progressive", "collaborative, progressive experts"),
]


def _fmt(v, digits=2) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def goals(result: dict) -> list[dict]:
    """The issue's three goals as ratios from this run, each with whether it was met."""
    c = result["cells"]
    collab, edge_exec = c["baseline-collaborative-progressive"], c["baseline-edge-execution"]
    offload = c["baseline-full-offload-general"]
    out = [{
        "goal": "collaborative latency <= 0.55x edge execution, at equal or better accuracy",
        "ratio": collab["latency_ms"]["mean"] / edge_exec["latency_ms"]["mean"],
        "target": 0.55, "accuracy_ok": collab["accuracy"] >= edge_exec["accuracy"] - 1e-9,
        "detail": f"mean latency {collab['latency_ms']['mean']:.2f} vs {edge_exec['latency_ms']['mean']:.2f} ms; "
                  f"accuracy {collab['accuracy']:.2f} vs {edge_exec['accuracy']:.2f}%",
    }, {
        "goal": "edge energy <= 0.54x full offload",
        "ratio": collab["edge_mj_per_image"] / offload["edge_mj_per_image"],
        "target": 0.54, "accuracy_ok": True,
        "detail": f"{collab['edge_mj_per_image']:.2f} vs {offload['edge_mj_per_image']:.2f} mJ an image "
                  f"({collab['edge_energy_kind']})",
    }]
    one, many = c.get("clients-1"), c.get(f"clients-{max(int(k.split('-')[1]) for k in c if k.startswith('clients-'))}")
    if one and many:
        out.append({
            "goal": f"server energy per offloaded image at {many['clients']} clients <= 0.2x at 1 client",
            "ratio": many["server_mj_per_image"] / one["server_mj_per_image"], "target": 0.2, "accuracy_ok": True,
            "detail": f"{many['server_mj_per_image']:.1f} vs {one['server_mj_per_image']:.1f} mJ an image, mean "
                      f"batch {many['mean_batch']:.1f} vs {one['mean_batch']:.1f} ({many['server_energy_kind']})",
        })
    for g in out:
        g["met"] = g["ratio"] <= g["target"] and g["accuracy_ok"]
    return out


def plots(result: dict, out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c = result["cells"]
    made = []

    def save(fig, name):
        path = out_dir / name
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
        made.append(path)

    base = [(label, c[f"baseline-{key}"]) for key, label in BASELINES if c.get(f"baseline-{key}")]
    for metric, xlabel, name in (("latency", "mean latency an image (ms)", "accuracy_vs_latency.png"),
                                 ("edge", "edge energy an image (mJ, modelled)", "accuracy_vs_edge_energy.png")):
        fig, ax = plt.subplots(figsize=(8, 4.8))
        markers = "osD^vP"
        for i, (label, row) in enumerate(base):
            x = row["latency_ms"]["mean"] if metric == "latency" else row["edge_mj_per_image"]
            ax.scatter(x, row["accuracy"], s=70, marker=markers[i % len(markers)], label=label, zorder=3)
        taus = sorted((r for k, r in c.items() if k.startswith("tau-") and r), key=lambda r: (r["k"], r["tau"]))
        for k in sorted({r["k"] for r in taus}):
            pts = [r for r in taus if r["k"] == k]
            xs = [r["latency_ms"]["mean"] if metric == "latency" else r["edge_mj_per_image"] for r in pts]
            ax.plot(xs, [r["accuracy"] for r in pts], "--", marker="x", alpha=0.7,
                    label=f"collaborative, tau sweep, k={k} (first {result['sweep_images']} images)")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
        save(fig, name)

    taus = [r for k, r in c.items() if k.startswith("tau-") and r]
    if taus:
        fig, ax = plt.subplots(figsize=(6, 4))
        for k in sorted({r["k"] for r in taus}):
            pts = sorted((r for r in taus if r["k"] == k), key=lambda r: r["tau"])
            ax.plot([r["tau"] for r in pts], [r["offload_rate"] for r in pts], marker="o", label=f"k={k}")
        ax.set_xlabel("tau (confidence threshold, chosen on validation)")
        ax.set_ylabel("offload rate on test (%)")
        ax.grid(alpha=0.3)
        ax.legend()
        save(fig, "offload_vs_tau.png")

    clients = sorted((r for k, r in c.items() if k.startswith("clients-") and r), key=lambda r: r["clients"])
    if clients:
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot([r["clients"] for r in clients], [r["server_mj_per_image"] for r in clients], marker="o")
        for r in clients:
            ax.annotate(f"batch {r['mean_batch']:.1f}", (r["clients"], r["server_mj_per_image"]), fontsize=7,
                        xytext=(4, 4), textcoords="offset points")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent edge clients sharing one server")
        ax.set_ylabel(f"server energy an image (mJ, {clients[0]['server_energy_kind']})")
        ax.grid(alpha=0.3)
        save(fig, "server_energy_vs_clients.png")
    return made


def write_report(result: dict, out_dir: Path) -> Path:
    """``out_dir/report.md`` plus the plots; returns the Markdown path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    made = plots(result, out_dir)
    c = result["cells"]
    e = result["energy"]
    lines = [
        f"# askexpert benchmark report ({result['profile']} profile)", "",
        f"{result['date']}, host {result['host']}: {result['machine']['cpu']} ({result['machine']['cores']} cores), "
        f"GPU: {result['machine']['gpu'] or 'none'}, torch {result['machine']['torch']}. "
        f"{result['test_images']} test images for the baselines, {result['sweep_images']} for each sweep point; "
        f"link {result['headline_link']} (emulated on loopback); tau {result['policy']['tau']:.3f} chosen on "
        f"validation for {100 * result['policy']['target_offload']:.0f}% offload, k {result['policy']['k']}. "
        f"Took {result['seconds'] / 60:.1f} min.", "",
        "Energy is **modelled** here: " + (f"measured meter available: {e['measured_meter']}" if e["measured_meter"]
                                           else "no energy counter on this machine (" + "; ".join(e["meter_notes"])
                                           + ")") + ".",
        f"Edge: {e['edge_profile']['name']} at {e['edge_profile']['active_w']} W ({e['edge_profile']['source']}); "
        f"radio: {e['radio']['name']}, {e['radio']['joules_per_bit']:g} J/bit ({e['radio']['source']}); "
        f"server: {e['server_profile']['name']} at {e['server_profile']['active_w']} W "
        f"({e['server_profile']['source']}). Compute times are measured on this host, edge and server alike.", "",
        "## Systems on the same test images and link", "",
        "| system | accuracy % | on offloaded % | offload % | latency p50 / p95 / mean ms | edge mJ/img | "
        "server mJ/img | total mJ/img |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key, label in BASELINES:
        r = c.get(f"baseline-{key}")
        if not r:
            continue
        lat = r["latency_ms"]
        lines.append(f"| {label} | {_fmt(r.get('accuracy'))} | {_fmt(r.get('offloaded_accuracy'))} | "
                     f"{r['offload_rate']:.1f} | {lat['p50']:.2f} / {lat['p95']:.2f} / {lat['mean']:.2f} | "
                     f"{r['edge_mj_per_image']:.2f} | {r['server_mj_per_image']:.1f} | {r['total_mj_per_image']:.1f} |")
    lines += ["", "## Goals (ratios from this run)", "", "| goal | ratio | met | detail |", "|---|---|---|---|"]
    for g in goals(result):
        lines.append(f"| {g['goal']} | {g['ratio']:.2f}x | {'yes' if g['met'] else 'no'} | {g['detail']} |")
    lines += ["", "## Sweep: tau and k (collaborative, progressive experts)", "",
              "| target offload | k | tau | offload % | accuracy % | latency mean ms | edge mJ/img |",
              "|---|---|---|---|---|---|---|"]
    for k in sorted((k for k in c if k.startswith("tau-")), key=lambda k: (c[k]["k"], c[k]["target_offload"])):
        r = c[k]
        lines.append(f"| {100 * r['target_offload']:.0f}% | {r['k']} | {r['tau']:.3f} | {r['offload_rate']:.1f} | "
                     f"{r['accuracy']:.2f} | {r['latency_ms']['mean']:.2f} | {r['edge_mj_per_image']:.2f} |")
    lines += ["", "## Sweep: links", "", "| link | system | accuracy % | latency p50 / mean ms | edge mJ/img |",
              "|---|---|---|---|---|"]
    for k in (k for k in c if k.startswith("link-")):
        r = c[k]
        lines.append(f"| {r['link']} | {r['kind']} | {r['accuracy']:.2f} | {r['latency_ms']['p50']:.2f} / "
                     f"{r['latency_ms']['mean']:.2f} | {r['edge_mj_per_image']:.2f} |")
    lines += ["", "## Sweep: edge clients sharing one server", "",
              "| clients | images/s | mean batch | server ms/img | server mJ/img |", "|---|---|---|---|---|"]
    for k in sorted((k for k in c if k.startswith("clients-")), key=lambda k: c[k]["clients"]):
        r = c[k]
        lines.append(f"| {r['clients']} | {r['images_per_s']:.0f} | {r['mean_batch']:.1f} | "
                     f"{r['server_ms_per_image']:.2f} | {r['server_mj_per_image']:.1f} |")
    lines += ["", "## Plots", ""] + [f"![{p.stem}]({p.name})" for p in made]
    path = out_dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path

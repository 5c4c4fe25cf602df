"""The paper-scale report: per device, the systems at the headline offload rate on each link, the ratios
beside the paper's, the parts of an offload's latency, the encodings, and latency / energy against the
offload rate (PNG plots)."""

from __future__ import annotations

from pathlib import Path

from askexpert_lab.bench.scale_results import H100_DEIT_SMALL_MS, PAPER, Row, ScaleResult
from askexpert_lab.testbed.placement import Placement

PARTS = ("edge_ms", "encode_ms", "network_ms", "link_ms", "queue_ms", "expert_ms")


def ratios(result: ScaleResult, dev: str, link: str, rate: float) -> dict[str, float | None]:
    """Collaborative against routed edge execution (latency) and full offload (total energy) at ``rate``."""
    collab = result.find(dev, "collaborative", link, rate)
    execution = result.find(dev, "edge-execution", None, rate)
    general = result.find(dev, "edge-general")
    offload = result.find(dev, "full-offload", link)
    if collab is None:
        return {}
    return {
        "latency_vs_edge_execution": collab.latency_ms.mean / execution.latency_ms.mean if execution else None,
        "latency_vs_edge_general": collab.latency_ms.mean / general.latency_ms.mean if general else None,
        "energy_vs_full_offload": (collab.energy.total_mj_per_image / offload.energy.total_mj_per_image
                                   if offload else None),
        # the paper's energy claim read the other way: the near-edge side alone
        "near_edge_energy_vs_full_offload": (collab.energy.server_mj_per_image / offload.energy.server_mj_per_image
                                             if offload and offload.energy.server_mj_per_image else None),
        "projected_latency_vs_edge_execution": (collab.projected_h100.mean / execution.latency_ms.mean
                                                if execution and collab.projected_h100 else None),
    }


def _row(label: str, r: Row) -> str:
    lat, e = r.latency_ms, r.energy
    return (f"| {label} | {r.offload_rate:.0f} | {lat.p50:.0f} / {lat.p95:.0f} / {lat.mean:.0f} | "
            f"{e.edge_mj_per_image:.0f} | {e.server_mj_per_image:.0f} | {e.total_mj_per_image:.0f} | "
            f"{r.up_bytes_per_offload / 1000:.1f} |")


def device_section(result: ScaleResult, dev: str) -> list[str]:
    p, g, x = result.profile, result.system["generalist"], result.system["expert"]
    rate = p["headline_rate"]
    placement = Placement.from_dict(result.placements[dev])
    lines = [f"## {dev}", "", f"{placement.describe()}", ""]
    for link in p["links"]:
        lines += [f"### {dev}, {link}, {100 * rate:.0f}% offloaded", "",
                  "| system | offload % | latency p50 / p95 / mean ms | edge mJ | server mJ | total mJ | "
                  "kB up an offload |", "|---|---|---|---|---|---|---|"]
        for label, r in ((f"edge only ({g})", result.find(dev, "edge-only")),
                         (f"routed edge execution ({g} + the {x} expert on the edge)",
                          result.find(dev, "edge-execution", None, rate)),
                         (f"medium model on the edge ({x} general)", result.find(dev, "edge-general")),
                         (f"full offload ({x} general on the server)", result.find(dev, "full-offload", link)),
                         ("collaborative", result.find(dev, "collaborative", link, rate))):
            if r is not None:
                lines.append(_row(label, r))
        q = ratios(result, dev, link, rate)
        lines += ["", f"Collaborative latency {q['latency_vs_edge_execution']:.2f}x routed edge execution "
                  f"(paper {PAPER['latency_vs_edge_execution']}x), {q['latency_vs_edge_general']:.2f}x the medium "
                  f"model on the edge; total energy {q['energy_vs_full_offload']:.2f}x full offload, near-edge energy "
                  f"{q['near_edge_energy_vs_full_offload']:.2f}x (the paper's {PAPER['energy_vs_full_offload']}x, "
                  f"read both ways). With the server's DeiT-Small at an H100's measured {H100_DEIT_SMALL_MS} ms "
                  f"(DeiT-Small; a projection, not this run): latency {q['projected_latency_vs_edge_execution']:.2f}x "
                  "routed edge execution.", ""]
    collab = result.find(dev, "collaborative", p["links"][0], rate)
    lines += ["Parts of an offloaded image's latency (ms, collaborative, "
              f"{100 * rate:.0f}%, by link): edge / encode / network / link / queue / expert", ""]
    for link in p["links"]:
        c = result.find(dev, "collaborative", link, rate)
        lines.append(f"- {link}: " + " / ".join(f"{c.breakdown_ms_offloaded[k]:.1f}" for k in PARTS))
    if collab is not None:
        lines += ["", f"Energy: edge {collab.energy.edge_energy_source} (lte and 5g: the cellular profile's J/bit, "
                  f"a 3.5G figure); server {collab.energy.server_label}.", ""]
    return lines


def encodings_section(result: ScaleResult) -> list[str]:
    p = result.profile
    rate = p["headline_rate"]
    lines = ["## Encodings on the wire", "",
             f"Collaborative at {100 * rate:.0f}% offloaded and full offload, each with the same encoding; the "
             "energy ratio is the two's, like for like.", "",
             "| device | link | encoding | kB up an offload | link ms an offload | encode ms (edge) | "
             "collaborative latency mean ms | collaborative total mJ | full offload latency mean ms | "
             "full offload total mJ | energy ratio |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for dev in p["devices"]:
        for link in p["links"]:
            for enc in ("raw", *p["encodings"]):
                r = result.find(dev, "collaborative", link, rate, enc)
                f = result.find(dev, "full-offload", link, None, enc)
                if r is None:
                    continue
                b = r.breakdown_ms_offloaded
                off = (f"{f.latency_ms.mean:.0f} | {f.energy.total_mj_per_image:.0f} | "
                       f"{r.energy.total_mj_per_image / f.energy.total_mj_per_image:.2f}x" if f else "- | - | -")
                lines.append(f"| {dev} | {link} | {enc} | {r.up_bytes_per_offload / 1000:.1f} | {b['link_ms']:.1f} | "
                             f"{b['encode_ms']:.1f} | {r.latency_ms.mean:.0f} | {r.energy.total_mj_per_image:.0f} | "
                             f"{off} |")
    return lines + [""]


def plot(result: ScaleResult, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    p = result.profile
    paths = []
    for dev in p["devices"]:
        fig, (ax_l, ax_e) = plt.subplots(1, 2, figsize=(11, 4))
        rates = list(p["rates"])
        x = [100 * r for r in rates]
        execution = [result.find(dev, "edge-execution", None, r) for r in rates]
        ax_l.plot(x, [r.latency_ms.mean for r in execution], "k--", marker="s", label="routed edge execution")
        ax_e.plot(x, [r.energy.total_mj_per_image for r in execution], "k--", marker="s",
                  label="routed edge execution")
        for name, style in (("edge-only", ":"), ("edge-general", "-.")):
            r = result.find(dev, name)
            ax_l.axhline(r.latency_ms.mean, color="grey", linestyle=style, label=name)
            ax_e.axhline(r.energy.total_mj_per_image, color="grey", linestyle=style, label=name)
        for link, colour in zip(p["links"], ("tab:blue", "tab:orange", "tab:green"), strict=False):
            collab = [result.find(dev, "collaborative", link, r) for r in rates]
            ax_l.plot(x, [r.latency_ms.mean for r in collab], color=colour, marker="o", label=f"collaborative, {link}")
            ax_l.plot(x, [r.latency_ms.p95 for r in collab], color=colour, alpha=0.4, linestyle="--")
            ax_e.plot(x, [r.energy.total_mj_per_image for r in collab], color=colour, marker="o",
                      label=f"collaborative, {link}")
            off = result.find(dev, "full-offload", link)
            ax_l.axhline(off.latency_ms.mean, color=colour, linestyle=":", label=f"full offload, {link}")
            ax_e.axhline(off.energy.total_mj_per_image, color=colour, linestyle=":", label=f"full offload, {link}")
        ax_l.set(xlabel="offload rate (%)", ylabel="latency an image (ms; mean, p95 faint)",
                 title=f"{dev}: latency against offload rate")
        ax_e.set(xlabel="offload rate (%)", ylabel="total energy an image (mJ, modelled; log scale)",
                 title=f"{dev}: edge + server energy", yscale="log")
        ax_l.legend(fontsize=7)
        ax_e.legend(fontsize=7)
        fig.tight_layout()
        path = out / f"paper-scale-{dev}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def write_scale_report(result: ScaleResult, out: Path) -> Path:
    out = Path(out)
    s, p = result.system, result.profile
    lines = ["# Paper-scale costs", "",
             f"{s['generalist']} generalist ({s['parameters']['generalist'] / 1e6:.1f} M parameters) on the emulated "
             f"edge, its top-{p['k']} classes routing each unsure image to one of {s['experts']} {s['expert']} experts "
             f"({s['parameters']['expert'] / 1e6:.1f} M each; a general model of the same size for full offload) on "
             f"the server's core; {s['size']}x{s['size']}x3 photo crops; weights: {s['weights']}. "
             "**Accuracy is not measured at this scale** (the miniature's "
             "tables show it): latency, bytes and energy do not depend on what the weights learned.", "",
             f"Machine: {result.machine['described']}. {p['images']} images at the headline "
             f"{100 * p['headline_rate']:.0f}% and the baselines, {p['sweep_images']} at the other rates. "
             f"This invocation took {result.seconds / 60:.1f} min and measured {len(result.measured)} of the cells "
             "(the others were read back from earlier invocations). Server energy: {s['server_profile']['name']} "
             f"({s['server_profile']['active_w']} W; {s['server_profile']['source']}) x compute time on "
             f"{s['server_where']}.", ""]
    for dev in p["devices"]:
        lines += device_section(result, dev)
    lines += encodings_section(result)
    for path in plot(result, out):
        lines += [f"![{path.stem}]({path.name})", ""]
    report = out / "paper-scale.md"
    report.write_text("\n".join(lines) + "\n")
    return report

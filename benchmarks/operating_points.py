"""Benchmark: operating points that hold as the link, the server's load and the inputs change (issue 28).

    python benchmarks/operating_points.py --generalist RUN --experts RUN [--repeats 3] [--images 3000]
    python benchmarks/operating_points.py --summary        # tables + plots from the saved repeats

On the emulated edge device (``--device``, default rpi4: one core under the kernel's CPU quota) next
to the expert server (the other cores), each repeat runs, over the same stratified test images:

* **plan**: ``build-system --p95-latency B`` for each budget of ``--budgets`` on wifi (the cost model's
  parts measured on the emulated device), then the edge at the chosen point: predicted p95 and edge
  energy against what the edge measures;
* **(a) link**: wifi for the first third of the images, lte after (``--link wifi@0,lte@N/3``); the
  bundle's fixed tau first, then ``--slo-p95`` set midway between the fixed run's p95 on wifi and on lte;
* **(b) load**: the same with ``--clients - 1`` competing clients on the server (16 edges sharing it);
* **(c) drift**: the test images corrupted from the first third on (``--corruption``, default
  gaussian_noise:5): the fixed tau against ``--target-offload`` (the bundle's validation offload);
* **(d) trace** (``--scenarios trace``): a recorded cellular link for the whole run (``--trace-links``, Mahimahi
  files under ``--traces``, default ../shared/traces; cellular radio): the fixed tau, then the SLO controller
  held at the fixed run's median 100-image-window p95, then the energy controller held at its median window's
  edge energy: the share of windows within each, fixed tau beside it.

Each run's traces are kept in ``--out/repeat-R/*.json`` (per image: route, tau, latency, link); the
summary reads them all: the share of 100-image windows within the SLO after the change, realised
offload per window, accuracy of both edges, predicted vs measured, and a plot per scenario of tau,
the windowed p95 and the offload rate over each run (``SCENARIO-repeat-R.png``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path

import numpy as np

from askexpert.console import stdout_console
from askexpert.contract.bundle import open_system
from askexpert.corruptions import parse_corruption
from askexpert.costs.energy import edge_mj_per_image
from askexpert.costs.profiles import device, network
from askexpert.runtime.link import parse_link, parse_link_arg
from askexpert.runtime.session import EdgeSettings, run_edge
from askexpert.runtime.settings import Connection, Control, Inputs
from askexpert_lab.bench.machine import describe, machine_info
from askexpert_lab.testbed.competing import CompetingLoad
from askexpert_lab.testbed.measure import plan_bundle
from askexpert_lab.testbed.placement import EmulatedEdge
from askexpert_lab.testbed.server import ServerProcess

WINDOW = 100
OUT = Path(__file__).parents[1] / "results" / "operating-points"


def test_images(bundle_root: Path, n: int, path: Path) -> Path:
    """The stratified ``n`` test images of the bundle's dataset, as the .npz the emulated edge reads."""
    from askexpert.config import DataConfig
    from askexpert.data import load_dataset
    from askexpert.splits import stratified_subset

    test = load_dataset(DataConfig(**open_system(bundle_root).manifest.data.config)).test
    idx = stratified_subset(test.labels.numpy(), n, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, images=test.images.numpy()[idx], labels=test.labels.numpy()[idx])
    return path


def record(report, radio: str = "wifi", **extra) -> dict:
    """What the summary needs of one run: per image (route, tau, latency, link, right, edge energy), the summary,
    the controller's report."""
    t = report.traces
    edge, net = device("raspberry-pi-4"), network(radio)
    return {**extra, "summary": asdict(report.summary),
            "control": asdict(report.control) if report.control else None,
            "tau": report.policy.tau,
            "images": {"total_ms": [round(x.total_ms, 3) for x in t], "offloaded": [x.route.offloaded for x in t],
                       "tau": [round(x.tau, 6) for x in t], "link": [x.link for x in t],
                       "correct": [x.pred == x.label for x in t], "degraded": [x.degraded for x in t],
                       "edge_mj": [round(edge_mj_per_image([x], edge, net), 4) for x in t]},
            "edge_mj": edge_mj_per_image(t, edge, net), "radio": radio}


def windows(values: list[float], start: int, end: int | None = None) -> list[list[float]]:
    end = len(values) if end is None else end
    return [values[i:i + WINDOW] for i in range(start, end - WINDOW + 1, WINDOW)]


def p95s(run: dict, start: int, end: int | None = None) -> list[float]:
    return [float(np.percentile(w, 95)) for w in windows(run["images"]["total_ms"], start, end)]


def offload_windows(run: dict, start: int) -> list[float]:
    return [100 * float(np.mean(w)) for w in windows(run["images"]["offloaded"], start)]


def accuracy(run: dict, start: int = 0) -> float:
    return 100 * float(np.mean(run["images"]["correct"][start:]))


def one_repeat(args, r: int, bundle: Path, images: Path, out: Path, work: Path, say) -> None:
    n = args.images
    third = n // 3
    out.mkdir(parents=True, exist_ok=True)
    from askexpert.costs.profiles import edge_speed

    base = EdgeSettings(system=bundle, threads=edge_speed(args.device).threads,
                        connection=Connection(server=None, timeout_s=2.0),
                        inputs=Inputs(sources=[str(images)], batch_size=1))  # the device's threads on its one core
    wifi = parse_link("wifi")
    # plan: build-system --p95-latency on wifi, then the edge at the chosen point, in the same placement (a new
    # placement moves the emulated device's speed by itself: docs/testbed.md)
    import shutil

    with EmulatedEdge(args.device) if "plan" in args.scenarios else nullcontext() as edge:
        for budget in args.budgets if "plan" in args.scenarios else []:
            target = work / f"repeat-{r}-plan-{budget:g}"
            if (out / f"plan-{budget:g}.json").is_file():
                continue
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(bundle, target)
            edge.recalibrate(f"plan {budget}")
            planned, choice, parts, placement = plan_bundle(target, p95_ms=budget, device=args.device, link=wifi,
                                                            edge=edge)
            with ServerProcess(planned.root, threads=1, cpus=edge.server_cores, extra_args=["--no-general"]) as url:
                edge.recalibrate(f"plan {budget} run")  # as before every measurement: the host's speed drifts
                rep = edge.call(run_edge, s=base.with_(system=planned.root, server=url, link=wifi, limit=None))
            row = record(rep, kind="plan", budget=budget, predicted=choice.prediction.model_dump(),
                         point=choice.point.model_dump(), placement=placement.to_dict(),
                         parts={"edge_ms": list(parts.edge_ms), "offload_ms": [list(o) for o in parts.offload_ms]})
            (out / f"plan-{budget:g}.json").write_text(json.dumps(row))
            say(f"repeat {r} plan {budget:g} ms: predicted p95 {choice.prediction.p95_ms:.1f} ms, measured "
                f"{rep.summary.latency_ms.p95:.1f}; edge {choice.prediction.edge_mj:.1f} vs {row['edge_mj']:.1f} mJ")
    if not {"link", "drift", "load"} & set(args.scenarios):
        return
    schedule = parse_link_arg(f"wifi@0,lte@{third}")
    drift = parse_corruption(f"{args.corruption}@{third}")
    m = open_system(bundle).manifest
    with EmulatedEdge(args.device) as edge, ServerProcess(bundle, threads=1, cpus=edge.server_cores,
                                                          extra_args=["--no-general"]) as url:
        say(f"repeat {r}: {edge.placement.describe()}")
        base = base.with_(server=url)

        def run(name: str, settings: EdgeSettings, **extra) -> dict:
            path = out / f"{name}.json"
            if path.is_file():
                return json.loads(path.read_text())
            edge.recalibrate(name)
            t0 = time.perf_counter()
            rep = edge.call(run_edge, s=settings)
            row = record(rep, kind=name, wall_s=time.perf_counter() - t0, placement=edge.placement.to_dict(), **extra)
            path.write_text(json.dumps(row))
            s = rep.summary
            say(f"repeat {r} {name}: accuracy {s.accuracy:.2f}%, offload {s.offload_rate:.1f}%, p95 "
                f"{s.latency_ms.p95:.1f} ms ({row['wall_s']:.0f} s)")
            return row

        def slo_pair(prefix: str, **extra) -> None:
            fixed = run(f"{prefix}-fixed", base.with_(link=schedule), **extra)
            before, after = p95s(fixed, 0, third), p95s(fixed, third)
            slo = round((statistics.median(before) + statistics.median(after)) / 2, 1)
            run(f"{prefix}-adaptive", base.with_(link=schedule, slo_p95_ms=slo), slo=slo, **extra)

        if "link" in args.scenarios:
            slo_pair("link")
        rate = m.routing.operating_point.val_offload_rate / 100
        if "drift" in args.scenarios:
            run("drift-fixed", base.with_(link=wifi, corrupt=drift), corruption=drift.describe())
            run("drift-tracked", base.with_(link=wifi, corrupt=drift, target_offload=rate),
                corruption=drift.describe(), target=rate)
        shape = (m.input.channels, m.input.size, m.input.size)
        if args.clients > 1 and "load" in args.scenarios:
            with CompetingLoad(url, clients=args.clients - 1, experts=[e.id for e in m.experts], shape=shape,
                               think_ms=args.think_ms, cpus=edge.server_cores) as load:
                slo_pair("load", clients=args.clients)
            say(f"repeat {r}: the competing clients sent {load.stats.requests} requests "
                f"({load.stats.rate:.0f}/s, {load.stats.failures} failed)")


def trace_runs(args, bundle: Path, images: Path, out: Path, say) -> None:
    """Scenario (d): each recorded link for the whole run; fixed tau, then the SLO and the energy controller
    held at the fixed run's median window (a run already saved is kept)."""
    from askexpert.costs.profiles import edge_speed

    out.mkdir(parents=True, exist_ok=True)
    base = EdgeSettings(system=bundle, threads=edge_speed(args.device).threads,
                        connection=Connection(server=None, timeout_s=5.0),
                        inputs=Inputs(sources=[str(images)], batch_size=1), control=Control(radio="cellular"))
    with EmulatedEdge(args.device) as edge, ServerProcess(bundle, threads=1, cpus=edge.server_cores,
                                                          extra_args=["--no-general"]) as url:
        say(edge.placement.describe())
        for name in args.trace_links:
            link = parse_link(f"trace:{args.traces / name}")

            def run(kind: str, settings: EdgeSettings, _name=name, _link=link, **extra) -> dict:
                path = out / f"trace-{_name}-{kind}.json"
                if path.is_file():
                    return json.loads(path.read_text())
                edge.recalibrate(f"{_name} {kind}")
                fresh = parse_link(f"trace:{args.traces / _name}")  # each run from the trace's start, empty queues
                rep = edge.call(run_edge, s=settings.with_(server=url, link=fresh))
                row = record(rep, radio="cellular", kind=kind, trace=_link.describe(), **extra)
                path.write_text(json.dumps(row))
                say(f"{_name} {kind}: accuracy {rep.summary.accuracy:.2f}%, offload {rep.summary.offload_rate:.1f}%, "
                    f"p95 {rep.summary.latency_ms.p95:.1f} ms, edge {row['edge_mj']:.1f} mJ an image")
                return row

            fixed = run("fixed", base)
            slo = round(statistics.median(p95s(fixed, 0)), 1)
            budget = round(statistics.median(float(np.mean(w)) for w in windows(fixed["images"]["edge_mj"], 0)), 2)
            run("slo", base.with_(slo_p95_ms=slo), slo=slo)
            run("energy", base.with_(energy_budget_mj=budget), budget=budget)


def summarize_traces(out: Path) -> str:
    """Scenario (d)'s table: windows within the SLO and within the energy budget, each controller beside fixed tau."""
    files = sorted(out.glob("repeat-*/trace-*-fixed.json"))
    if not files:
        return ""
    lines = ["", "| recorded link | edge | SLO ms | windows within the SLO | energy budget mJ | windows within the "
             "budget | offload % | accuracy % | p95 ms |", "|---|---|---|---|---|---|---|---|---|"]
    for fixed_path in files:
        name = fixed_path.name[len("trace-"):-len("-fixed.json")]
        rows = {k: json.loads((fixed_path.parent / f"trace-{name}-{k}.json").read_text())
                for k in ("fixed", "slo", "energy") if (fixed_path.parent / f"trace-{name}-{k}.json").is_file()}
        slo = rows.get("slo", {}).get("slo")
        budget = rows.get("energy", {}).get("budget")
        for kind, row in rows.items():
            w_p95 = p95s(row, 0)
            w_mj = [float(np.mean(w)) for w in windows(row["images"]["edge_mj"], 0)]
            within_slo = f"{100 * np.mean([v <= slo for v in w_p95]):.0f}%" if slo else "-"
            within_mj = f"{100 * np.mean([v <= budget for v in w_mj]):.0f}%" if budget else "-"
            s = row["summary"]
            lines.append(f"| {name} | {kind} | {slo or '-'} | {within_slo} | {budget or '-'} | {within_mj} | "
                         f"{s['offload_rate']:.1f} | {s['accuracy']:.2f} | {s['latency_ms']['p95']:.1f} |")
    return "\n".join(lines)


def summarize(out: Path, images: int) -> str:
    third = images // 3
    repeats = sorted(p for p in out.glob("repeat-*") if p.is_dir())
    runs = [{f.stem: json.loads(f.read_text()) for f in p.glob("*.json")} for p in repeats]
    lines = [f"{len(runs)} repeats, {images} test images a run, windows of {WINDOW} images; the change at image "
             f"{third}.", ""]
    lines += ["| scenario | edge | SLO ms | windows within the SLO after the change | p95 ms before / after "
              "(median window) | offload % before / after | accuracy % (all / after) |",
              "|---|---|---|---|---|---|---|"]
    for scenario in ("link", "load"):
        for kind in ("fixed", "adaptive"):
            rows = [x[f"{scenario}-{kind}"] for x in runs if f"{scenario}-{kind}" in x]
            if not rows:
                continue
            slos = [x[f"{scenario}-adaptive"]["slo"] for x in runs if f"{scenario}-adaptive" in x]
            within = [100 * np.mean([v <= s for v in p95s(row, third)]) for row, s in zip(rows, slos, strict=False)]
            before = [statistics.median(p95s(row, 0, third)) for row in rows]
            after = [statistics.median(p95s(row, third)) for row in rows]
            ob = [100 * np.mean(row["images"]["offloaded"][:third]) for row in rows]
            oa = [100 * np.mean(row["images"]["offloaded"][third:]) for row in rows]
            lines.append(f"| {scenario} | {kind} | {', '.join(f'{s:g}' for s in slos)} | "
                         f"{', '.join(f'{w:.0f}%' for w in within)} | "
                         f"{statistics.mean(before):.1f} / {statistics.mean(after):.1f} | "
                         f"{statistics.mean(ob):.1f} / {statistics.mean(oa):.1f} | "
                         f"{_ms([accuracy(x) for x in rows])} / {_ms([accuracy(x, third) for x in rows])} |")
    settle = 500  # the tracker's window refills in 500 images after the drift
    lines += ["", f"| drift | edge | target offload % | realised offload % from {settle} images after the drift | "
              "its distance to the target, points | 500-image windows within +/- 3 points | offload % before | "
              "accuracy % before / after |", "|---|---|---|---|---|---|---|---|"]
    for kind in ("fixed", "tracked"):
        rows = [x[f"drift-{kind}"] for x in runs if f"drift-{kind}" in x]
        if not rows:
            continue
        target = 100 * runs[0]["drift-tracked"]["target"] if "drift-tracked" in runs[0] else float("nan")
        after = [100 * np.mean(row["images"]["offloaded"][third + settle:]) for row in rows]
        big = [[100 * np.mean(w) for w in _chunks(row["images"]["offloaded"][third + settle:], 500)] for row in rows]
        within = [f"{sum(abs(v - target) <= 3 for v in b)} of {len(b)}" for b in big]
        ob = [100 * np.mean(row["images"]["offloaded"][:third]) for row in rows]
        lines.append(f"| {rows[0]['corruption'].split(' (')[0]} | {kind} | {target:.1f} | {_ms(after)} | "
                     f"{', '.join(f'{a - target:+.1f}' for a in after)} | {', '.join(within)} | {_ms(ob)} | "
                     f"{_ms([100 * np.mean(r['images']['correct'][:third]) for r in rows])} / "
                     f"{_ms([accuracy(r, third) for r in rows])} |")
    lines += ["", "| budget (p95 ms, wifi) | chosen: val offload % | predicted p95 ms | measured p95 ms | error | "
              "predicted edge mJ | measured edge mJ | error |", "|---|---|---|---|---|---|---|---|"]
    budgets = sorted({k for x in runs for k in x if k.startswith("plan-")}, key=lambda k: float(k[5:]))
    for key in budgets:
        for x in runs:
            if key not in x:
                continue
            row = x[key]
            pred, meas = row["predicted"], row["summary"]["latency_ms"]["p95"]
            lines.append(f"| {row['budget']:g} | {row['point']['offload_rate']:.1f} (test "
                         f"{row['summary']['offload_rate']:.1f}) | {pred['p95_ms']:.1f} | {meas:.1f} | "
                         f"{100 * (meas / pred['p95_ms'] - 1):+.1f}% | {pred['edge_mj']:.1f} | {row['edge_mj']:.1f} | "
                         f"{100 * (row['edge_mj'] / pred['edge_mj'] - 1):+.1f}% |")
    for r, run in enumerate(runs):  # every repeat's: SCENARIO-repeat-R.png
        plots(run, out, third, f"-repeat-{r}")
    return "\n".join(lines) + summarize_traces(out)


def _chunks(values: list, n: int) -> list[list]:
    return [values[i:i + n] for i in range(0, len(values) - n + 1, n)]


def _ms(values) -> str:
    values = list(values)
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} +/- {statistics.stdev(values):.2f}"


def rolling(values, n: int = WINDOW) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64)
    return np.array([np.percentile(v[max(0, i - n + 1):i + 1], 95) for i in range(len(v))])


def plots(run: dict, out: Path, third: int, suffix: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for scenario, pair in (("link", ("link-fixed", "link-adaptive")), ("load", ("load-fixed", "load-adaptive")),
                           ("drift", ("drift-fixed", "drift-tracked"))):
        if not all(k in run for k in pair):
            continue
        fig, axes = plt.subplots(3, 1, figsize=(9, 7.5), sharex=True)
        for key in pair:
            row = run[key]
            im = row["images"]
            x = np.arange(len(im["tau"]))
            label = key.split("-")[1]
            axes[0].plot(x, im["tau"], label=label)
            axes[1].plot(x, rolling(im["total_ms"]), label=label)
            off = np.convolve(np.asarray(im["offloaded"], dtype=float), np.ones(WINDOW) / WINDOW, mode="full")[:len(x)]
            axes[2].plot(x, 100 * off, label=label)
        if scenario != "drift":
            axes[1].axhline(run[pair[1]]["slo"], color="k", ls="--", lw=1, label="SLO")
        else:
            axes[2].axhline(100 * run[pair[1]]["target"], color="k", ls="--", lw=1, label="target")
        for ax in axes:
            ax.axvline(third, color="grey", lw=1)
            ax.legend(loc="upper right", fontsize=8)
        axes[0].set_ylabel("tau")
        axes[1].set_ylabel(f"p95 of the last {WINDOW} (ms)")
        axes[2].set_ylabel(f"offload % (last {WINDOW})")
        axes[2].set_xlabel("image")
        title = {"link": "wifi, then lte", "load": "wifi, then lte; 16 edges share the server",
                 "drift": run["drift-fixed"].get("corruption", "corrupted inputs").split(" (")[0]}[scenario]
        axes[0].set_title(f"{scenario}: {title} (from image {third})")
        fig.tight_layout()
        fig.savefig(out / f"{scenario}{suffix}.png", dpi=110)
        plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--generalist", type=Path, help="the generalist's run directory")
    ap.add_argument("--experts", type=Path, help="an expert run directory")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--images", type=int, default=3000)
    ap.add_argument("--device", default="rpi4")
    ap.add_argument("--clients", type=int, default=16, help="edges sharing the server in (b), this one included")
    ap.add_argument("--think-ms", type=float, default=30.0, help="each competing client's mean pause between requests")
    ap.add_argument("--corruption", default="gaussian_noise:5")
    ap.add_argument("--budgets", type=float, nargs="+", default=[25.0, 40.0], help="p95 budgets (ms) on wifi to plan")
    ap.add_argument("--scenarios", nargs="+", default=["plan", "link", "drift", "load"],
                    choices=["plan", "link", "drift", "load", "trace"],
                    help="what each repeat runs (a run already saved is kept)")
    ap.add_argument("--out", type=Path, default=OUT, help="the runs' JSON, the summary and the plots")
    ap.add_argument("--work", type=Path, default=Path("runs/operating-points"),
                    help="the bundles and the test images (not committed)")
    ap.add_argument("--summary", action="store_true", help="only summarise the saved repeats")
    ap.add_argument("--traces", type=Path, default=Path(__file__).parents[2] / "shared" / "traces",
                    help="the recorded links' folder (Mahimahi files)")
    ap.add_argument("--trace-links", nargs="+", default=["Verizon-LTE-short", "ATT-LTE-driving-2016"])
    args = ap.parse_args()
    console = stdout_console()
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.summary:
        if args.generalist is None or args.experts is None:
            ap.error("--generalist and --experts name the runs to build the bundle from (or pass --summary)")
        from askexpert.system.build import Operating, build_system

        bundle = args.work / "bundle"
        if not (bundle / "system.json").is_file():
            build_system(args.generalist, args.experts, bundle, Operating(offload=0.3), overwrite=True)
        images = test_images(bundle, args.images, args.work / "test.npz")
        info = machine_info()
        (args.out / "machine.json").write_text(json.dumps({"machine": info, "command": " ".join(sys.argv)}, indent=1))
        console.log(f"{describe(info)}; {args.repeats} repeats of {args.images} images on {args.device}")
        for r in range(args.repeats):
            one_repeat(args, r, bundle, images, args.out / f"repeat-{r}", args.work, console.log)
            if "trace" in args.scenarios:
                trace_runs(args, bundle, images, args.out / f"repeat-{r}", console.log)
    text = summarize(args.out, args.images)
    (args.out / "summary.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()

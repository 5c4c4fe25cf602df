"""Benchmark: the reference paper's table on Fashion-MNIST, seed by seed, through the real code path.

    python benchmarks/experts_table.py --seeds 0 1 2

For each seed: the edge generalist (configs/generalist-fmnist.yaml), the general medium model
(general-fmnist.yaml), a 3-expert partition from the generalist's validation confusion, static
experts (experts-static-fmnist.yaml) and progressive experts (experts-progressive-fmnist.yaml), then
the offline system evaluation with tau chosen on validation for 30% offload. Finished runs are
reused and interrupted ones resumed, so the command can be stopped and restarted at will.
Writes benchmarks/results/<date>-<host>-experts-table.json and prints the Markdown table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from askexpert.bench.machine import describe, machine_info
from askexpert.bench.offline import evaluate_system
from askexpert.config import load_run_config
from askexpert.training import train_generalist
from askexpert.training.experts import train_experts
from askexpert.training.partition import make_partition


def _named(config: str, seed: int, out: str, extra: list[str]):
    cfg = load_run_config(config, [f"output_dir={out}", f"train.seed={seed}", *extra])
    return cfg.model_copy(update={"name": f"{cfg.name}-seed{seed}"})


def run_seed(seed: int, out: str, args) -> dict:
    timings = {}
    t0 = time.perf_counter()
    generalist = train_generalist(_named("generalist-fmnist", seed, out, args.set_generalist), resume=True)
    timings["generalist_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    general = train_experts(_named("general-fmnist", seed, out, args.set_general), resume=True)
    timings["general_s"] = time.perf_counter() - t0
    partition_file = Path(out) / f"partition-seed{seed}.json"
    if not partition_file.is_file():
        make_partition(generalist.run_dir, 3).save(partition_file)
    runs = {}
    for strategy, overrides in (("static", args.set_static), ("progressive", args.set_progressive)):
        t0 = time.perf_counter()
        cfg = _named(f"experts-{strategy}-fmnist", seed, out,
                     [f"experts.init={general.run_dir}", f"experts.partition={partition_file}", *overrides])
        runs[strategy] = train_experts(cfg, resume=True).run_dir
        timings[f"{strategy}_s"] = time.perf_counter() - t0
    report = evaluate_system(generalist.run_dir, general.run_dir, runs, headline_rate=args.offload)
    report["timings"] = timings
    report["partition"] = json.loads(partition_file.read_text())["experts"]
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--output-dir", default="runs/bench")
    ap.add_argument("--offload", type=float, default=0.3)
    for part in ("generalist", "general", "static", "progressive"):
        ap.add_argument(f"--set-{part}", action="append", default=[], metavar="KEY=VALUE",
                        help=f"override a key of the {part} config")
    ap.add_argument("--results", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args()
    info = machine_info()
    reports = {seed: run_seed(seed, args.output_dir, args) for seed in args.seeds}
    args.results.mkdir(parents=True, exist_ok=True)
    out = args.results / f"{info['date']}-{info['host']}-experts-table.json"
    out.write_text(json.dumps({"machine": info, "command": "python benchmarks/experts_table.py "
                               + " ".join(sys.argv[1:]), "seeds": reports}, indent=1))
    print(f"\nmachine: {describe(info)}; seeds {args.seeds}; results: {out}")
    print(table(reports, args.offload))


def _ms(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} +/- {statistics.stdev(values):.2f}"


def table(reports: dict, offload: float) -> str:
    """The reference table: mean +/- std over seeds of test accuracy, overall and on the offloaded."""
    rows = [("generalist alone", lambda r: r["baselines"]["generalist"]["accuracy"],
             lambda r: r["baselines"]["generalist"]["offloaded_accuracy"], lambda r: 0.0),
            ("general medium model alone (everything offloaded)", lambda r: r["baselines"]["general"]["accuracy"],
             lambda r: r["baselines"]["general"]["offloaded_accuracy"], lambda r: 100.0)]
    for label in ("static", "progressive", "general model as the expert"):
        rows.append((f"collaborative, {label}" + (" experts" if label in ("static", "progressive") else ""),
                     lambda r, lb=label: r["headline"][lb]["test"]["accuracy"],
                     lambda r, lb=label: r["headline"][lb]["test"]["offloaded_accuracy_system"],
                     lambda r, lb=label: r["headline"][lb]["test"]["offload_rate"]))
    lines = [f"| system (test, tau for {100 * offload:.0f}% offload on validation) | overall % | on the offloaded % "
             "| offload % |", "|---|---|---|---|"]
    for label, overall, offloaded, rate in rows:
        rs = list(reports.values())
        lines.append(f"| {label} | {_ms([overall(r) for r in rs])} | {_ms([offloaded(r) for r in rs])} | "
                     f"{_ms([rate(r) for r in rs])} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()

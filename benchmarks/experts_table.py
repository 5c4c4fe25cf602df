"""Benchmark: the reference paper's table on Fashion-MNIST, seed by seed, through the real code path.

    python benchmarks/experts_table.py --profile cpu --seeds 0          # one seed on 2 CPU cores (~40 min)
    python benchmarks/experts_table.py --profile cpu --seeds 1 2 --git-commit
    python benchmarks/experts_table.py --profile cpu --summary          # aggregate the committed seeds
    python benchmarks/experts_table.py --profile gpu --seeds 0 1 2      # the full-scale version (a GPU)

For each seed: the edge generalist, the general near-edge model, a 3-expert partition from the
generalist's validation confusion, static and progressive experts from the general model at equal
budget, then the offline system evaluation with tau chosen on validation for 30% offload. Profiles:

- ``cpu``: the faithful miniature for 2 CPU cores (configs ``*-fmnist-cpu``): edge ViT d64 x 4,
  near-edge ViT d128 x 4 (3.8x the FLOPs), 14 epochs each, experts 2 passes, progressive experts
  drawing what the generalist's router will send them;
- ``gpu``: the full-scale configs (``generalist-fmnist``, ``general-fmnist``, ``experts-*-fmnist``),
  progressive experts router-aware as in ``cpu``;
- ``smoke``: the ``cpu`` profile on a few hundred images for one epoch (the test suite runs it).

Each seed's result is written to results/experts-table-<profile>/seed<N>.json as soon as
that seed finishes (``--git-commit`` also commits the file), and the summary aggregates every seed
file present, so seeds can be produced over several sittings. Finished runs are reused and
interrupted ones resumed, so the command can be stopped and restarted at will.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

from askexpert.system.offline import evaluate_system
from askexpert.system.pipeline import ExpertsStep, PipelineSpec, train_system
from askexpert_lab.bench.machine import describe, machine_info

_SMALL = ["data.train_subset=400", "data.val_subset=200", "data.test_subset=200"]
PROFILES = {
    "cpu": {"configs": {"generalist": "generalist-fmnist-cpu", "general": "general-fmnist-cpu",
                        "static": "experts-static-fmnist-cpu", "progressive": "experts-progressive-fmnist-cpu"},
            "router": True, "overrides": {}},
    "gpu": {"configs": {"generalist": "generalist-fmnist", "general": "general-fmnist",
                        "static": "experts-static-fmnist", "progressive": "experts-progressive-fmnist"},
            "router": True, "overrides": {}},
    "smoke": {"configs": {"generalist": "generalist-fmnist-cpu", "general": "general-fmnist-cpu",
                          "static": "experts-static-fmnist-cpu", "progressive": "experts-progressive-fmnist-cpu"},
              "router": True,
              "overrides": {"generalist": [*_SMALL, "train.epochs=2"], "general": [*_SMALL, "train.epochs=2"],
                            "static": [*_SMALL, "experts.passes=1"], "progressive": [*_SMALL, "experts.passes=1"]}},
}
PARTS = ("generalist", "general", "static", "progressive")


def pipeline(seed: int, profile: dict, extra: dict[str, list[str]]) -> PipelineSpec:
    """The seed's system: every run named ``<config name>-seed<N>``, the progressive experts router-aware."""
    configs = profile["configs"]

    def overrides(part: str) -> tuple[str, ...]:
        return (*profile["overrides"].get(part, []), *extra.get(part, []))

    return PipelineSpec(
        configs["generalist"], configs["general"],
        tuple(ExpertsStep(s, configs[s], overrides(s), router=s == "progressive" and profile["router"])
              for s in ("static", "progressive")),
        common=(f"train.seed={seed}",), generalist_overrides=overrides("generalist"),
        general_overrides=overrides("general"), suffix=f"-seed{seed}")


def run_seed(seed: int, out: str, profile: dict, extra: dict[str, list[str]], offload: float) -> dict:
    """Train (or reuse) every model of one seed and evaluate the systems; timings per stage."""
    started = time.perf_counter()
    trained = train_system(pipeline(seed, profile, extra), Path(out))
    t0 = time.perf_counter()
    report = asdict(evaluate_system(trained.generalist, trained.general, trained.experts, headline_rate=offload,
                                  headline_k=None))  # the best k on validation, as published
    timings = {f"{part}_s": seconds for part, seconds in trained.seconds.items()}
    timings["evaluation_s"] = time.perf_counter() - t0
    timings["total_s"] = time.perf_counter() - started
    report["timings"] = timings
    report["reused_runs"] = trained.reused
    report["partition"] = json.loads(trained.partition.read_text())["experts"]
    report["models"] = {part: _model_record(path) for part, path in
                        (("generalist", trained.generalist), ("general", trained.general))}
    report["experts"] = {s: json.loads((d / "experts.json").read_text())["experts"] for s, d in trained.experts.items()}
    return report


def _model_record(run_dir: Path) -> dict:
    m = json.loads((run_dir / "metrics.json").read_text())
    return {"run": str(run_dir), "parameters": m["model"]["parameters"],
            "flops_per_image": m["model"]["flops_per_image"], "val_top1": m["val"]["top1"],
            "test_top1": m["test"]["top1"], "images_per_s": m["train"]["images_per_s"],
            "precision": m["train"].get("precision"), "train_seconds": m["train"]["seconds"]}


def seed_dir(results: Path, profile: str) -> Path:
    return results / f"experts-table-{profile}"


def load_seeds(directory: Path) -> dict[int, dict]:
    """Every ``seed<N>.json`` in ``directory``, by seed."""
    seeds = {}
    for f in sorted(directory.glob("seed*.json")):
        seeds[int(f.stem[4:])] = json.loads(f.read_text())
    return dict(sorted(seeds.items()))


def git_commit(path: Path, message: str) -> None:
    """Commit one result file; a failure (no repository, nothing to commit) is reported, not fatal."""
    try:
        subprocess.run(["git", "add", str(path)], check=True, capture_output=True, text=True)
        subprocess.run(["git", "commit", "-m", message, "--", str(path)], check=True, capture_output=True, text=True)
        print(f"committed {path}", flush=True)
    except (OSError, subprocess.CalledProcessError) as err:
        detail = getattr(err, "stderr", "") or str(err)
        print(f"could not commit {path}: {detail.strip()}", file=sys.stderr)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", choices=sorted(PROFILES), default="cpu")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--summary", action="store_true", help="train nothing: aggregate the seed files present")
    ap.add_argument("--git-commit", action="store_true", help="commit each seed's result file when it is written")
    ap.add_argument("--output-dir", default=None, help="parent of the run directories (default runs/table-PROFILE)")
    ap.add_argument("--offload", type=float, default=0.3)
    for part in PARTS:
        ap.add_argument(f"--set-{part}", action="append", default=[], metavar="KEY=VALUE",
                        help=f"override a key of the {part} config")
    ap.add_argument("--results", type=Path, default=Path(__file__).parents[1] / "results")
    args = ap.parse_args()
    out = args.output_dir or f"runs/table-{args.profile}"
    directory = seed_dir(args.results, args.profile)
    extra = {part: getattr(args, f"set_{part}") for part in PARTS}
    command = "python benchmarks/experts_table.py " + " ".join(sys.argv[1:])
    if not args.summary:
        directory.mkdir(parents=True, exist_ok=True)
        for seed in args.seeds:
            info = machine_info()
            report = run_seed(seed, out, PROFILES[args.profile], extra, args.offload)
            path = directory / f"seed{seed}.json"
            path.write_text(json.dumps({"machine": info, "profile": args.profile, "seed": seed, "command": command,
                                        "overrides": extra, **report}, indent=1))
            print(f"seed {seed}: {report['timings']['total_s'] / 60:.1f} min on {describe(info)}; {path}", flush=True)
            if args.git_commit:
                git_commit(path, f"Reference table ({args.profile} profile): seed {seed}")
    seeds = load_seeds(directory)
    if not seeds:
        raise SystemExit(f"no seed results in {directory}: run without --summary first")
    text = summary(seeds, args.offload)
    (directory / "summary.md").write_text(text + "\n")
    print("\n" + text)


def _ms(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} +/- {statistics.stdev(values):.2f}"


def _mean(values: list[float]) -> float:
    return statistics.mean(values)


ROWS = (
    ("generalist alone (edge)", lambda r: r["baselines"]["generalist"]["accuracy"],
     lambda r: r["baselines"]["generalist"]["offloaded_accuracy"], lambda r: 0.0),
    ("general model alone (everything offloaded)", lambda r: r["baselines"]["general"]["accuracy"],
     lambda r: r["baselines"]["general"]["offloaded_accuracy"], lambda r: 100.0),
    *[(f"collaborative, {label}", lambda r, lb=key: r["headline"][lb]["test"]["accuracy"],
       lambda r, lb=key: r["headline"][lb]["test"]["offloaded_accuracy_system"],
       lambda r, lb=key: r["headline"][lb]["test"]["offload_rate"])
      for key, label in (("static", "static experts"), ("progressive", "progressive experts"),
                         ("general model as the expert", "general model as the expert"))],
)


def table(reports: dict, offload: float) -> str:
    """The reference table: mean +/- std over seeds of test accuracy, overall and on the offloaded."""
    lines = [f"| system (test, tau for {100 * offload:.0f}% offload on validation) | overall % | on the offloaded % "
             "| offload % |", "|---|---|---|---|"]
    rs = list(reports.values())
    for label, overall, offloaded, rate in ROWS:
        lines.append(f"| {label} | {_ms([overall(r) for r in rs])} | {_ms([offloaded(r) for r in rs])} | "
                     f"{_ms([rate(r) for r in rs])} |")
    return "\n".join(lines)


def summary(seeds: dict[int, dict], offload: float) -> str:
    """The table, each seed's wall time and machine, and the issue's goals read off the means."""
    rs = list(seeds.values())
    gen = [r["baselines"]["generalist"]["accuracy"] for r in rs]
    general = [r["baselines"]["general"]["accuracy"] for r in rs]
    gen_off = [r["baselines"]["generalist"]["offloaded_accuracy"] for r in rs]
    general_off = [r["baselines"]["general"]["offloaded_accuracy"] for r in rs]
    prog = [r["headline"]["progressive"]["test"] for r in rs]
    stat = [r["headline"]["static"]["test"] for r in rs]
    lines = [table(seeds, offload), "",
             f"seeds {', '.join(map(str, seeds))}; wall time per seed (training + evaluation): " + "; ".join(
                 f"seed {s}: {r['timings']['total_s'] / 60:.1f} min on {describe(r['machine'])}"
                 + (f" (reused: {', '.join(r['reused_runs'])})" if r.get("reused_runs") else "")
                 for s, r in seeds.items()), "",
             "| goal | measured (mean over seeds) | met |", "|---|---|---|"]

    def goal(text: str, value: float, target: float, unit: str = " points") -> None:
        lines.append(f"| {text} | {value:+.2f}{unit} | {'yes' if value >= target else 'no'} |")

    goal("general model >= generalist + 2 points (test, overall)", _mean(general) - _mean(gen), 2.0)
    goal("general model > generalist on the images the generalist offloads", _mean(general_off) - _mean(gen_off),
         1e-9)
    goal("progressive collaborative >= generalist + 1.5 overall", _mean([p["accuracy"] for p in prog]) - _mean(gen),
         1.5)
    goal("progressive >= static + 2 points on the offloaded images",
         _mean([p["offloaded_accuracy_system"] for p in prog]) - _mean([s["offloaded_accuracy_system"] for s in stat]),
         2.0)
    goal("progressive >= static + 0.5 overall",
         _mean([p["accuracy"] for p in prog]) - _mean([s["accuracy"] for s in stat]), 0.5)
    lines.append(f"| offload rate on test (tau for {100 * offload:.0f}% on validation) | "
                 f"{_mean([p['offload_rate'] for p in prog]):.1f}% | - |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()

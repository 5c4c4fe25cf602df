"""Benchmark: the routing variants on Fashion-MNIST (the 500fix regime) as rows of their own, resumable by seed.

    python benchmarks/routing_rows.py --seeds 0 1 2 --git-commit --threads 1   # the seeds not done yet
    python benchmarks/routing_rows.py --summary          # results/specialists/routing.json, routing.md
    python benchmarks/routing_rows.py --profile smoke --seeds 0 --results /tmp/rows   # a tiny run (minutes)

The 500fix regime's system (:mod:`specialist_recipes`: the edge generalist d64 x 4 and the general model
d128 x 4 trained on 500 images a class, the generalist's 3-expert confusion partition, experts of the
general model's architecture from random weights at equal budget), with three expert sets:

- ``static`` and ``progressive`` (progressive-third at lr 1e-3: the variant and lr the regime's screens
  chose, ``results/specialists/500fix-seed*.json``), on the confusion partition;
- ``static-overlap``: static on an overlapping partition, each class held by up to two of the three experts
  (chosen from the generalist's validation confusions), its larger training cost recorded;

then every routing variant of each set (:mod:`askexpert_lab.bench.routing`: top-3, whole mass, re-routing on the
server to the next expert or the general model, the learned deferral rule, combinations) at 30% offload with
tau on validation, against the general model as the one expert under its own best routing. The han100
capacity map (``capacity_map.py``) runs the same variants; here the task is small enough that a seed is a
unit of about half an hour. A seed's file is written when it finishes (``--git-commit`` commits it) and a rerun
skips it; the summary (:func:`capacity_map.summarise_width`) chooses the experts' routing on validation among
those asking one expert an offload and reports test figures, mean +/- std over seeds, paired differences.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

from capacity_map import GENERAL_ONE, _expert_record, summarise_width, system_record, unit_minutes
from capacity_map import table as map_table
from experts_table import _model_record, git_commit
from specialist_recipes import PER_EXPERT, SETTINGS, Setting, Starts, pipeline

from askexpert.system.offline import evaluate_system
from askexpert.system.pipeline import ExpertsStep, train_system
from askexpert_lab.bench.machine import describe, machine_info
from askexpert_lab.bench.routing import routing_variants

RESULTS = Path(__file__).parents[1] / "results" / "specialists"
REGIME = "500fix"
LR = 1e-3
STEPS = [("static", f"static@{LR:g}"), ("progressive", f"progressive-third@{LR:g}")]
SMOKE = replace(SETTINGS[REGIME], regime="500fix-smoke", data=("data.train_subset=600", "data.val_subset=200",
                                                                 "data.test_subset=200"),
                generalist_epochs=1, general_epochs=1, general_b_epochs=1, passes=2)
OFFLOAD = 0.3


def unit_pipeline(setting: Setting, seed: int):
    """The regime's pipeline for the two confusion-partition sets, plus static experts on the overlap."""
    spec = pipeline(setting, seed, Starts(), STEPS, None)
    static = spec.experts[0]
    overlap = ExpertsStep("static-overlap", static.config,
                          tuple(o + "-overlap" if o.startswith("name=") else o for o in static.overrides),
                          router=static.router, init=static.init, partition="overlap")
    return replace(spec, experts=(*spec.experts, overlap),
                   other_partitions=(("overlap", {**setting.partition, "holders": 2}),))


def run_unit(setting: Setting, seed: int, out: Path) -> dict:
    started = time.perf_counter()
    trained = train_system(unit_pipeline(setting, seed), out)
    t0 = time.perf_counter()
    report = evaluate_system(trained.generalist, trained.general, trained.experts,
                             other_generals={PER_EXPERT: trained.other_generals[PER_EXPERT]}, ks=(3,),
                             rates=(OFFLOAD,), headline_rate=OFFLOAD, headline_k=3)
    routing = routing_variants(trained.generalist, trained.general, trained.experts,
                               one_models={GENERAL_ONE: trained.general}, offload=OFFLOAD)
    return {
        "task": setting.task, "regime": setting.regime, "seed": seed, "setting": asdict(setting),
        "partition": json.loads(trained.partition.read_text())["experts"],
        "partition_overlap": json.loads((out / f"partition-overlap-seed{seed}.json").read_text())["experts"],
        "models": {k: _model_record(p) for k, p in (("generalist", trained.generalist),
                                                    ("general", trained.general))},
        "experts": {label: _expert_record(label, run, report, trained) for label, run in trained.experts.items()},
        "routing": [r.to_json() for r in routing],
        **system_record(report, trained, None, t0, started),
    }


def unit_path(results: Path, regime: str, seed: int) -> Path:
    return results / "routing" / f"{regime}-seed{seed}.json"


def run_units(args, command: str) -> None:
    setting = SMOKE if args.profile == "smoke" else SETTINGS[REGIME]
    out = args.output_dir or Path(f"runs/routing-{setting.regime}")
    for seed in args.seeds:
        path = unit_path(args.results, setting.regime, seed)
        if path.is_file() and not args.force:
            print(f"seed {seed}: finished ({path}), skipped", flush=True)
            continue
        info = machine_info()
        unit = run_unit(setting, seed, out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"machine": info, "command": command, **unit}, indent=1))
        print(f"seed {seed}: {unit_minutes(unit):.1f} min of training and evaluation on {describe(info)}; {path}",
              flush=True)
        if args.git_commit:
            git_commit(path, f"Routing rows, Fashion-MNIST {setting.regime}: seed {seed}")


def summarise(results: Path, regime: str) -> dict:
    units = [json.loads(f.read_text()) for f in sorted((results / "routing").glob(f"{regime}-seed*.json"))]
    if not units:
        raise SystemExit(f"no seed files in {results / 'routing'}: run seeds first "
                         f"(python benchmarks/routing_rows.py --seeds 0 1 2)")
    return {"widths": {regime: summarise_width(units)}}


def merge_into_summary(results: Path, regime: str, summary: dict) -> None:
    """The routing section of the specialists' ``summary.json``: the coverage of every variant, a regime."""
    path = results / "summary.json"
    merged = json.loads(path.read_text()) if path.is_file() else {}
    merged.setdefault("routing", {})[regime] = summary["widths"][regime]["coverage"]
    path.write_text(json.dumps(merged, indent=1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="*", default=[0])
    ap.add_argument("--profile", choices=("cpu", "smoke"), default="cpu")
    ap.add_argument("--summary", action="store_true", help="train nothing: summarise the seed files present")
    ap.add_argument("--force", action="store_true", help="run finished seeds again")
    ap.add_argument("--git-commit", action="store_true", help="commit each seed's file when it is written")
    ap.add_argument("--output-dir", type=Path, default=None, help="run directories (default runs/routing-REGIME)")
    ap.add_argument("--results", type=Path, default=RESULTS)
    ap.add_argument("--threads", type=int, default=None, help="torch threads for this process")
    args = ap.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if not args.summary:
        run_units(args, "python benchmarks/routing_rows.py " + " ".join(sys.argv[1:]))
    regime = SMOKE.regime if args.profile == "smoke" else REGIME
    summary = summarise(args.results, regime)
    (args.results / "routing.json").write_text(json.dumps(summary["widths"][regime], indent=1))
    merge_into_summary(args.results, regime, summary)
    text = (map_table(summary).replace("| width |", "| regime |").replace(" (width W)", "")
            .replace("not run (top-3)", "n/a"))
    (args.results / "routing.md").write_text(text + "\n")
    print("\n" + text)


if __name__ == "__main__":
    main()

"""Screen the reference experiment's levers on validation (never test), through the real CLI.

    python benchmarks/screen_miniature.py --jobs 10 --stage models     # model sizes, lr, budgets
    python benchmarks/screen_miniature.py --jobs 10 --stage experts    # expert recipes at equal budget
    python benchmarks/screen_miniature.py --jobs 10                    # both, one after the other

Stage ``models`` trains edge and medium candidates on the full Fashion-MNIST training split
(54k / 6k validation) at the budgets the 2-core table can afford, and reports each edge/medium
pair's validation accuracy overall and on the 30% of validation images the edge model is least
sure of (temperature-scaled max probability), which are the images the system offloads. Stage
``experts`` takes the screen's reference pair (``--pair``), builds the 3-expert partition from the
edge model's validation confusion, trains static and progressive expert variants at the same
budget, and evaluates each system offline on validation with tau for 30% offload.

Runs are independent processes (``python -m askexpert.cli ...``), ``--jobs`` at a time: on a GPU
machine many small runs share the card; on 2 CPU cores use ``--jobs 1``. Runs resume, so an
interrupted screen continues. Writes results/<date>-<host>-miniature-screen.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from askexpert_lab.bench.machine import describe, machine_info

FULL = ["data.split_seed=0"]
EDGE = "generalist-fmnist"
MEDIUM = "general-fmnist"

# suite -> name -> (config, overrides); names start with "edge-" or "medium-", and every edge/medium
# pair of a suite is reported. "sizes": the first screen (edge and medium sizes, lr, regularisation,
# schedule); "followup": smaller edges, stems with a full-resolution layer, longer medium schedules.
_D64 = "model.kwargs={embed_dim: 64, depth: 4, num_heads: 2"
SUITES = {
    "sizes": {
        "edge-d64x4": (EDGE, [_D64 + "}", "train.epochs=10"]),
        "edge-d96x4": (EDGE, ["model.kwargs={embed_dim: 96, depth: 4, num_heads: 3}", "train.epochs=10"]),
        "edge-d128x4": (EDGE, ["train.epochs=10"]),
        "medium-d128x4-lr2e-3": (MEDIUM, ["model.kwargs={embed_dim: 128, depth: 4, num_heads: 4}",
                                          "train.epochs=10", "train.lr=0.002"]),
        "medium-d192x4-lr1e-3": (MEDIUM, ["model.kwargs={depth: 4}", "train.epochs=10"]),
        "medium-d192x4-lr2e-3": (MEDIUM, ["model.kwargs={depth: 4}", "train.epochs=10", "train.lr=0.002"]),
        "medium-d192x4-lr1e-3-dp0.1": (MEDIUM, ["model.kwargs={depth: 4, drop_path_rate: 0.1}", "train.epochs=10"]),
        "medium-d192x4-lr1e-3-14ep": (MEDIUM, ["model.kwargs={depth: 4}", "train.epochs=14"]),
        "medium-d192x6-lr1e-3": (MEDIUM, ["train.epochs=10"]),
    },
    "followup": {
        "edge-d32x4": (EDGE, ["model.kwargs={embed_dim: 32, depth: 4, num_heads: 2}", "train.epochs=10"]),
        "edge-d48x4": (EDGE, ["model.kwargs={embed_dim: 48, depth: 4, num_heads: 3}", "train.epochs=10"]),
        "edge-d64x2": (EDGE, ["model.kwargs={embed_dim: 64, depth: 2, num_heads: 2}", "train.epochs=10"]),
        "edge-d64x4": (EDGE, [_D64 + "}", "train.epochs=10"]),
        "edge-d64x4-fullres": (EDGE, [_D64 + ", stem_full_res: 1}", "train.epochs=10"]),
        "medium-d128x4-lr1e-3-14ep": (MEDIUM, ["model.kwargs={embed_dim: 128, depth: 4, num_heads: 4}",
                                               "train.epochs=14"]),
        "medium-d128x6-lr1e-3-12ep": (MEDIUM, ["model.kwargs={embed_dim: 128, depth: 6, num_heads: 4}",
                                               "train.epochs=12"]),
        "medium-d192x4-lr1e-3-14ep": (MEDIUM, ["model.kwargs={depth: 4}", "train.epochs=14"]),
        "medium-d192x4-fullres-lr1e-3-10ep": (MEDIUM, ["model.kwargs={depth: 4, stem_full_res: 1}",
                                                       "train.epochs=10"]),
        "medium-d192x4-fullres-lr1e-3-14ep": (MEDIUM, ["model.kwargs={depth: 4, stem_full_res: 1}",
                                                       "train.epochs=14"]),
        "medium-d192x4-lr1e-3-20ep": (MEDIUM, ["model.kwargs={depth: 4}", "train.epochs=20"]),
    },
}

_PROG = "experts-progressive-fmnist"
# name -> (config, overrides); every variant: the same start, partition, passes, lr schedule
EXPERTS = {
    "static": ("experts-static-fmnist", []),
    "progressive (distill 0.5, class-level hard negatives, general model's errors)": (_PROG, []),
    "progressive, no distillation": (_PROG, ["experts.distill=0.0"]),
    "progressive, router-aware draws": (_PROG, ["experts.router={router}"]),
    "progressive, router-aware, strong focus": (_PROG, [
        "experts.router={router}", "experts.hard_negatives=0.8",
        "experts.stages=[{fraction: 0.3333, out_share: 0.3, focus: 0.0}, {fraction: 0.3333, out_share: 0.15, "
        "focus: 0.5}, {fraction: 0.3334, out_share: 0.05, focus: 0.8}]"]),
    "progressive, router-aware, distill 0.8": (_PROG, ["experts.router={router}", "experts.distill=0.8"]),
}


def run(cmd: list[str], log: Path) -> int:
    with log.open("w") as f:
        return subprocess.call([sys.executable, "-m", "askexpert.cli", *cmd], stdout=f, stderr=subprocess.STDOUT)


def sets(overrides: list[str]) -> list[str]:
    return [a for o in overrides for a in ("--set", o)]


def stage_models(args, pool) -> dict:
    jobs = {}
    for name, (config, overrides) in SUITES[args.suite].items():
        what = "generalist" if config == EDGE else "experts"
        cmd = ["train", what, "--config", config, "--name", name, "--output-dir", args.output_dir, "--resume",
               "--seed", str(args.seed), *sets(FULL + overrides + args.set)]
        jobs[name] = pool.submit(run, cmd, Path(args.output_dir) / f"{name}.log")
    return jobs


def stage_experts(args, pool, models: dict) -> None:
    for name in args.pair:  # start as soon as the pair is trained, beside the other model runs
        if name in models:
            models[name].result()
    edge, medium = (Path(args.output_dir) / n for n in args.pair)
    partition = Path(args.output_dir) / "partition.json"
    if not partition.is_file():
        run(["partition", str(edge), "--num-experts", "3", "--out", str(partition)],
            Path(args.output_dir) / "partition.log")
    jobs = []
    for i, (label, (config, overrides)) in enumerate(EXPERTS.items()):
        over = [o.replace("{router}", str(edge)) for o in overrides]
        cmd = ["train", "experts", "--config", config, "--name", f"experts-{i}", "--output-dir", args.output_dir,
               "--resume", "--init", str(medium), "--partition", str(partition), "--seed", str(args.seed),
               "--passes", str(args.passes), *sets(FULL + over + args.set)]
        jobs.append(pool.submit(run, cmd, Path(args.output_dir) / f"experts-{i}.log"))
        print(f"experts-{i}: {label}", flush=True)
    for j in jobs:
        j.result()


def pair_report(edge: Path, medium: Path, rate: float) -> dict:
    import torch

    from askexpert.models import open_checkpoint
    from askexpert.routing import confidence_scores, fit_temperature, tau_for_offload
    from askexpert.training.logits import cached_logits

    (e_logits, labels), (m_logits, m_labels) = (cached_logits(open_checkpoint(p), "val") for p in (edge, medium))
    assert torch.equal(labels, m_labels)
    t = fit_temperature(e_logits, labels)
    conf = confidence_scores(torch.softmax(e_logits / t, 1), "max-prob")
    off = conf < tau_for_offload(conf, rate)

    def acc(z, mask=None):
        ok = z.argmax(1) == labels
        return 100 * float((ok if mask is None else ok[mask]).float().mean())

    return {"edge_val": acc(e_logits), "medium_val": acc(m_logits), "edge_val_offloaded": acc(e_logits, off),
            "medium_val_offloaded": acc(m_logits, off)}


def experts_report(args) -> list[dict]:
    from askexpert.system.offline import evaluate_system

    out = Path(args.output_dir)
    runs = {label: out / f"experts-{i}" for i, label in enumerate(EXPERTS)
            if (out / f"experts-{i}" / "experts.json").is_file()}
    if not runs:
        return []
    report = evaluate_system(out / args.pair[0], out / args.pair[1], runs, ks=(1, 2, 3), rates=(0.3,))
    rows = []
    for label, row in report["headline"].items():
        v = row["val"]
        meta = json.loads((runs[label] / "experts.json").read_text())["experts"] if label in runs else []
        rows.append({"system": label, "k": row["k"], "val_accuracy": v["accuracy"],
                     "val_offloaded_accuracy": v["offloaded_accuracy_system"], "val_offload_rate": v["offload_rate"],
                     "val_subset_accuracy": [e["val"]["subset_accuracy"] for e in meta],
                     "val_other_recall": [e["val"]["other_recall"] for e in meta]})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stage", choices=["models", "experts", "all", "report"], default="all",
                    help="report: only collect what finished runs hold")
    ap.add_argument("--suite", choices=sorted(SUITES), default="sizes", help="which model candidates")
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--passes", type=float, default=2)
    ap.add_argument("--pair", nargs=2, default=["edge-d96x4", "medium-d192x4-lr1e-3"], metavar=("EDGE", "MEDIUM"))
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override in every run")
    ap.add_argument("--output-dir", default="runs/screen")
    ap.add_argument("--results", type=Path, default=Path(__file__).parents[1] / "results")
    args = ap.parse_args()
    Path(args.output_dir).mkdir(parents=True, exist_ok=True)
    info = machine_info()
    t0 = time.perf_counter()
    with ThreadPoolExecutor(args.jobs) as pool:
        models = stage_models(args, pool) if args.stage in ("models", "all") else {}
        if args.stage in ("experts", "all"):
            stage_experts(args, pool, models)
            print(f"experts done after {time.perf_counter() - t0:.0f} s", flush=True)
        for job in models.values():
            job.result()
        print(f"all runs done after {time.perf_counter() - t0:.0f} s", flush=True)
    out_dir = Path(args.output_dir)
    models = {}
    for name in SUITES[args.suite]:
        f = out_dir / name / "metrics.json"
        if f.is_file():
            m = json.loads(f.read_text())
            models[name] = {"val": m["val"]["top1"], "params": m["model"]["parameters"],
                            "mflops": m["model"]["flops_per_image"] / 1e6, "images_per_s": m["train"]["images_per_s"],
                            "precision": m["train"].get("precision"), "final_train_acc": m["train"]["final_train_acc"]}
    pairs = [{"edge": e, "medium": m, **pair_report(out_dir / e, out_dir / m, 0.3)}
             for e in models if e.startswith("edge-") for m in models if m.startswith("medium-")]
    experts = experts_report(args) if args.stage != "models" else []
    args.results.mkdir(parents=True, exist_ok=True)
    out = args.results / f"{info['date']}-{info['host']}-miniature-screen-{args.suite}.json"
    trained_by = command = "python benchmarks/screen_miniature.py " + " ".join(sys.argv[1:])
    if args.stage == "report" and out.is_file():  # keep the record of the command that trained the runs
        previous = json.loads(out.read_text())
        trained_by = previous.get("trained_by", previous.get("command"))
    out.write_text(json.dumps({"machine": info, "suite": args.suite, "seed": args.seed,
                               "seconds": time.perf_counter() - t0,
                               "models": models, "pairs": pairs, "experts": experts,
                               "command": command, "trained_by": trained_by}, indent=1))
    print(f"\nmachine: {describe(info)}; results: {out}")
    print("| model | params | MFLOPs | val % | train acc % | img/s |\n|---|---|---|---|---|---|")
    for name, m in models.items():
        print(f"| {name} | {m['params'] / 1e6:.2f}M | {m['mflops']:.0f} | {m['val']:.2f} | "
              f"{m['final_train_acc']:.1f} | "
              f"{m['images_per_s']:.0f} |")
    print("\n| edge | medium | FLOPs ratio | edge val | medium val | edge on offloaded | medium on offloaded |")
    print("|---|---|---|---|---|---|---|")
    for p in pairs:
        ratio = models[p["medium"]]["mflops"] / models[p["edge"]]["mflops"]
        print(f"| {p['edge']} | {p['medium']} | {ratio:.1f}x | {p['edge_val']:.2f} | {p['medium_val']:.2f} | "
              f"{p['edge_val_offloaded']:.2f} | {p['medium_val_offloaded']:.2f} |")
    if experts:
        print("\n| system (val, 30% offload) | k | overall % | on offloaded % | subset acc per expert | other recall |")
        print("|---|---|---|---|---|---|")
        for r in experts:
            print(f"| {r['system']} | {r['k']} | {r['val_accuracy']:.2f} | {r['val_offloaded_accuracy']:.2f} | "
                  f"{', '.join(f'{a:.1f}' for a in r['val_subset_accuracy'])} | "
                  f"{', '.join(f'{a:.0f}' if a is not None else '-' for a in r['val_other_recall'])} |")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()

"""Benchmark: progressive vs static specialists, from one generic start at equal budget.

    python benchmarks/specialists.py --task han100 --seeds 0 --sweep --results results/han100
    python benchmarks/specialists.py --task han100 --seeds 1 2 --git-commit --results results/han100
    python benchmarks/specialists.py --task fashion-mnist --regime 500fix --seeds 0 1 2 --sweep  # the reviewed recipe
    python benchmarks/specialists.py --task han100 --profile smoke --seeds 0 --sweep  # the test suite's version

``--task han100`` and ``--regime 500fix`` run the reviewed recipe (``benchmarks/specialist_recipes.py``:
kept all-class heads collapsed onto subset + "other", one optimiser, the controls at equal per-expert
and equal system budget, subset accuracy with and without "other"); the Fashion-MNIST regimes ``500``
and ``full`` below are the first recipe, kept to reproduce the earlier table.

    python benchmarks/specialists.py --regime 500 --seeds 0 --sweep   # seed 0 + the screens (~25 min, 2 cores)
    python benchmarks/specialists.py --regime 500 --seeds 1 2 --git-commit
    python benchmarks/specialists.py --regime full --seeds 0 --variant-from 500  # the full training set
    python benchmarks/specialists.py --summary                        # tables, plot, summary.json
    python benchmarks/specialists.py --profile smoke --seeds 0 --sweep  # the test suite's version
    python benchmarks/specialists.py --profile gpu --regime 500 --seeds 0 1 2 --sweep  # longer budgets, a GPU

Per regime and seed, through the real code path (``train_system``, ``evaluate_system``): the edge
generalist (ViT d64 x 4) and the general model (d128 x 4) on the regime's training images, a
3-expert confusion partition (no one-class expert), then experts of the d128 x 4 architecture:

- ``original``: the first recipe, from the trained general model, 2 subset-only passes (reference);
- ``static``, ``static-other``, ``progressive``: from the **same random weights** (``init_from:
  scratch``, one seed for all) with the **same budget** (passes over each subset: the same steps and
  images per expert), static on the subset only, static-other with 30% out-of-subset images
  labelled "other" throughout (Hinton et al.'s specialists), progressive first on every class with
  its true label (a third of the budget), then narrowing to subset + "other" (30%, then 10% of each
  batch from outside), with the variant chosen on validation (``--sweep``: with or without LwF).

The system is evaluated with tau chosen on validation for 30% offload and k = 3, with the control
rows (the general model restricted to the routed expert's classes, oracle routing). Regimes:
``500``: 500 training images a class, stratified and drawn by the seed (data.split_seed = seed, as
the validation split); ``full``: the whole training split. ``--sweep`` (seed 0) also trains the
scratch recipes at a quarter and a half of the budget: validation subset accuracy against passes
(the plot; the progressive curve uses the plain variant below the full budget). Every seed's file
is written when it finishes (``--git-commit`` commits it); the summary reads whatever files exist.
Finished runs are reused, interrupted ones resumed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import asdict
from pathlib import Path

from experts_table import _model_record, git_commit
from specialist_recipes import SETTINGS, UNSCREENED, make_starts, run_seed_v2, screen_v2
from specialist_recipes import SMOKE as V2_SMOKE

from askexpert.system.offline import evaluate_system
from askexpert.system.pipeline import ExpertsStep, PipelineSpec, train_system
from askexpert_lab.bench.machine import describe, machine_info
from askexpert_lab.bench.stats import paired

RESULTS = Path(__file__).parents[1] / "results" / "specialists"
STATIC_CFG = "experts-static-fmnist-cpu"
SCRATCH = ("experts.init_from=scratch", "train.warmup_epochs=null", "train.warmup_fraction=0.05")
NARROW = "{fraction: 0.3333, out_share: 0.3%s}, {fraction: 0.3333, out_share: 0.1%s}"
PROGRESSIVE = {  # screened on validation (--sweep); the chosen one runs as "progressive"
    "progressive-plain": "[{fraction: 0.3334, labels: all}, " + NARROW % ("", "") + "]",
    "progressive-lwf": "[{fraction: 0.3334, labels: all}, " + NARROW % (", lwf: 0.3", ", lwf: 0.3") + "]",
}
SCRATCH_RECIPES = ("static", "static-other", "progressive")
REGIMES = {
    "500": {"data": ("data.train_subset=5000",), "generalist_epochs": 30, "general_epochs": 30, "passes": 24},
    "full": {"data": (), "generalist_epochs": 10, "general_epochs": 10, "passes": 4},
}
GPU_REGIMES = {  # the same recipes at longer budgets, for an accelerator (benchmarks/gpu_session.sh specialists)
    "500": {"data": ("data.train_subset=5000",), "generalist_epochs": 60, "general_epochs": 60, "passes": 60},
    "full": {"data": (), "generalist_epochs": 30, "general_epochs": 30, "passes": 10},
}
SMOKE = {"data": ("data.train_subset=600", "data.val_subset=200", "data.test_subset=200"), "generalist_epochs": 2,
         "general_epochs": 2, "passes": 3,
         "model": ("model.kwargs.depth=1",)}  # one block: what the suite asserts is the plumbing
PAPER = {"subset": 4.12, "overall": 2.76}


def recipe_overrides(recipe: str, passes: float, progressive: str) -> tuple[str, ...]:
    if recipe == "original":
        return ()
    strategy = "progressive" if recipe.startswith("progressive") else recipe
    extra = {"static-other": ("experts.other_share=0.3",)}.get(recipe, ())
    if strategy == "progressive":
        extra = (f"experts.stages={PROGRESSIVE[progressive if recipe == 'progressive' else recipe]}",
                 "experts.hard_negatives=0", "experts.distill=0")
    return (*SCRATCH, f"experts.strategy={strategy}", f"experts.passes={passes:g}", *extra)


def pipeline(regime: dict, seed: int, steps: list[tuple[str, str, tuple[str, ...]]], suffix: str) -> PipelineSpec:
    """The seed's runs; each expert step is (label, run name, overrides): one run name, one run."""
    common = (f"train.seed={seed}", f"data.split_seed={seed}", *regime["data"], *regime.get("model", ()))
    return PipelineSpec(
        "generalist-fmnist-cpu", "general-fmnist-cpu",
        tuple(ExpertsStep(label, STATIC_CFG, (f"name={run}", *over)) for label, run, over in steps),
        common=common, generalist_overrides=(f"train.epochs={regime['generalist_epochs']}",),
        general_overrides=(f"train.epochs={regime['general_epochs']}",), suffix=suffix)


def _expert_rows(run: Path) -> list[dict]:
    return json.loads((run / "experts.json").read_text())["experts"]


def _val_subset(run: Path) -> float:
    return statistics.mean(e["val"]["subset_accuracy"] for e in _expert_rows(run))


def sweep_passes(passes: float) -> list[int]:
    """The smaller budgets of the sweep: a quarter and a half of ``passes`` (at least 2, the fewest a
    progressive expert's stages fit in), without repeats or the full budget itself."""
    return sorted({max(2, round(passes * f)) for f in (0.25, 0.5)} - {round(passes)})


def screen(regime: dict, seed: int, out: Path, passes: float) -> dict:
    """The first seed only: the progressive variants at the full budget and the scratch recipes at
    smaller budgets; every figure on validation. Returns the chosen progressive variant and the curve."""
    steps = [(v, v, recipe_overrides(v, passes, v)) for v in PROGRESSIVE]
    smaller = sweep_passes(passes)
    for p in smaller:
        for recipe in SCRATCH_RECIPES:
            steps.append((f"{recipe}-p{p}", f"{recipe}-p{p}", recipe_overrides(recipe, p, "progressive-plain")))
    trained = train_system(pipeline(regime, seed, steps, f"-seed{seed}"), out)
    variants = {v: _val_subset(trained.experts[v]) for v in PROGRESSIVE}
    chosen = max(variants, key=variants.get)
    curve = {recipe: {str(float(p)): _val_subset(trained.experts[f"{recipe}-p{p}"]) for p in smaller}
             for recipe in SCRATCH_RECIPES}
    return {"variants_val_subset": variants, "chosen": chosen, "curve_val_subset": curve,
            "seconds": trained.seconds}


def run_seed(regime_name: str, regime: dict, seed: int, out: Path, progressive: str, offload: float) -> dict:
    started = time.perf_counter()
    passes = regime["passes"]
    # the chosen progressive variant's run (trained by the screen on the first seed) is the "progressive" row
    steps = [(r, progressive if r == "progressive" else r, recipe_overrides(r, passes, progressive))
             for r in ("original", *SCRATCH_RECIPES)]
    trained = train_system(pipeline(regime, seed, steps, f"-seed{seed}"), out)
    t0 = time.perf_counter()
    report = evaluate_system(trained.generalist, trained.general, trained.experts, ks=(3,), rates=(offload,),
                             headline_rate=offload, headline_k=3)
    recipes = {}
    for label, run in trained.experts.items():
        rows = _expert_rows(run)
        row = report.headline[label]
        recipes[label] = {
            "subset_accuracy_test": report.subset_accuracy[label],
            "subset_accuracy_test_mean": statistics.mean(report.subset_accuracy[label]),
            "subset_accuracy_val_mean": statistics.mean(e["val"]["subset_accuracy"] for e in rows),
            "other_recall_test": [e["test"]["other_recall"] for e in rows],
            "system_accuracy": row.test.accuracy, "offloaded_accuracy": row.test.offloaded_accuracy_system,
            "offload_rate": row.test.offload_rate, "tau": row.tau,
            "oracle_accuracy": report.controls[f"{label}: oracle routing"].test.accuracy,
            "budget": [e.get("budget", {"steps": None, "images": e["images_seen"]}) for e in rows],
            "init_sha256": sorted({e.get("init_sha256", "") for e in rows}),
            "train_seconds": trained.seconds[label],
        }
    restricted = next(k for k in report.controls if k.startswith("general model restricted"))
    return {
        "regime": regime_name, "seed": seed, "passes": passes, "progressive_variant": progressive,
        "partition": json.loads(trained.partition.read_text())["experts"],
        "models": {part: _model_record(path) for part, path in
                   (("generalist", trained.generalist), ("general", trained.general))},
        "baselines": {k: asdict(v) for k, v in report.baselines.items()},
        "recipes": recipes,
        "controls": {"restricted_general_subset_accuracy_test": report.subset_accuracy[restricted],
                     "restricted_general_subset_accuracy_test_mean": statistics.mean(
                         report.subset_accuracy[restricted]),
                     "restricted_general_system_accuracy": report.controls[restricted].test.accuracy,
                     "general_as_expert_system_accuracy":
                         report.headline["general model as the expert"].test.accuracy},
        "timings": {**{f"{k}_s": v for k, v in trained.seconds.items()}, "evaluation_s": time.perf_counter() - t0,
                    "total_s": time.perf_counter() - started},
        "reused_runs": trained.reused,
    }


def _ms(values: list[float]) -> dict:
    return {"mean": statistics.mean(values), "std": statistics.stdev(values) if len(values) > 1 else None,
            "n": len(values)}


V2_KEYS = ("subset_accuracy_test_mean", "subset_accuracy_no_other_test_mean", "subset_accuracy_val_mean",
           "subset_accuracy_no_other_val_mean", "system_accuracy", "offloaded_accuracy", "offload_rate",
           "oracle_accuracy")
OPTIONAL_V2_KEYS = ("routing_hit_rate", "offloaded_generalist_accuracy")  # seed files from before they were recorded
CONTROL_KEYS = ("restricted_general_system_budget_subset_accuracy_test_mean",
                "restricted_general_system_budget_system_accuracy",
                "restricted_general_per_expert_budget_subset_accuracy_test_mean",
                "restricted_general_per_expert_budget_system_accuracy")


def _recipes_v2(rows_by_recipe: dict[str, list[dict]]) -> dict:
    out = {}
    for label, rows in rows_by_recipe.items():
        budget = [b for r in rows for b in r["budget"] if b]
        out[label] = {**{k: _ms([r[k] for r in rows]) for k in V2_KEYS},
                      **{k: _ms([r[k] for r in rows]) for k in OPTIONAL_V2_KEYS if all(k in r for r in rows)},
                      "steps_per_expert": _ms([b["steps"] for b in budget] or [0]),
                      "images_per_expert": _ms([b["images"] for b in budget] or [0]),
                      "wide_images_per_expert": _ms([b.get("wide_images", 0) for b in budget] or [0]),
                      "teacher_images_per_expert": _ms([b.get("teacher_images", 0) for b in budget] or [0])}
    return out


def summarise_v2(seeds: dict[int, dict]) -> dict:
    """One regime of the reviewed recipe: every recipe and control over seeds, and the paired differences."""
    rs = [seeds[s] for s in sorted(seeds)]
    labels = list(rs[0]["recipes"])
    recipes = _recipes_v2({label: [r["recipes"][label] for r in rs] for label in labels})
    c = [r["controls"] for r in rs]
    controls = {k: _ms([x[k] for x in c]) for k in (*CONTROL_KEYS, "general_as_expert_system_accuracy")}
    controls.update(generalist_accuracy=_ms([r["baselines"]["generalist"]["accuracy"] for r in rs]),
                    general_accuracy=_ms([r["baselines"]["general"]["accuracy"] for r in rs]),
                    per_expert_general_test_top1=_ms([r["models"]["per-expert budget"]["test_top1"] for r in rs]))
    col = {label: [r["recipes"][label] for r in rs] for label in labels}

    def diff(a: str, b: str, key: str) -> dict:
        return paired([x[key] for x in col[a]], [x[key] for x in col[b]])

    def vs_control(a: str, key: str, control: str) -> dict:
        return paired([x[key] for x in col[a]], [x[control] for x in c])

    pairs = {}
    for a in (x for x in ("progressive", "progressive-shared") if x in col):
        for key, tag in (("subset_accuracy_test_mean", "subset"), ("subset_accuracy_no_other_test_mean",
                                                                    "subset_no_other"), ("system_accuracy", "system")):
            pairs[f"{a}_minus_static_{tag}"] = diff(a, "static", key)
    for a in labels:
        for budget in ("system_budget", "per_expert_budget"):
            pairs[f"{a}_minus_restricted_{budget}_subset_no_other"] = vs_control(
                a, "subset_accuracy_no_other_test_mean", f"restricted_general_{budget}_subset_accuracy_test_mean")
            pairs[f"{a}_minus_restricted_{budget}_system"] = vs_control(
                a, "system_accuracy", f"restricted_general_{budget}_system_accuracy")
    out = {"task": rs[0]["task"], "seeds": sorted(seeds), "setting": rs[0]["setting"],
           "progressive_variant": rs[0]["progressive_variant"], "lr": rs[0]["lr"], "starts": rs[0].get("starts", []),
           "recipes": recipes, "controls": controls, "paired": pairs,
           "partition_sizes": [len(g) for g in rs[0]["partition"]],
           "wall_minutes_per_seed": {s: seeds[s]["timings"]["total_s"] / 60 for s in sorted(seeds)},
           "machines": sorted({describe(seeds[s]["machine"]) for s in seeds})}
    if all("random" in r for r in rs):
        rlabels = list(rs[0]["random"]["recipes"])
        rc = [r["random"]["controls"] for r in rs]
        rcol = {label: [r["random"]["recipes"][label] for r in rs] for label in rlabels}
        out["random"] = {"recipes": _recipes_v2(rcol), "controls": {k: _ms([x[k] for x in rc]) for k in CONTROL_KEYS},
                         "paired": {f"progressive_minus_static_{tag}": paired(
                             [x[key] for x in rcol["progressive-random"]], [x[key] for x in rcol["static-random"]])
                             for key, tag in (("subset_accuracy_test_mean", "subset"),
                                              ("subset_accuracy_no_other_test_mean", "subset_no_other"),
                                              ("system_accuracy", "system"))}}
    return out


def summarise(directory: Path) -> dict:
    """Mean and std over the seed files present, per regime and recipe, with the paired differences."""
    summary: dict = {"regimes": {}}
    for regime in sorted({f.name.split("-")[0] for f in directory.glob("*-seed*.json")}):
        seeds = {int(f.stem.split("seed")[1]): json.loads(f.read_text())
                 for f in sorted(directory.glob(f"{regime}-seed*.json"))}
        rs = [seeds[s] for s in sorted(seeds)]
        if "setting" in rs[0]:
            summary["regimes"][regime] = summarise_v2(seeds)
            continue
        recipes = {}
        for label in rs[0]["recipes"]:
            rows = [r["recipes"][label] for r in rs]
            budget = [b for r in rows for b in r["budget"]]
            recipes[label] = {
                "subset_accuracy": _ms([r["subset_accuracy_test_mean"] for r in rows]),
                "system_accuracy": _ms([r["system_accuracy"] for r in rows]),
                "offloaded_accuracy": _ms([r["offloaded_accuracy"] for r in rows]),
                "offload_rate": _ms([r["offload_rate"] for r in rows]),
                "oracle_accuracy": _ms([r["oracle_accuracy"] for r in rows]),
                "steps_per_expert": _ms([b["steps"] for b in budget if b.get("steps") is not None] or [0]),
                "images_per_expert": _ms([b["images"] for b in budget]),
                "teacher_images_per_expert": _ms([b.get("teacher_images", 0) for b in budget]),
            }
        prog = [r["recipes"]["progressive"] for r in rs]
        stat = [r["recipes"]["static"] for r in rs]
        c = [r["controls"] for r in rs]
        summary["regimes"][regime] = {
            "seeds": sorted(seeds), "passes": rs[0]["passes"], "recipes": recipes,
            "controls": {**{key: _ms([x[key] for x in c]) for key in (
                             "restricted_general_system_accuracy", "general_as_expert_system_accuracy")},
                         "restricted_general_subset_accuracy": _ms(
                             [x["restricted_general_subset_accuracy_test_mean"] for x in c]),
                         "generalist_accuracy": _ms([r["baselines"]["generalist"]["accuracy"] for r in rs]),
                         "general_accuracy": _ms([r["baselines"]["general"]["accuracy"] for r in rs])},
            "paired": {
                "progressive_minus_static_subset": paired([p["subset_accuracy_test_mean"] for p in prog],
                                                          [s["subset_accuracy_test_mean"] for s in stat]),
                "progressive_minus_static_system": paired([p["system_accuracy"] for p in prog],
                                                          [s["system_accuracy"] for s in stat]),
                "progressive_minus_restricted_general_subset": paired(
                    [p["subset_accuracy_test_mean"] for p in prog],
                    [x["restricted_general_subset_accuracy_test_mean"] for x in c]),
            },
            "wall_minutes_per_seed": {s: seeds[s]["timings"]["total_s"] / 60 for s in sorted(seeds)},
            "machines": sorted({describe(seeds[s]["machine"]) for s in seeds}),
        }
    summary["screens"] = {}
    for f in sorted(directory.glob("*-screen.json")):
        sc = json.loads(f.read_text())
        regime = f.name.split("-")[0]
        main_run = directory / f"{regime}-seed{sc['seed']}.json"
        if main_run.is_file():  # the full budget's point of the curve: the same seed's main runs, on validation
            main = json.loads(main_run.read_text())
            for recipe, points in sc["curve_val_subset"].items():
                if recipe == "progressive" and main.get("progressive_variant", sc["chosen"]) != sc["chosen"]:
                    continue  # the seeds ran another variant (unscreened): the screen's own point stands
                points[str(float(sc["passes"]))] = main["recipes"][recipe]["subset_accuracy_val_mean"]
        summary["screens"][regime] = sc
    return summary


def _ci(p: dict) -> str:
    ci = f" (95% CI {p['ci95'][0]:+.2f} to {p['ci95'][1]:+.2f})" if p["ci95"] else ""
    return f"{p['mean']:+.2f}{ci}; per seed " + ", ".join(f"{v:+.2f}" for v in p["per_seed"])


def table_v2(regime: str, s: dict) -> list[str]:
    st = s["setting"]
    lines = [f"regime {regime} ({s['task']}; seeds {', '.join(map(str, s['seeds']))}; {st['n_experts']} experts of "
             f"{'/'.join(map(str, s['partition_sizes']))} classes; {st['passes']:g} passes a subset; start "
             f"{st['start']}; progressive = {s['progressive_variant']}; lr {s['lr']})", "",
             "| recipe | subsets % | subsets, no 'other' % | system overall % | on offloaded % | offload % | "
             "routed to an expert holding the class % | oracle routing % | steps / expert | images / expert |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for label, r in s["recipes"].items():
        hit = _fmt(r["routing_hit_rate"], 1) if "routing_hit_rate" in r else "n/a"
        lines.append(f"| {label} | {_fmt(r['subset_accuracy_test_mean'])} | "
                     f"{_fmt(r['subset_accuracy_no_other_test_mean'])} | {_fmt(r['system_accuracy'])} | "
                     f"{_fmt(r['offloaded_accuracy'])} | {_fmt(r['offload_rate'], 1)} | {hit} | "
                     f"{_fmt(r['oracle_accuracy'])} | "
                     f"{r['steps_per_expert']['mean']:.0f} | {r['images_per_expert']['mean']:.0f} |")
    c = s["controls"]
    for budget, name in (("system_budget", "equal system budget"), ("per_expert_budget", "equal per-expert budget")):
        lines.append(f"| control: general model restricted to the experts' classes, {name} | "
                     f"{_fmt(c[f'restricted_general_{budget}_subset_accuracy_test_mean'])} | (same) | "
                     f"{_fmt(c[f'restricted_general_{budget}_system_accuracy'])} | | | | | | |")
    lines.append(f"| control: general model as the one expert | | | {_fmt(c['general_as_expert_system_accuracy'])} "
                 "| | | | | | |")
    lines.append(f"| generalist alone / general model alone | | | {_fmt(c['generalist_accuracy'])} / "
                 f"{_fmt(c['general_accuracy'])} | | | | | | |")
    lines.append("")
    for key, p in s["paired"].items():
        lines.append(f"- {key.replace('_', ' ')}: {_ci(p)}")
    if "random" in s:
        lines += ["", "random partition (same sizes, seeded):", "",
                  "| recipe | subsets % | subsets, no 'other' % | system overall % | routed to an expert holding the "
                  "class % | oracle routing % |", "|---|---|---|---|---|---|"]
        for label, r in s["random"]["recipes"].items():
            hit = _fmt(r["routing_hit_rate"], 1) if "routing_hit_rate" in r else "n/a"
            lines.append(f"| {label} | {_fmt(r['subset_accuracy_test_mean'])} | "
                         f"{_fmt(r['subset_accuracy_no_other_test_mean'])} | {_fmt(r['system_accuracy'])} | {hit} | "
                         f"{_fmt(r['oracle_accuracy'])} |")
        rc = s["random"]["controls"]
        lines.append(f"| restricted general, system budget | "
                     f"{_fmt(rc['restricted_general_system_budget_subset_accuracy_test_mean'])} | (same) | "
                     f"{_fmt(rc['restricted_general_system_budget_system_accuracy'])} | | |")
        for key, p in s["random"]["paired"].items():
            lines.append(f"- random partition, {key.replace('_', ' ')}: {_ci(p)}")
    lines.append("\nwall time per seed: " + ", ".join(f"seed {k}: {v:.1f} min" for k, v in
                                                    s["wall_minutes_per_seed"].items())
                 + f" ({'; '.join(s['machines'])})\n")
    return lines


def screen_lines(regime: str, sc: dict, lr: float) -> list[str]:
    """The reviewed recipe's screen (seed 0, validation): the progressive variants (against static, all at the
    setting's ``lr``), the learning rates and the budget sweep, each as the experts' mean subset accuracy."""
    static = sc["lr_val_subset"].get(f"static@{lr:g}")
    no_other = sc.get("variants_val_subset_no_other", {})  # screens from before 2026-12-06 lack it
    lines = [f"screen of {regime} (seed {sc['seed']}, validation, experts' mean subset accuracy %; "
             f"{sc['seconds'] / 60:.1f} min)", "",
             f"| progressive variant (lr {lr:g}) | val subsets % | minus static | no 'other' % | minus static |",
             "|---|---|---|---|---|"]
    base = no_other.get("static")
    for v, a in sc["variants_val_subset"].items():
        b = no_other.get(v)
        lines.append(f"| {v}{' (chosen)' if v == sc['chosen'] else ''} | {a:.2f} | "
                     f"{'' if static is None else f'{a - static:+.2f}'} | {'' if b is None else f'{b:.2f}'} | "
                     f"{'' if b is None or base is None else f'{b - base:+.2f}'} |")
    lines += ["", "| recipe @ lr | val subsets % |", "|---|---|"]
    lines += [f"| {k}{' (chosen)' if float(k.partition('@')[2]) == sc['lr'][k.partition('@')[0]] else ''} | {a:.2f} |"
              for k, a in sc["lr_val_subset"].items()]
    passes = sorted({p for points in sc["curve_val_subset"].values() for p in points}, key=float)
    lines += ["", "| passes a subset | " + " | ".join(sc["curve_val_subset"]) + " |",
              "|---|" + "---|" * len(sc["curve_val_subset"])]
    lines += [f"| {float(p):g} | " + " | ".join(f"{pts[p]:.2f}" if p in pts else "" for pts in
                                              sc["curve_val_subset"].values()) + " |" for p in passes]
    return [*lines, ""]


def table(summary: dict) -> str:
    lines = []
    for regime, sc in summary.get("screens", {}).items():
        if "lr_val_subset" in sc:  # the reviewed recipe's screen (the first recipe's are in the plot)
            lines += screen_lines(regime, sc, summary["regimes"].get(regime, {}).get("setting", {}).get("lr", 1e-3))
    for regime, s in summary["regimes"].items():
        if "setting" in s:
            lines += table_v2(regime, s)
            continue
        lines += [f"regime {regime} (seeds {', '.join(map(str, s['seeds']))}; {s['passes']} passes a subset)", "",
                  "| recipe | experts on their subsets % | system overall % | on offloaded % | offload % | "
                  "oracle routing % | steps / expert | images / expert |", "|---|---|---|---|---|---|---|---|"]
        for label, r in s["recipes"].items():
            lines.append(f"| {label} | {_fmt(r['subset_accuracy'])} | {_fmt(r['system_accuracy'])} | "
                         f"{_fmt(r['offloaded_accuracy'])} | {_fmt(r['offload_rate'], 1)} | "
                         f"{_fmt(r['oracle_accuracy'])} | {r['steps_per_expert']['mean']:.0f} | "
                         f"{r['images_per_expert']['mean']:.0f} |")
        c = s["controls"]
        lines.append(f"| general model restricted to the routed expert's classes | "
                     f"{_fmt(c['restricted_general_subset_accuracy'])} | "
                     f"{_fmt(c['restricted_general_system_accuracy'])} | | | | | |")
        for key, name in (("progressive_minus_static_subset", "progressive - static, subsets"),
                          ("progressive_minus_static_system", "progressive - static, system overall"),
                          ("progressive_minus_restricted_general_subset", "progressive - restricted general, subsets")):
            p = s["paired"][key]
            ci = f" (95% CI {p['ci95'][0]:+.2f} to {p['ci95'][1]:+.2f})" if p["ci95"] else ""
            lines.append(f"\n{name}: {p['mean']:+.2f} points{ci}; per seed "
                         + ", ".join(f"{v:+.2f}" for v in p["per_seed"]))
        lines.append("\nwall time per seed: " + ", ".join(f"seed {k}: {v:.1f} min" for k, v in
                                                        s["wall_minutes_per_seed"].items())
                     + f" ({'; '.join(s['machines'])})\n")
    return "\n".join(lines)


def _fmt(m: dict, digits: int = 2) -> str:
    return f"{m['mean']:.{digits}f}" + (f" +/- {m['std']:.{digits}f}" if m["std"] is not None else "")


def plot(summary: dict, directory: Path) -> Path | None:
    """Validation subset accuracy against passes (seed 0's sweep), one line a scratch recipe."""
    screens = summary.get("screens", {})
    if not screens:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(screens), figsize=(5.5 * len(screens), 4), squeeze=False)
    for ax, (regime, sc) in zip(axes[0], screens.items(), strict=True):
        for recipe, points in sc["curve_val_subset"].items():
            xs = sorted(points, key=float)
            ax.plot([float(x) for x in xs], [points[x] for x in xs], marker="o", label=recipe)
        ax.set_xlabel("budget: passes over each expert's subset")
        ax.set_ylabel("experts' validation accuracy on their subsets %")
        ax.set_title(f"regime {regime}, seed {sc.get('seed', 0)}")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    path = directory / "budget.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_recipes(regime: str, s: dict, directory: Path) -> Path:
    """``recipes-REGIME.png``: each recipe's subset accuracy (argmax without "other") and system accuracy, mean
    and std over the seeds, against the restricted general model at both budgets and the generalist alone."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(s["recipes"])
    c = s["controls"]
    panels = (("subset_accuracy_no_other_test_mean", "experts on their subsets (test, no 'other') %",
               (("system_budget", "restricted general, system budget"),
                ("per_expert_budget", "restricted general, per-expert budget")), "_subset_accuracy_test_mean"),
              ("system_accuracy", f"system overall at ~{s['setting'].get('offload', 0.3) * 100:.0f}% offload (test) %",
               (("system_budget", "restricted general, system budget"),
                ("per_expert_budget", "restricted general, per-expert budget")), "_system_accuracy"))
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for ax, (key, title, controls, suffix) in zip(axes, panels, strict=True):
        means = [s["recipes"][r][key]["mean"] for r in labels]
        stds = [s["recipes"][r][key]["std"] or 0.0 for r in labels]
        ax.bar(range(len(labels)), means, yerr=stds, capsize=4, color="#4c72b0")
        for (budget, name), style in zip(controls, ("--", ":"), strict=True):
            ax.axhline(c[f"restricted_general_{budget}{suffix}"]["mean"], color="#c44e52", ls=style, label=name)
        if key == "system_accuracy":
            ax.axhline(c["generalist_accuracy"]["mean"], color="#55a868", ls="-.", label="generalist alone")
        low = min(means + [c[f"restricted_general_{b}{suffix}"]["mean"] for b, _ in controls]) - 5
        ax.set_ylim(max(0, low), None)
        ax.set_xticks(range(len(labels)), labels, rotation=20)
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=8, loc="best")
    fig.suptitle(f"{regime}: seeds {', '.join(map(str, s['seeds']))} (mean and std)")
    fig.tight_layout()
    path = directory / f"recipes-{regime}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def keep_earlier_times(report: dict, path: Path) -> dict:
    """A seed run again to add recipes (e.g. the random partition) reuses its finished runs, which report
    only the training time they recorded: their step times (with evaluation), and the seed's wall time,
    come from the seed's earlier file."""
    if not report["reused_runs"] or not path.is_file():
        return report
    old = json.loads(path.read_text())
    before, now = old["timings"], report["timings"]
    reused = {f"{label}_s" for label in report["reused_runs"]}
    new_work = sum(v for k, v in now.items() if k not in reused and k not in ("evaluation_s", "total_s"))
    report["timings"] = {**now, **{k: before[k] for k in reused if k in before},
                         "total_s": before["total_s"] + new_work}
    pairs = ((report["recipes"], old.get("recipes", {})),  # the random partition's recipes sit under "random"
             (report.get("random", {}).get("recipes", {}), old.get("random", {}).get("recipes", {})))
    for records, earlier in pairs:
        for label, record in records.items():
            if label in report["reused_runs"] and label in earlier:
                record["train_seconds"] = earlier[label].get("train_seconds")
    report["earlier_run"] = {"command": old.get("command"), "machine": old.get("machine"),
                             "total_s": before["total_s"]}
    return report


def main_v2(args, command: str) -> None:
    """``--task han100`` or ``--regime 500fix``: the reviewed recipe (benchmarks/specialist_recipes.py)."""
    key = "han100" if args.task == "han100" else args.regime
    setting = V2_SMOKE[key] if args.profile == "smoke" else SETTINGS[key]
    if args.threads:  # every run of this process (training and evaluation); each seed file records it
        import torch

        torch.set_num_threads(args.threads)
    out = args.output_dir or Path(f"runs/specialists-{setting.regime}")
    data_root = None
    if args.profile == "smoke" and setting.task == "han100":
        from askexpert_lab.han import build as han_build

        data_root = out / "data"
        han_build.build(data_root, spec=han_build.TINY, workers=2)
    directory = args.results
    screen_file = directory / f"{setting.regime}-screen.json"
    starts = make_starts(setting, data_root, out if args.profile == "smoke" else None)
    for i, seed in enumerate(args.seeds):
        if args.sweep and i == 0:
            sc = screen_v2(setting, starts, out, data_root)
            screen_file.write_text(json.dumps({"seed": 0, "command": command, "machine": machine_info(), **sc},
                                              indent=1))
            print(f"screen: {sc['chosen']} chosen on validation ({sc['variants_val_subset']}); lr {sc['lr']}",
                  flush=True)
        if args.unscreened:
            choice = UNSCREENED
        elif not screen_file.is_file():
            raise SystemExit(f"no screen in {screen_file}: run seed 0 with --sweep first, or pass --unscreened "
                             "for the default variant and lr")
        else:
            choice = json.loads(screen_file.read_text())
        info = machine_info()
        report = run_seed_v2(setting, seed, starts, choice, out, data_root, args.offload)
        path = directory / f"{setting.regime}-seed{seed}.json"
        report = keep_earlier_times(report, path)
        path.write_text(json.dumps({"machine": info, "command": command, **report}, indent=1))
        print(f"{setting.regime} seed {seed}: {report['timings']['total_s'] / 60:.1f} min on {describe(info)}; "
              f"{path}", flush=True)
        if args.git_commit:
            git_commit(path, f"Specialists benchmark ({setting.regime}): seed {seed}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", choices=("fashion-mnist", "han100"), default="fashion-mnist",
                    help="han100: the 100-class Han character task from a pretrained start (askexpert data build "
                    "han100 first)")
    ap.add_argument("--regime", choices=sorted({*REGIMES, "500fix"}), default="500",
                    help="fashion-mnist only: 500 / full (the first recipe), 500fix (the reviewed recipe)")
    ap.add_argument("--profile", choices=("cpu", "gpu", "smoke"), default="cpu",
                    help="cpu: budgets for 2 CPU cores; gpu: longer ones for an accelerator; smoke: a few hundred "
                    "images and a few passes (the test suite)")
    ap.add_argument("--seeds", type=int, nargs="*", default=[0])
    ap.add_argument("--sweep", action="store_true", help="with the first seed: the screens on validation")
    ap.add_argument("--summary", action="store_true", help="train nothing: summarise the seed files present")
    ap.add_argument("--unscreened", action="store_true",
                    help="--task han100 without a screen: progressive-third and lr 1e-3 for every recipe (recorded "
                    "as unscreened in each seed's file)")
    ap.add_argument("--git-commit", action="store_true", help="commit each seed's file when it is written")
    ap.add_argument("--output-dir", type=Path, default=None, help="run directories (default runs/specialists-REGIME)")
    ap.add_argument("--results", type=Path, default=RESULTS)
    ap.add_argument("--offload", type=float, default=0.3)
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads for this process (default: torch's); two seeds side by side on 2 cores "
                    "take --threads 1 each")
    ap.add_argument("--variant-from", default=None, metavar="REGIME",
                    help="without a screen of this regime: the progressive variant chosen in REGIME's (e.g. 500)")
    args = ap.parse_args()
    command = "python benchmarks/specialists.py " + " ".join(sys.argv[1:])
    args.results.mkdir(parents=True, exist_ok=True)
    if not args.summary and (args.task == "han100" or args.regime == "500fix"):
        main_v2(args, command)
        args.summary = True
    # the first recipe's regimes (the reviewed recipe's, e.g. 500fix, have trained above and only summarise here)
    regime = {"smoke": SMOKE, "gpu": GPU_REGIMES.get(args.regime)}.get(args.profile) or REGIMES.get(args.regime)
    name = {"smoke": "smoke", "gpu": f"gpu{args.regime}"}.get(args.profile, args.regime)
    out = args.output_dir or Path(f"runs/specialists-{name}")
    directory = args.results
    screen_file = directory / f"{name}-screen.json"
    if not args.summary:
        for i, seed in enumerate(args.seeds):
            if args.sweep and i == 0:
                t0 = time.perf_counter()
                sc = screen(regime, seed, out, regime["passes"])
                screen_file.write_text(json.dumps({"seed": seed, "passes": regime["passes"], "command": command,
                                                   "machine": machine_info(), **sc,
                                                   "total_s": time.perf_counter() - t0}, indent=1))
                print(f"screen: {sc['chosen']} chosen on validation ({sc['variants_val_subset']})", flush=True)
            source = screen_file if screen_file.is_file() else directory / f"{args.variant_from}-screen.json"
            if not source.is_file():
                raise SystemExit(f"no screen in {screen_file}: run the first seed with --sweep, or pass "
                                 "--variant-from REGIME to use the progressive variant another regime chose")
            chosen = json.loads(source.read_text())["chosen"]
            info = machine_info()
            report = run_seed(name, regime, seed, out, chosen, args.offload)
            report["progressive_chosen_in"] = source.name
            path = directory / f"{name}-seed{seed}.json"
            path.write_text(json.dumps({"machine": info, "command": command, **report}, indent=1))
            print(f"{name} seed {seed}: {report['timings']['total_s'] / 60:.1f} min on {describe(info)}; {path}",
                  flush=True)
            if args.git_commit:
                git_commit(path, f"Specialists benchmark ({name}): seed {seed}")
    summary = summarise(directory)
    if not summary["regimes"]:
        raise SystemExit(f"no seed results in {directory}: run without --summary first")
    (directory / "summary.json").write_text(json.dumps(summary, indent=1))
    if (directory / "map.json").is_file():  # the capacity map's widths and routing (benchmarks/capacity_map.py)
        from capacity_map import merge_into_summary

        merge_into_summary(directory, json.loads((directory / "map.json").read_text()))
    text = table(summary)
    (directory / "summary.md").write_text(text + "\n")
    pictures = [p for p in [plot(summary, directory)] if p]
    pictures += [plot_recipes(regime, s, directory) for regime, s in summary["regimes"].items() if "setting" in s]
    print("\n" + text + "".join(f"\nplot: {p}" for p in pictures))


if __name__ == "__main__":
    main()

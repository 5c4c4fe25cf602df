"""Benchmark: where specialists pay on han100, a capacity map over the experts' width, resumable by unit.

    python benchmarks/capacity_map.py --widths d32 d64 d128 --seeds 0 1 2 --git-commit   # the units not done yet
    python benchmarks/capacity_map.py --summary              # results/han100/map.json, map.md, map.png
    python benchmarks/capacity_map.py --profile smoke --widths d32 --seeds 0 --results /tmp/map   # the tests'

**A unit** is one width and one seed: every model of that system is trained (from the committed pool starts,
``starts/han100-pool/``), evaluated and written to ``results/han100/map/units/<width>-seed<seed>.json`` when
it finishes; a rerun skips the finished units and says so. One seed is the smallest unit whose figures stand
alone: its system-level comparisons need the generalist, the general models and every expert together, and
trained models do not outlive a session (a d128 unit takes well under a session). ``--git-commit`` commits
each unit's file as it is written, so a study spans sessions. A unit whose starts are not committed yet is
skipped, naming the command that makes them (``--prepare`` trains the rest of it meanwhile, where only the next
width's start is missing; for d128 that start, the 3.5 M model's, is optional).

Per unit (width W: d32 = the edge generalist's size, d64, d128; the generalist is d32 in every unit):

- the edge generalist (d32, 10 epochs) and the **general model of width W** (4 epochs = the four experts'
  images together: the system budget; the one expert at equal server compute per offload, and restricted to
  the experts' classes, the control at equal system budget), a width-W general model at the per-expert
  budget (1 epoch), and the **general model of the next width** (about 4x the parameters: equal server
  memory to the four experts; 4 epochs);
- the 4 x 25 confusion partition of the generalist, and an overlapping one (each class held by up to two
  experts: ``--holders 2``);
- experts of width W from W's start, at the system budget: ``static``, ``progressive`` (the reviewed
  progressive-third recipe), and ``static-overlap`` (static on the overlapping partition: more classes an
  expert, so more images at the same passes; its cost is recorded);
- every routing variant of each expert set (:mod:`askexpert_lab.bench.routing`: top-3, whole mass, re-routing to
  the next expert or the general model, the learned deferral rule, combinations), tau on validation for 30%
  offload, with coverage, expert calls an offload and bytes.

The summary chooses, per width, the experts' system (recipe and routing) with the best mean validation
accuracy among those asking one expert an offload (equal server compute to the general model as the one
expert), and reports test figures: mean +/- std over seeds and paired differences with 95% intervals.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

from experts_table import _model_record, git_commit
from specialist_recipes import PER_EXPERT, SETTINGS, Setting, recipe_overrides

from askexpert.system.offline import evaluate_system, restricted_name
from askexpert.system.pipeline import ExpertsStep, PipelineSpec, train_system
from askexpert_lab.bench.machine import describe, machine_info
from askexpert_lab.bench.routing import routing_variants
from askexpert_lab.bench.stats import paired

RESULTS = Path(__file__).parents[1] / "results" / "han100"
EDGE = "vit-micro-edge-32g"
WIDTHS = {"d32": "vit-micro-edge-32g", "d64": "vit-mini-edge-32g", "d128": "vit-mini-expert-32g",
          "d256": "vit-mini-large-32g"}
NEXT = {"d32": "d64", "d64": "d128", "d128": "d256"}
RECIPES = ("static", "progressive", "static-overlap")
GENERAL_ONE, NEXT_ONE = "general model (width W)", "general model (next width)"  # the one-expert designs' rows
OPTIONAL_NEXT = {"d128"}  # the next width's start (3.5 M, about 4 hours of pretraining) is optional there
FOURX = "equal memory (next width)"
OFFLOAD = 0.3


def setting_of(profile: str) -> Setting:
    base = SETTINGS["han100"]
    if profile == "smoke":
        return replace(base, regime="mapsmoke", generalist_epochs=2, general_epochs=2, general_b_epochs=1, passes=3,
                       n_experts=2, partition={"max_size": 5, "min_size": 5}, random_partition=False)
    return replace(base, random_partition=False)


def starts_for(width: str, profile: str, data_root: Path | None, out: Path) -> dict[str, str] | str:
    """The weights files of the edge, width-W and next-width starts; or why the unit cannot run yet. The full
    profile uses committed starts only (never an hour of pretraining inside a unit); the smoke profile
    pretrains one epoch on the tiny pool."""
    from askexpert.training.pretrain import pretrain

    models = {"edge": EDGE, "width": WIDTHS[width], "next": WIDTHS[NEXT[width]]}
    if profile == "smoke":
        extra = [f"data.root={data_root}"]
        return {k: str(pretrain(m, epochs=1, out=out / f"start-{m}", overrides=extra).weights)
                for k, m in models.items()}
    return committed_starts(width, with_next=width not in OPTIONAL_NEXT)


def committed_starts(width: str, *, with_next: bool) -> dict[str, str | None] | str:
    """The committed starts of a unit (the next width's required only ``with_next``), or why it cannot run."""
    from askexpert.models.starts import find_start, restored_file
    from askexpert.training.pretrain import command

    files = {}
    for key, model in (("edge", EDGE), ("width", WIDTHS[width]), ("next", WIDTHS[NEXT[width]])):
        record = find_start("han100-pool", model)
        if record is None and (key != "next" or with_next):
            return f"no committed start of {model}: make it with {command(model, 'han100-pool', 20, 1e-3, 0)}"
        files[key] = str(restored_file(record)) if record is not None else None
    return files


def pipeline(setting: Setting, width: str, seed: int, starts: dict[str, str], data_root: Path | None) -> PipelineSpec:
    from specialist_recipes import Starts

    common = [f"train.seed={seed}", f"data.split_seed={seed}", *setting.data]
    if data_root is not None:
        common.append(f"data.root={data_root}")
    s = Starts(starts["edge"], starts["width"])
    experts = []
    for recipe in RECIPES:
        base = "progressive-third" if recipe == "progressive" else recipe.removesuffix("-overlap")
        run, over, init, router, _ = recipe_overrides(setting, s, base)
        partition = "overlap" if recipe.endswith("-overlap") else None
        experts.append(ExpertsStep(recipe, setting.experts, (f"name={run}-{width}" + ("-overlap" if partition else ""),
                                                            *over), router=router, init=init, partition=partition))
    medium = (f"model.name={WIDTHS[width]}", f"model.pretrained_file={starts['width']}")
    nxt = NEXT[width]
    fourx = ((FOURX, setting.general, (f"name={setting.general}-{nxt}", f"model.name={WIDTHS[nxt]}",
                                       f"model.pretrained_file={starts['next']}",
                                       f"train.epochs={setting.general_epochs}")),) if starts.get("next") else ()
    return PipelineSpec(
        setting.generalist, setting.general, tuple(experts), common=tuple(common),
        generalist_overrides=(f"train.epochs={setting.generalist_epochs}", f"model.pretrained_file={starts['edge']}"),
        general_overrides=(f"name={setting.general}-{width}", f"train.epochs={setting.general_epochs}", *medium),
        n_experts=setting.n_experts, suffix=f"-seed{seed}",
        other_generals=((PER_EXPERT, setting.general, (f"name={setting.general}-{width}-b",
                                                       f"train.epochs={setting.general_b_epochs}", *medium)),
                        *fourx),
        partition_overrides=dict(setting.partition),
        other_partitions=(("overlap", {**setting.partition, "holders": 2}),))


def _expert_record(label: str, run: Path, report, trained) -> dict:
    rows = json.loads((run / "experts.json").read_text())["experts"]
    head = report.headline[label]
    return {"run": str(run), "subset_accuracy_test_mean": statistics.mean(report.subset_accuracy[label]),
            "subset_accuracy_no_other_test_mean": statistics.mean(report.subset_accuracy_no_other[label]),
            "system_accuracy_top3": head.test.accuracy, "coverage_top3": head.test.coverage,
            "oracle_accuracy": report.controls[f"{label}: oracle routing"].test.accuracy,
            "class_slots": sum(len(e["classes"]) for e in rows),
            "budget": [e.get("budget") for e in rows], "train_seconds": trained.seconds.get(label)}


def run_unit(setting: Setting, width: str, seed: int, starts: dict[str, str], out: Path,
             data_root: Path | None) -> dict:
    started = time.perf_counter()
    trained = train_system(pipeline(setting, width, seed, starts, data_root), out)
    t0 = time.perf_counter()
    kw = dict(ks=(3,), rates=(OFFLOAD,), headline_rate=OFFLOAD, headline_k=3)
    report = evaluate_system(trained.generalist, trained.general, trained.experts,
                             other_generals={PER_EXPERT: trained.other_generals[PER_EXPERT]}, **kw)
    fourx = None
    if FOURX in trained.other_generals:
        fourx = evaluate_system(trained.generalist, trained.other_generals[FOURX], {}, **kw)
        fourx = fourx.headline["general model as the expert"]
    ones = {GENERAL_ONE: trained.general, **({NEXT_ONE: trained.other_generals[FOURX]} if fourx else {})}
    routing = routing_variants(trained.generalist, trained.general, trained.experts, one_models=ones)
    return {
        "task": "han100", "width": width, "seed": seed, "setting": asdict(setting), "starts": starts,
        "partition": json.loads(trained.partition.read_text())["experts"],
        "partition_overlap": json.loads((out / f"partition-overlap-seed{seed}.json").read_text())["experts"],
        "models": {k: _model_record(p) for k, p in (("generalist", trained.generalist), ("general", trained.general),
                                                    *trained.other_generals.items()) if k != PER_EXPERT},
        "experts": {label: _expert_record(label, run, report, trained) for label, run in trained.experts.items()},
        "routing": [r.to_json() for r in routing],
        **system_record(report, trained, fourx, t0, started),
    }


def system_record(report, trained, fourx, t0: float, started: float) -> dict:
    """A unit's controls (the one-expert designs, the restricted general model, each model alone), timings and
    reused runs; ``fourx``: the next width's headline as the one expert (None: not in this unit)."""
    restricted = restricted_name("", None)  # the partitions differ (overlap): the static experts' one
    restricted = restricted if restricted in report.controls else restricted_name("", "static")
    return {
        "controls": {
            "general_as_expert_system_accuracy": report.headline["general model as the expert"].test.accuracy,
            "general_as_expert_val_accuracy": report.headline["general model as the expert"].val.accuracy,
            "next_width_as_expert_system_accuracy": fourx.test.accuracy if fourx else None,
            "next_width_as_expert_val_accuracy": fourx.val.accuracy if fourx else None,
            "restricted_general_subset_accuracy_test_mean": statistics.mean(report.subset_accuracy[restricted]),
            "restricted_general_system_accuracy": report.controls[restricted].test.accuracy,
            "generalist_alone": report.baselines["generalist"].accuracy,
            "general_alone": report.baselines["general"].accuracy},
        "timings": {**{f"{k}_s": v for k, v in trained.seconds.items()}, "evaluation_s": time.perf_counter() - t0,
                    "total_s": time.perf_counter() - started},
        "reused_runs": trained.reused,
    }


def unit_path(results: Path, width: str, seed: int) -> Path:
    return results / "map" / "units" / f"{width}-seed{seed}.json"


def run_units(args, command: str) -> None:
    setting = setting_of(args.profile)
    out = args.output_dir or Path(f"runs/map-{setting.regime}")
    data_root = None
    if args.profile == "smoke":
        from askexpert_lab.han import build as han_build

        data_root = out / "data"
        han_build.build(data_root, spec=han_build.TINY, workers=2)
    for width in args.widths:
        for seed in args.seeds:
            path = unit_path(args.results, width, seed)
            if path.is_file() and not args.force:
                print(f"unit {width} seed {seed}: finished ({path}), skipped", flush=True)
                continue
            starts = starts_for(width, args.profile, data_root, out)
            if isinstance(starts, str) and args.prepare:
                partial = committed_starts(width, with_next=False)
                if isinstance(partial, str):
                    print(f"unit {width} seed {seed}: not prepared, {partial}", flush=True)
                    continue
                train_system(pipeline(setting, width, seed, partial, data_root), out)
                print(f"unit {width} seed {seed}: prepared (every model but the next width's, whose start is "
                      f"missing: {starts})", flush=True)
                continue
            if isinstance(starts, str):
                print(f"unit {width} seed {seed}: not run, {starts}", flush=True)
                continue
            info = machine_info()
            unit = run_unit(setting, width, seed, starts, out, data_root)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"machine": info, "command": command, **unit}, indent=1))
            print(f"unit {width} seed {seed}: {unit_minutes(unit):.1f} min of training and evaluation "
                  f"({unit['timings']['total_s'] / 60:.1f} min this call) on {describe(info)}; {path}", flush=True)
            if args.git_commit:
                git_commit(path, f"Capacity map: unit {width} seed {seed}")


def _ms(values: list[float]) -> dict:
    return {"mean": statistics.mean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values)}


def _variant(unit: dict, recipe: str, name: str) -> dict:
    return next(r for r in unit["routing"] if r["experts"] == recipe and r["variant"] == name)


def unit_minutes(unit: dict) -> float:
    """A unit's compute: every model's training time as its run recorded it (a model trained ahead of the unit,
    by --prepare or an interrupted invocation, included) and the evaluation; not the wall time of one call."""
    return sum(v for k, v in unit["timings"].items() if k != "total_s") / 60


def summarise_width(units: list[dict]) -> dict:
    """One width's figures over its seeds (module docstring: the experts' system chosen on validation)."""
    units = sorted(units, key=lambda u: u["seed"])
    every = sorted({(r["experts"], r["variant"]) for r in units[0]["routing"]})
    names = [n for n in every if n[0] not in (GENERAL_ONE, NEXT_ONE)]
    single = [n for n in names if _variant(units[0], *n)["expert_calls_per_offload"] <= 1.0]

    def val(n):
        return statistics.mean(_variant(u, *n)["val_accuracy"] for u in units)

    def one(label):  # a one-expert design with its best routing on validation (None: not in these units)
        rows = [n for n in every if n[0] == label]
        return max(rows, key=val) if rows and all(any(r["experts"] == label for r in u["routing"]) for u in units) \
            else None

    best, best_any = max(single, key=val), max(names, key=val)
    system = [_variant(u, *best)["test_accuracy"] for u in units]
    system_any = [_variant(u, *best_any)["test_accuracy"] for u in units]
    general_best, next_best = one(GENERAL_ONE), one(NEXT_ONE)
    general = [_variant(u, *general_best)["test_accuracy"] if general_best else
               u["controls"]["general_as_expert_system_accuracy"] for u in units]
    nxt = [_variant(u, *next_best)["test_accuracy"] if next_best else
           u["controls"]["next_width_as_expert_system_accuracy"] for u in units]
    nxt = nxt if all(v is not None for v in nxt) else None  # the next width's control (optional for d128)
    sub = {r: [u["experts"][r]["subset_accuracy_no_other_test_mean"] for u in units] for r in ("static", "progressive")}
    models = units[0]["models"]
    return {
        "seeds": [u["seed"] for u in units],
        "coverage": {f"{e}: {v}": statistics.mean(_variant(u, e, v)["coverage"] for u in units) for e, v in names},
        "top3_system": {r: _ms([u["experts"][r]["system_accuracy_top3"] for u in units]) for r in RECIPES
                        if r in units[0]["experts"]},
        "variants": {f"{e}: {v}": {"val_accuracy": _ms([_variant(u, e, v)["val_accuracy"] for u in units]),
                                   "test_accuracy": _ms([_variant(u, e, v)["test_accuracy"] for u in units]),
                                   "coverage": _ms([_variant(u, e, v)["coverage"] for u in units]),
                                   "expert_calls_per_offload": _ms([_variant(u, e, v)["expert_calls_per_offload"]
                                                                    for u in units])}
                     for e, v in every if all(any(r["experts"] == e for r in u["routing"]) for u in units)},
        "chosen": {"equal_compute": " / ".join(best), "any": " / ".join(best_any),
                   "general": " / ".join(general_best) if general_best else "top-3",
                   "next_width": " / ".join(next_best) if next_best else "top-3"},
        "system": {"experts": _ms(system), "experts_any_routing": _ms(system_any),
                   "general_as_expert": _ms(general), "next_width_as_expert": _ms(nxt) if nxt else None},
        "paired": {"experts_minus_general_as_expert_system": paired(system, general),
                   "experts_any_routing_minus_general_as_expert_system": paired(system_any, general),
                   "experts_minus_next_width_as_expert_system": paired(system, nxt) if nxt else None,
                   "top3_progressive_minus_general_as_expert_top3": paired(
                       [u["experts"]["progressive"]["system_accuracy_top3"] for u in units],
                       [u["controls"]["general_as_expert_system_accuracy"] for u in units]),
                   "progressive_minus_static_subset_no_other": paired(sub["progressive"], sub["static"])},
        "server": {"expert_parameters": models["general"]["parameters"],
                   "experts_parameters": 4 * models["general"]["parameters"],
                   "general_parameters": models["general"]["parameters"],
                   "next_width_parameters": models[FOURX]["parameters"] if FOURX in models else None,
                   "expert_flops": models["general"]["flops_per_image"],
                   "next_width_flops": models[FOURX]["flops_per_image"] if FOURX in models else None},
        "training_images": {r: statistics.mean(sum((b or {}).get("images", 0) for b in u["experts"][r]["budget"])
                                               for u in units) for r in RECIPES if r in units[0]["experts"]},
        "class_slots": {r: units[0]["experts"][r]["class_slots"] for r in RECIPES if r in units[0]["experts"]},
        "minutes_per_unit": _ms([unit_minutes(u) for u in units]),
        "cpu": units[0]["machine"]["cpu"],
    }


def summarise(results: Path) -> dict:
    by_width: dict[str, list[dict]] = {}
    for f in sorted((results / "map" / "units").glob("*-seed*.json")):
        unit = json.loads(f.read_text())
        by_width.setdefault(unit["width"], []).append(unit)
    return {"widths": {w: summarise_width(us) for w, us in sorted(by_width.items(), key=lambda kv: int(kv[0][1:]))}}


def merge_into_summary(results: Path, summary: dict) -> None:
    """The map in the han100 experiment's ``summary.json``: one regime a width (``han100-d32`` ...) beside the
    d128 regime's own (``han100``, unchanged), and a ``routing`` section (coverage of every variant, a width)."""
    path = results / "summary.json"
    merged = json.loads(path.read_text()) if path.is_file() else {"regimes": {}}
    for w, s in summary["widths"].items():
        merged.setdefault("regimes", {})[f"han100-{w}"] = s
    merged["routing"] = {w: s["coverage"] for w, s in summary["widths"].items()}
    path.write_text(json.dumps(merged, indent=1))


def _fmt(m: dict | None) -> str:
    return "not run" if m is None else f"{m['mean']:.2f} +/- {m['std']:.2f}"


def _ci(p: dict) -> str:
    ci = p["ci95"]
    return f"{p['mean']:+.2f}" + (f" [{ci[0]:+.2f}, {ci[1]:+.2f}]" if ci else " (one seed)")


def table(summary: dict) -> str:
    lines = ["| width | seeds | experts' system (routing chosen on val, 1 call) | general model as the one expert "
             "(routing chosen on val) | next width as the one expert (equal memory) | "
             "experts - general (equal compute) | "
             "progressive - static, subsets no 'other' | min a unit |", "|---|---|---|---|---|---|---|---|"]
    for w, s in summary["widths"].items():
        sy = s["system"]
        lines.append(f"| {w} | {len(s['seeds'])} | {sy['experts']['mean']:.2f} +/- {sy['experts']['std']:.2f} "
                     f"({s['chosen']['equal_compute']}) | {_fmt(sy['general_as_expert'])} "
                     f"({s['chosen']['general']}) | "
                     f"{_fmt(sy['next_width_as_expert'])} ({s['chosen']['next_width']}) | "
                     f"{_ci(s['paired']['experts_minus_general_as_expert_system'])} | "
                     f"{_ci(s['paired']['progressive_minus_static_subset_no_other'])} | "
                     f"{s['minutes_per_unit']['mean']:.1f} |")
    lines += ["", "| width | experts | classes held (all experts) | training images (all experts) |",
              "|---|---|---|---|"]
    for w, s in summary["widths"].items():
        for r, images in s["training_images"].items():
            lines.append(f"| {w} | {r} | {s['class_slots'][r]} | {images:,.0f} |")
    lines += ["", "| width | experts / routing | val % | test % | coverage % | expert calls an offload |",
              "|---|---|---|---|---|---|"]
    for w, s in summary["widths"].items():
        for name, v in s["variants"].items():
            lines.append(f"| {w} | {name} | {v['val_accuracy']['mean']:.2f} | {v['test_accuracy']['mean']:.2f} +/- "
                         f"{v['test_accuracy']['std']:.2f} | {v['coverage']['mean']:.1f} | "
                         f"{v['expert_calls_per_offload']['mean']:.2f} |")
    return "\n".join(lines)


def plot(summary: dict, results: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, xlabel in ((axes[0], "parameters", "server parameters (all models held)"),
                            (axes[1], "flops", "server compute an offload (MFLOPs, one call)")):
        for label, style, pick in (("four experts", "o-", lambda s: (s["server"]["experts_parameters"],
                                                                      s["server"]["expert_flops"],
                                                                      s["system"]["experts"])),
                                   ("one general model (width W)", "s--", lambda s: (
                                       s["server"]["general_parameters"], s["server"]["expert_flops"],
                                       s["system"]["general_as_expert"])),
                                   ("one general model (next width)", "^:", lambda s: (
                                       s["server"]["next_width_parameters"], s["server"]["next_width_flops"],
                                       s["system"]["next_width_as_expert"]))):
            pts = [pick(s) for s in summary["widths"].values()]
            pts = [p for p in pts if p[2] is not None and p[0] is not None]
            if not pts:
                continue
            xs = [p[0] if key == "parameters" else p[1] / 1e6 for p in pts]
            ax.errorbar(xs, [p[2]["mean"] for p in pts], yerr=[p[2]["std"] for p in pts], fmt=style, capsize=3,
                        label=label)
        ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("system accuracy on test, % (30% offloaded)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("han100: where specialists pay (mean +/- std over seeds; widths " +
                 ", ".join(summary["widths"]) + ")")
    fig.tight_layout()
    path = results / "map.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--widths", nargs="*", choices=tuple(NEXT), default=["d32"])
    ap.add_argument("--seeds", type=int, nargs="*", default=[0])
    ap.add_argument("--profile", choices=("cpu", "smoke"), default="cpu")
    ap.add_argument("--summary", action="store_true", help="train nothing: summarise the unit files present")
    ap.add_argument("--force", action="store_true", help="run finished units again")
    ap.add_argument("--prepare", action="store_true",
                    help="for a unit whose next width's start is not committed yet: train every other model now "
                    "(the unit, run later in the same output directory, reuses them)")
    ap.add_argument("--git-commit", action="store_true", help="commit each unit's file when it is written")
    ap.add_argument("--output-dir", type=Path, default=None, help="run directories (default runs/map-REGIME)")
    ap.add_argument("--results", type=Path, default=RESULTS)
    ap.add_argument("--threads", type=int, default=None, help="torch threads for this process")
    args = ap.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    command = "python benchmarks/capacity_map.py " + " ".join(sys.argv[1:])
    if not args.summary:
        run_units(args, command)
    summary = summarise(args.results)
    if args.prepare and not summary["widths"]:
        return  # models trained ahead of their units: nothing to summarise yet
    if not summary["widths"]:
        raise SystemExit(f"no unit files in {args.results / 'map' / 'units'}: run units first")
    (args.results / "map.json").write_text(json.dumps(summary, indent=1))
    merge_into_summary(args.results, summary)
    text = table(summary)
    (args.results / "map.md").write_text(text + "\n")
    print("\n" + text + f"\nplot: {plot(summary, args.results)}")


if __name__ == "__main__":
    main()

"""The specialists experiment with the reviewed recipe (``benchmarks/specialists.py --task ...``).

One setting per task (:data:`SETTINGS`): the models, the budgets, the partitions and the start.
Per seed, through the real code path (``train_system``, ``evaluate_system``):

- the edge generalist and the **general model at the system budget** (the experts' images together:
  the control "restricted general, equal system budget", the "general model alone" baseline and the
  start of ``original``), and a **general model at the per-expert budget** (one expert's steps and
  images: the control "restricted general, equal per-expert budget", and the shared all-class stage of
  ``progressive-shared``), all from the task's start (pretrained on the pool for han100);
- a confusion partition (and, where the setting says, a seeded random one of the same sizes);
- the recipes, every expert keeping its all-class head collapsed onto subset + "other"
  (``experts.head: collapse``: one model, one optimiser, one warm-up and cosine decay):
  ``static`` (subset only), ``static-other`` (30% "other" throughout), ``progressive`` (an all-class
  stage with true labels, then 30% and 10% "other"; the variant chosen on validation), each from the
  task's start with the same steps and images per expert; ``progressive-shared`` (the per-expert-budget
  general model as a shared all-class stage, amortised over the experts, then each expert narrows for
  the rest of its budget: equal per-expert and system budget); ``original`` (the system-budget general
  model fine-tuned on the subset: the first recipe, a reference row at its own cost);
- the systems at ~30% offload (tau on validation, k = 3), with the controls.

Seed 0 also screens on validation: the progressive variants (all-class share 1/3 or 1/2, the old head
cut, distillation from the per-expert-budget general model, router-aware hard negatives), then the
learning rate of static and of the chosen progressive variant, and a budget sweep of both.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from experts_table import _model_record

from askexpert.system.offline import evaluate_system, restricted_name
from askexpert.system.pipeline import ExpertsStep, PipelineSpec, train_system

PER_EXPERT = "per-expert budget"
NARROW = "{fraction: %s, out_share: 0.3}, {fraction: %s, out_share: 0.1}"
THIRD = "experts.stages=[{fraction: 0.3334, labels: all}, " + NARROW % ("0.3333", "0.3333") + "]"
VARIANTS = {  # progressive variants screened on validation (seed 0); all at the setting's budget
    "progressive-third": (THIRD,),
    "progressive-half": ("experts.stages=[{fraction: 0.5, labels: all}, " + NARROW % ("0.25", "0.25") + "]",),
    "progressive-cut": (THIRD, "experts.head=cut"),
    "progressive-distill": (THIRD, "experts.distill=0.5"),  # distils the per-expert-budget general model
    "progressive-router": (THIRD, "experts.hard_negatives=0.5"),
}
ROUTED = {"progressive-router"}  # draws steered by the edge generalist (experts.router)


@dataclass(frozen=True)
class Setting:
    """One task's experiment: configs, budgets (epochs of the all-class models, passes of the experts),
    partitions and where every model starts."""

    task: str
    regime: str  # the name of its result files
    data: tuple[str, ...]  # overrides of every run's data
    generalist: str
    general: str
    experts: str
    generalist_epochs: int
    general_epochs: int  # the system budget: every expert's images together
    general_b_epochs: int  # the per-expert budget
    passes: float
    shared_passes: float  # progressive-shared's own passes: the rest of the budget once the shared stage is amortised
    original_passes: float
    n_experts: int
    partition: dict
    random_partition: bool
    start: str  # pretrained | scratch
    pretrain: tuple[str, str, int] | None  # (edge preset, expert preset, epochs on the pool)
    sweep: tuple[float, ...]
    lrs: tuple[float, ...] = (5e-4, 1e-3, 2e-3)
    lr: float = 1e-3
    variants: tuple[str, ...] = tuple(VARIANTS)
    model: tuple[str, ...] = ()  # overrides of every model's architecture, the pool's starts included


SETTINGS = {
    # 4 passes over each expert's 12,500 images = 1 epoch of the task per expert (the per-expert budget) and 4
    # epochs for the 4 experts together (the system budget); 35 min a seed on 2 CPU cores, about 55 with the random
    # partition's two recipes. The starts: 20 epochs on the 1,000-class pool (5 left the medium model at 4% on the
    # pool: a start that carried nothing)
    "han100": Setting("han100", "han100", (), "generalist-han100", "general-han100", "experts-han100", 10, 4, 1,
                      4, 3, 2, 4, {"max_size": 25, "min_size": 25}, True, "pretrained",
                      ("vit-micro-edge-32g", "vit-mini-expert-32g", 20), (2, 4, 8)),
    "500fix": Setting("fashion-mnist", "500fix", ("data.train_subset=5000",), "generalist-fmnist-cpu",
                      "general-fmnist-cpu", "experts-scratch-fmnist-cpu", 30, 24, 8, 24, 16, 2, 3, {}, False,
                      "scratch", None, (6, 12), lrs=(1e-3,)),
}
SMOKE = {  # the test suite's versions: tiny budgets, a tiny build of the task
    "han100": replace(SETTINGS["han100"], regime="hansmoke", generalist_epochs=2, general_epochs=2,
                      general_b_epochs=1, passes=3, shared_passes=2, original_passes=2, n_experts=2,
                      partition={"max_size": 5, "min_size": 5}, random_partition=True,
                      pretrain=("vit-micro-edge-32g", "vit-mini-expert-32g", 1),
                      sweep=(2,), lrs=(1e-3,), variants=("progressive-third", "progressive-half"),
                      model=("model.kwargs.depth=1",)),  # one block: what the suite asserts is the plumbing
}


@dataclass(frozen=True)
class Starts:
    """The pretrained weights files of the two architectures (None: random starts)."""

    edge: str | None = None
    expert: str | None = None
    records: tuple[dict, ...] = ()


def make_starts(setting: Setting, data_root: Path | None, out: Path | None) -> Starts:
    """Pretrain the edge and the expert architectures on the task's pool (cached), where the setting
    starts from pretrained weights."""
    if setting.pretrain is None:
        return Starts()
    from askexpert.training.pretrain import pretrain

    edge, expert, epochs = setting.pretrain
    extra = [*([f"data.root={data_root}"] if data_root else []), *setting.model]
    done = [pretrain(m, epochs=epochs, out=(out / f"pretrained-{m}") if out else None, overrides=extra)
            for m in (edge, expert)]
    records = tuple({"model": p.model, "pool": p.pool, "epochs": p.epochs, "weights": str(p.weights),
                     "pool_val_top1": p.val_top1, "pool_val_top5": p.val_top5, "seconds": p.seconds,
                     "reused": p.reused} for p in done)
    return Starts(str(done[0].weights), str(done[1].weights), records)


def _run(variant: str, lr: float) -> str:
    return f"{variant}-lr{lr:g}"


def recipe_overrides(setting: Setting, starts: Starts, recipe: str, *, passes: float | None = None,
                     lr: float | None = None) -> tuple[str, tuple[str, ...], str | None, bool, str | None]:
    """(run name, overrides, the general model it starts from (None: the main one; PER_EXPERT), router,
    partition label) of one recipe or screened variant."""
    lr = setting.lr if lr is None else lr
    passes = setting.passes if passes is None else passes
    partition = None
    if recipe.endswith("-random"):
        recipe, partition = recipe.removesuffix("-random"), "random"
    common = ["experts.head=collapse", f"train.lr={lr}", "train.warmup_epochs=null", "train.warmup_fraction=0.05"]
    if starts.expert:
        common.append(f"model.pretrained_file={starts.expert}")
    fresh = [f"experts.init_from={setting.start}", f"experts.passes={passes:g}"]
    suffix = ("" if passes == setting.passes else f"-p{passes:g}") + ("-random" if partition else "")
    if recipe in ("static", "static-other"):
        extra = ("experts.other_share=0.3",) if recipe == "static-other" else ()
        return (_run(recipe, lr) + suffix, (*common, *fresh, f"experts.strategy={recipe}", *extra), PER_EXPERT,
                False, partition)
    if recipe == "progressive-shared":
        stages = "experts.stages=[" + NARROW % ("0.5", "0.5") + "]"
        return (_run(recipe, lr) + suffix, (*common, "experts.init_from=general", "experts.strategy=progressive",
                                            f"experts.passes={setting.shared_passes:g}", stages), PER_EXPERT,
                False, partition)
    if recipe == "original":
        return (_run(recipe, lr), (*common, "experts.init_from=general", "experts.strategy=static",
                                   f"experts.passes={setting.original_passes:g}"), None, False, partition)
    if recipe in VARIANTS:
        return (_run(recipe, lr) + suffix, (*common, *fresh, "experts.strategy=progressive", *VARIANTS[recipe]),
                PER_EXPERT, recipe in ROUTED, partition)
    raise ValueError(f"unknown recipe {recipe}")


def pipeline(setting: Setting, seed: int, starts: Starts, steps: list[tuple[str, str]],
             data_root: Path | None) -> PipelineSpec:
    """The seed's runs; each step is (label, recipe or variant[@lr][:passes])."""
    common = [f"train.seed={seed}", f"data.split_seed={seed}", *setting.data, *setting.model]
    if data_root is not None:
        common.append(f"data.root={data_root}")
    experts = []
    for label, what in steps:
        recipe, _, rest = what.partition("@")
        lr, _, passes = rest.partition(":")
        run, over, init, router, partition = recipe_overrides(setting, starts, recipe, passes=float(passes) if passes
                                                              else None, lr=float(lr) if lr else None)
        experts.append(ExpertsStep(label, setting.experts, (f"name={run}", *over), router=router, init=init,
                                   partition=partition))
    edge = (f"model.pretrained_file={starts.edge}",) if starts.edge else ()
    medium = (f"model.pretrained_file={starts.expert}",) if starts.expert else ()
    general_b = (f"name={setting.general}-b", f"train.epochs={setting.general_b_epochs}", *medium)
    return PipelineSpec(
        setting.generalist, setting.general, tuple(experts), common=tuple(common),
        generalist_overrides=(f"train.epochs={setting.generalist_epochs}", *edge),
        general_overrides=(f"train.epochs={setting.general_epochs}", *medium), n_experts=setting.n_experts,
        suffix=f"-seed{seed}", other_generals=((PER_EXPERT, setting.general, general_b),),
        partition_overrides=dict(setting.partition),
        other_partitions=(("random", {"method": "random", "seed": seed,
                                      "min_size": setting.partition.get("min_size", 2)}),)
        if setting.random_partition else ())


def _rows(run: Path) -> list[dict]:
    return json.loads((run / "experts.json").read_text())["experts"]


def _val(run: Path, key: str = "subset_accuracy") -> float:
    return statistics.mean(e["val"][key] for e in _rows(run))


def screen_v2(setting: Setting, starts: Starts, out: Path, data_root: Path | None) -> dict:
    """Seed 0, validation only: the progressive variants at the default lr; then the lr of static and of
    the chosen variant; then the budget sweep of both at the chosen lrs."""
    t0 = time.perf_counter()
    steps = [(v, v) for v in setting.variants] + [("static", "static")]
    trained = train_system(pipeline(setting, 0, starts, steps, data_root), out)
    variants = {v: _val(trained.experts[v]) for v in setting.variants}
    no_other = {v: _val(trained.experts[v], "subset_accuracy_no_other") for v in (*setting.variants, "static")}
    chosen = max(variants, key=variants.get)
    lr_steps = [(f"{r}@{lr:g}", f"{r}@{lr:g}") for r in ("static", chosen) for lr in setting.lrs]
    trained = train_system(pipeline(setting, 0, starts, lr_steps, data_root), out)
    lr_val = {label: _val(run) for label, run in trained.experts.items()}
    best_lr = {r: max(setting.lrs, key=lambda lr, r=r: lr_val[f"{r}@{lr:g}"]) for r in ("static", chosen)}
    sweep_steps = [(f"{r}:{p:g}", f"{r}@{best_lr[r]:g}:{p:g}") for r in ("static", chosen) for p in setting.sweep]
    trained = train_system(pipeline(setting, 0, starts, sweep_steps, data_root), out)
    curve = {"static": {}, "progressive": {}}
    for label, run in trained.experts.items():
        recipe, _, p = label.partition(":")
        curve["static" if recipe == "static" else "progressive"][str(float(p))] = _val(run)
    return {"variants_val_subset": variants, "variants_val_subset_no_other": no_other,
            "chosen": chosen, "lr_val_subset": lr_val, "lr": best_lr,
            "curve_val_subset": curve, "passes": setting.passes, "seconds": time.perf_counter() - t0}


UNSCREENED = {"chosen": "progressive-third", "lr": {"static": 1e-3, "progressive-third": 1e-3}, "screened": False}


def seed_steps(setting: Setting, choice: dict) -> list[tuple[str, str]]:
    lr = choice["lr"]
    chosen = choice["chosen"]
    steps = [("static", f"static@{lr['static']:g}"), ("static-other", f"static-other@{lr['static']:g}"),
             ("progressive", f"{chosen}@{lr[chosen]:g}"),
             ("progressive-shared", f"progressive-shared@{lr[chosen]:g}"), ("original", f"original@{lr['static']:g}")]
    if not setting.shared_passes:  # a setting that leaves the shared-stage recipe out for time
        steps = [s for s in steps if s[0] != "progressive-shared"]
    if setting.random_partition:
        steps += [("static-random", f"static-random@{lr['static']:g}"),
                  ("progressive-random", f"{chosen}-random@{lr[chosen]:g}")]
    return steps


def _recipe_record(label: str, run: Path, report, trained) -> dict:
    rows = _rows(run)
    row = report.headline[label]
    return {
        "run": str(run),
        "subset_accuracy_test": report.subset_accuracy[label],
        "subset_accuracy_test_mean": statistics.mean(report.subset_accuracy[label]),
        "subset_accuracy_no_other_test_mean": statistics.mean(report.subset_accuracy_no_other[label]),
        "subset_accuracy_val_mean": statistics.mean(e["val"]["subset_accuracy"] for e in rows),
        "subset_accuracy_no_other_val_mean": statistics.mean(e["val"]["subset_accuracy_no_other"] for e in rows),
        "other_recall_test": [e["test"]["other_recall"] for e in rows],
        "system_accuracy": row.test.accuracy, "offloaded_accuracy": row.test.offloaded_accuracy_system,
        "offload_rate": row.test.offload_rate, "tau": row.tau,
        "routing_hit_rate": row.test.routing_hit_rate,  # offloaded images sent to an expert that holds their class
        "offloaded_generalist_accuracy": row.test.offloaded_accuracy_generalist,
        "oracle_accuracy": report.controls[f"{label}: oracle routing"].test.accuracy,
        "budget": [e.get("budget") for e in rows],
        "init_sha256": sorted({e.get("init_sha256", "") for e in rows}),
        "train_seconds": trained.seconds.get(label),
    }


def _controls(report, partition_label: str = "") -> dict:
    out = {}
    for key, general in (("system_budget", ""), ("per_expert_budget", PER_EXPERT)):
        name = restricted_name(general, None)
        out[f"restricted_general_{key}_subset_accuracy_test_mean"] = statistics.mean(report.subset_accuracy[name])
        out[f"restricted_general_{key}_system_accuracy"] = report.controls[name].test.accuracy
    return out


def run_seed_v2(setting: Setting, seed: int, starts: Starts, choice: dict, out: Path, data_root: Path | None,
             offload: float) -> dict:
    started = time.perf_counter()
    steps = seed_steps(setting, choice)
    trained = train_system(pipeline(setting, seed, starts, steps, data_root), out)
    t0 = time.perf_counter()
    confusion = {k: v for k, v in trained.experts.items() if not k.endswith("-random")}
    randoms = {k: v for k, v in trained.experts.items() if k.endswith("-random")}
    kw = dict(ks=(3,), rates=(offload,), headline_rate=offload, headline_k=3, other_generals=trained.other_generals)
    report = evaluate_system(trained.generalist, trained.general, confusion, **kw)
    recipes = {label: _recipe_record(label, run, report, trained) for label, run in confusion.items()}
    result = {
        "task": setting.task, "regime": setting.regime, "seed": seed, "setting": asdict(setting),
        "progressive_variant": choice["chosen"], "lr": choice["lr"], "screened": choice.get("screened", True),
        "partition": json.loads(trained.partition.read_text())["experts"],
        "starts": list(starts.records),
        "models": {part: _model_record(path) for part, path in
                   (("generalist", trained.generalist), ("general", trained.general),
                    (PER_EXPERT, trained.other_generals[PER_EXPERT]))},
        "baselines": {k: asdict(v) for k, v in report.baselines.items()},
        "recipes": recipes,
        "controls": {**_controls(report),
                     "general_as_expert_system_accuracy": report.headline["general model as the expert"].test.accuracy},
    }
    if randoms:
        rreport = evaluate_system(trained.generalist, trained.general, randoms, **kw)
        result["random"] = {"partition": json.loads((out / f"partition-random-seed{seed}.json").read_text())["experts"],
                            "recipes": {label: _recipe_record(label, run, rreport, trained)
                                        for label, run in randoms.items()},
                            "controls": _controls(rreport)}
    result["timings"] = {**{f"{k}_s": v for k, v in trained.seconds.items()},
                         "evaluation_s": time.perf_counter() - t0, "total_s": time.perf_counter() - started}
    result["reused_runs"] = trained.reused
    return result

"""Benchmark: which images to offload. Max-prob, margin, entropy, the learned deferral rule and the oracle,
on the same images, at offload shares 5-50%.

    python benchmarks/deferral.py --seeds 0 1 2                 # the demo's systems, 3 seeds (~5 min a seed, 2 cores)
    python benchmarks/deferral.py --summary                     # tables, plot, summary.json from the seed files
    python benchmarks/deferral.py --system 500fix-s2 GENERALIST_RUN EXPERTS_RUN   # any trained system, one row
    python benchmarks/deferral.py --profile smoke --seeds 0     # the test suite's version

Per seed, through the real code path: the demo's generalist, general model and progressive experts
(``askexpert_lab.demo.demo_pipeline``, the seed in ``train.seed`` and ``data.split_seed``), evaluated on the
whole validation split (6,000 images) and test set (10,000). Then, with the generalist's temperature
fitted on validation and k = 3 (the edge's default):

- max-prob, margin, entropy: the paper's rule, tau on the generalist's calibrated confidence;
- learned: ``askexpert.routing.deferral`` fitted on validation (what ``build-system --deferral learned``
  writes into the bundle), tau on its score;
- oracle: offload exactly the test images where the routed expert is right and the generalist wrong, then
  those where nothing changes (the upper bound at each share).

Every rule's tau is chosen on validation for each target share and applied to the test images; the
offloaded image's answer is the routed expert's after the fallback, as the edge answers. Writes
``results/deferral/seed<N>.json`` (and ``system-<label>.json``); ``--summary`` writes
``summary.json`` (per rule and share: mean and std over seeds of overall accuracy, and the paired
differences at 30%), ``summary.md`` and ``curve.png``.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from askexpert.models import open_checkpoint
from askexpert.models.runs import open_expert_run
from askexpert.routing import ALL, RoutingPolicy, fit_temperature
from askexpert.routing.deferral import oracle_accuracy
from askexpert.routing.thresholds import tau_for_offload
from askexpert.system.calibrate import (
    fit_learned_deferral,
    load_experts,
    outputs_of,
    policy_scores,
    routed_outcomes,
    scaled_confidence,
)
from askexpert_lab.bench.machine import describe, machine_info
from askexpert_lab.bench.stats import paired

RESULTS = Path(__file__).parents[1] / "results" / "deferral"
SHARES = (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5)
RULES = ("max-prob", "margin", "entropy", "learned")
HEADLINE = 0.3
K = 3
PROFILES = {
    "cpu": ("data.val_subset=6000", "data.test_subset=10000"),
    "smoke": ("data.train_subset=600", "data.val_subset=300", "data.test_subset=300", "train.epochs=1",
              "experts.passes=1"),
}


def evaluate(generalist: Path, experts_run: Path, *, k: int = K, fallback: str = "other") -> dict:
    """Every rule at every share on test (tau chosen on validation), and the oracle, for one system."""
    gen = outputs_of(open_checkpoint(generalist), "the generalist")
    experts = load_experts(open_expert_run(experts_run), str(experts_run), gen)
    t_gen = fit_temperature(gen.val_logits, gen.val_labels)
    base = RoutingPolicy(tau=ALL, k=k, temperature=t_gen, fallback=fallback)
    outcomes = {split: routed_outcomes(gen, experts, base, split) for split in ("val", "test")}
    t0 = time.perf_counter()
    rule, fitted_on = fit_learned_deferral(gen, experts, temperature=t_gen, k=k, fallback=fallback)
    fit_s = time.perf_counter() - t0
    learned = replace(base, confidence="learned", deferral=rule)
    scores = {}
    for split in ("val", "test"):
        logits = getattr(gen, f"{split}_logits")
        for name in RULES[:3]:
            scores[name, split] = scaled_confidence(logits, t_gen, name)
        scores["learned", split] = policy_scores(logits, learned, experts)
    local, remote = outcomes["test"]
    rows = []
    for share in SHARES:
        for name in RULES:
            tau = tau_for_offload(scores[name, "val"], share)
            off = scores[name, "test"] < tau
            right = np.where(off, remote, local)
            gain = remote[off].astype(int) - local[off].astype(int)
            rows.append({"rule": name, "share": share, "accuracy": float(right.mean() * 100),
                         "offload_rate": float(off.mean() * 100), "offloads_gaining": float((gain > 0).mean() * 100)
                         if off.any() else None, "offloads_losing": float((gain < 0).mean() * 100) if off.any()
                         else None})
        rows.append({"rule": "oracle", "share": share, "accuracy": oracle_accuracy(local, remote, share),
                     "offload_rate": share * 100, "offloads_gaining": None, "offloads_losing": None})
    v_local, v_remote = outcomes["val"]
    return {"rows": rows, "test_images": len(local), "val_images": fitted_on, "k": k, "temperature": t_gen,
            "generalist_test": float(local.mean() * 100), "everything_offloaded_test": float(remote.mean() * 100),
            "test_gains": {"up": int((remote & ~local).sum()), "down": int((local & ~remote).sum())},
            "val_gains": {"up": int((v_remote & ~v_local).sum()), "down": int((v_local & ~v_remote).sum())},
            "rule": {"l2": rule.l2, "features": len(rule.mean), "fit_s": fit_s},
            "generalist": str(generalist), "experts": str(experts_run)}


def run_seed(seed: int, profile: str, out: Path) -> dict:
    from askexpert.system.pipeline import train_system
    from askexpert_lab.demo import demo_pipeline

    started = time.perf_counter()
    spec = replace(demo_pipeline([f"train.seed={seed}", f"data.split_seed={seed}", *PROFILES[profile]]),
                   suffix=f"-seed{seed}")
    trained = train_system(spec, out)
    result = evaluate(trained.generalist, trained.experts["progressive"])
    result.update(seed=seed, profile=profile, machine=machine_info(), train_seconds=trained.seconds,
                  wall_s=time.perf_counter() - started,
                  command=f"python benchmarks/deferral.py --profile {profile} --seeds {seed}")
    return result


def at(result: dict, rule: str, share: float) -> dict:
    return next(r for r in result["rows"] if r["rule"] == rule and math.isclose(r["share"], share))


def summarise(seeds: dict[int, dict]) -> dict:
    """Per rule and share: mean and std over seeds of overall accuracy; paired differences at 30%: the
    learned rule against max-prob, the oracle against max-prob, and the share of that gap closed."""
    order = sorted(seeds)
    curves = {}
    for rule in (*RULES, "oracle"):
        curves[rule] = []
        for share in SHARES:
            acc = [at(seeds[s], rule, share)["accuracy"] for s in order]
            off = [at(seeds[s], rule, share)["offload_rate"] for s in order]
            curves[rule].append({"share": share, "mean": statistics.mean(acc),
                                 "std": statistics.stdev(acc) if len(acc) > 1 else None,
                                 "offload_rate_mean": statistics.mean(off)})

    def column(rule: str, share: float = HEADLINE) -> list[float]:
        return [at(seeds[s], rule, share)["accuracy"] for s in order]

    headline = {"learned - max-prob": paired(column("learned"), column("max-prob")),
                "oracle - max-prob": paired(column("oracle"), column("max-prob")),
                "margin - max-prob": paired(column("margin"), column("max-prob")),
                "entropy - max-prob": paired(column("entropy"), column("max-prob"))}
    closed = [(lr - mp) / (orc - mp) for lr, mp, orc in zip(column("learned"), column("max-prob"), column("oracle"),
                                                             strict=True)]
    headline["gap closed (learned - max-prob) / (oracle - max-prob)"] = paired(closed, [0.0] * len(closed))
    by_share = {f"{share:g}": paired(column("learned", share), column("max-prob", share)) for share in SHARES}
    return {"seeds": order, "shares": list(SHARES), "curves": curves, "at_30": headline,
            "learned_minus_max_prob_by_share": by_share,
            "generalist_test": [seeds[s]["generalist_test"] for s in order],
            "everything_offloaded_test": [seeds[s]["everything_offloaded_test"] for s in order],
            "wall_s": [seeds[s].get("wall_s") for s in order],
            "machine": describe(seeds[order[-1]]["machine"])}


def _interval(p: dict, scale: float = 1.0, unit: str = "") -> str:
    ci = p["ci95"]
    text = f"{p['mean'] * scale:+.2f}{unit}"
    return text + (f" [{ci[0] * scale:+.2f}{unit}, {ci[1] * scale:+.2f}{unit}]" if ci else "")


def markdown(summary: dict) -> str:
    lines = [f"Seeds {', '.join(map(str, summary['seeds']))}; {summary['machine']}.", "",
             "| rule (test, tau on validation) | " + " | ".join(f"{s:.0%}" for s in summary["shares"]) + " |",
             "|---|" + "---|" * len(summary["shares"])]
    for rule, points in summary["curves"].items():
        cells = [f"{p['mean']:.2f}" + (f" +/- {p['std']:.2f}" if p["std"] is not None else "") for p in points]
        lines.append(f"| {rule} | " + " | ".join(cells) + " |")
    lines += ["", "| at 30% offload, paired over seeds | mean [95% interval] | per seed |", "|---|---|---|"]
    for name, p in summary["at_30"].items():
        scale, unit = (100, "%") if name.startswith("gap") else (1, "")
        per = " / ".join(f"{x * scale:+.2f}" for x in p["per_seed"])
        lines.append(f"| {name} | {_interval(p, scale, unit)} | {per} |")
    return "\n".join(lines) + "\n"


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for rule, points in summary["curves"].items():
        x = [p["share"] * 100 for p in points]
        y = np.array([p["mean"] for p in points])
        ax.plot(x, y, marker="o", ms=3, label=rule, linestyle="--" if rule == "oracle" else "-")
        if points[0]["std"] is not None:
            s = np.array([p["std"] for p in points])
            ax.fill_between(x, y - s, y + s, alpha=0.15)
    ax.set_xlabel("test images offloaded (%; tau chosen on validation)")
    ax.set_ylabel("overall test accuracy (%)")
    ax.set_title(f"Which images to offload (seeds {', '.join(map(str, summary['seeds']))}; mean +/- std)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_summary(results: Path) -> dict:
    files = [json.loads(f.read_text()) for f in sorted(results.glob("seed*.json"))]
    seeds = {result["seed"]: result for result in files}
    if not seeds:
        raise SystemExit(f"no seed files in {results}: run python benchmarks/deferral.py --seeds 0 1 2 first")
    summary = summarise(seeds)
    (results / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    text = markdown(summary)
    (results / "summary.md").write_text(text)
    plot(summary, results / "curve.png")
    print(text)
    return summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[])
    ap.add_argument("--profile", choices=sorted(PROFILES), default="cpu")
    ap.add_argument("--summary", action="store_true", help="train nothing: aggregate the seed files present")
    ap.add_argument("--system", nargs=3, metavar=("LABEL", "GENERALIST", "EXPERTS"),
                    help="evaluate one trained system (its run directories) into system-LABEL.json")
    ap.add_argument("--runs", type=Path, default=Path("runs/deferral"), help="where the demo's systems are trained")
    ap.add_argument("--results", type=Path, default=None, help=f"where results go (default {RESULTS})")
    args = ap.parse_args()
    results = args.results or (RESULTS if args.profile == "cpu" else RESULTS.with_name("deferral-smoke"))
    results.mkdir(parents=True, exist_ok=True)
    for seed in args.seeds:
        result = run_seed(seed, args.profile, args.runs)
        (results / f"seed{seed}.json").write_text(json.dumps(result, indent=1) + "\n")
        print(f"seed {seed}: " + ", ".join(f"{r}: {at(result, r, HEADLINE)['accuracy']:.2f}"
                                           for r in (*RULES, "oracle")) + f" at {HEADLINE:.0%} offload", flush=True)
    if args.system:
        label, generalist, experts = args.system
        result = evaluate(Path(generalist), Path(experts))
        result.update(label=label, machine=machine_info(),
                      command=f"python benchmarks/deferral.py --system {label} {generalist} {experts}")
        (results / f"system-{label}.json").write_text(json.dumps(result, indent=1) + "\n")
        print(f"{label}: " + ", ".join(f"{r}: {at(result, r, HEADLINE)['accuracy']:.2f}"
                                      for r in (*RULES, "oracle")) + f" at {HEADLINE:.0%} offload")
    if args.summary or args.seeds:
        write_summary(results)


if __name__ == "__main__":
    main()

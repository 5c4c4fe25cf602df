"""Benchmark: accuracy held online as the inputs drift (``askexpert edge --target-accuracy``), against the
fixed tau and the offload-share tracker at the same mean offload.

    python benchmarks/deferral_drift.py --seeds 0 1 2     # the systems benchmarks/deferral.py trained (runs/deferral)
    python benchmarks/deferral_drift.py --summary         # tables and plot from the seed files

Per seed, the demo's system (generalist, progressive experts) is built into a bundle at 30% offload on
validation (max-prob, k 3: the edge's defaults). Its edge's runner (:class:`askexpert.runtime.edge.
EdgeRunner`: the bundle's ONNX generalist, the server's expert pool in the same process, one image at a
time) answers 3,000 stratified images of a split, with gaussian noise of severity 5 from image 1,000 on
(the drift of BENCHMARKS "Operating points", part c), every image offloaded once: what the edge could
learn of each (:class:`Answers`). The edges are then replayed over those answers (:func:`replay`: the
tau in force, the rule, the controller's probes and observations, with the edge's own controller
classes), and the first is also run through the runner, which must take the same decisions:

1. ``--target-accuracy A`` (:class:`askexpert.runtime.control.AccuracyKeeper`), A the accuracy the
   bundle's tau keeps on the clean validation stream;
2. the same with the generalist's own calibrated confidence as the estimate (no probes, the experts'
   answers not read): what the answers add;
3. the fixed tau that offloads the same share over the run as (1) (chosen with hindsight, on the same
   images: the most a fixed tau can do at that cost);
4. ``--target-offload`` at that share (the label-free tracker);
5. the bundle's own fixed tau (30% on clean validation images), for reference.

The controllers' decisions depend on the answers alone, not on timing (``tests/test_deferral.py``
checks that an edge against a real server over HTTP takes the runner's decisions). The estimator's
settings (probe share, prior) are chosen on the validation stream (``--split val`` adds the grid); the
report is on test. Per-seed files ``results/deferral/drift-<split>-seed<N>.json``;
``--summary`` writes ``drift-<split>-summary.json``, ``drift-<split>-summary.md`` and
``drift-<split>.png``.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist

import numpy as np

from askexpert.corruptions import parse_corruption
from askexpert.routing.thresholds import ALL, tau_for_offload
from askexpert.runtime.control import ACCURACY_WINDOW, AccuracyKeeper, Observation, OffloadTracker
from askexpert.runtime.edge import EdgeRunner
from askexpert.runtime.settings import Connection
from askexpert_lab.bench.machine import describe, machine_info
from askexpert_lab.bench.stats import paired

RESULTS = Path(__file__).parents[1] / "results" / "deferral"
DRIFT = "gaussian_noise:5@1000"
IMAGES = 3000
SETTINGS = {"probe": 0.05, "prior": 1000.0}  # the estimator's, chosen on the validation stream (--split val)


def bundle_for(runs: Path, seed: int) -> Path:
    """The demo system of ``seed`` (trained by benchmarks/deferral.py) as a bundle at 30% offload."""
    from askexpert.system.build import Operating, build_system

    root = runs / f"bundle-seed{seed}"
    if not (root / "system.json").is_file():
        build_system(runs / f"generalist-seed{seed}", runs / f"experts-seed{seed}", root, Operating(offload=0.3))
    return root


def stream(bundle: Path, split: str, drift: str | None, n: int = IMAGES) -> tuple[np.ndarray, np.ndarray]:
    """``n`` stratified images of the bundle's ``split``, drifted from the corruption's start on."""
    from askexpert.config import DataConfig
    from askexpert.contract.bundle import open_system
    from askexpert.data import load_dataset
    from askexpert.splits import stratified_subset

    data = load_dataset(DataConfig(**open_system(bundle).manifest.data.config))
    part = data.val if split == "val" else data.test
    idx = stratified_subset(part.labels.numpy(), n, 0)
    images, labels = part.images.numpy()[idx], part.labels.numpy()[idx]
    return (parse_corruption(drift).apply(images) if drift else images), labels


class Edge:
    """The bundle's edge (its ONNX generalist, as ``askexpert edge`` opens it) and the server's expert pool
    in this process (the code a server answers with), opened once."""

    def __init__(self, bundle: Path) -> None:
        from askexpert.runtime.clients import InProcessExpertClient
        from askexpert.runtime.session import EdgeSettings, edge_system
        from askexpert.serving.pool import ExpertPool

        self.system = edge_system(EdgeSettings(system=bundle, threads=1, connection=Connection(server=None)))
        self.experts = InProcessExpertClient(ExpertPool(bundle, device="cpu", include_general=False))

    def run(self, images: np.ndarray, labels: np.ndarray, *, tau: float | None = None, controller=None) -> list:
        from dataclasses import replace

        policy = self.system.policy if tau is None else replace(self.system.policy, tau=tau)
        runner = EdgeRunner(self.system.model, policy, self.experts, self.system.experts, controller=controller)
        return list(runner.run((images[i:i + 1], labels[i:i + 1]) for i in range(len(images))))


@dataclass
class Answers:
    """Everything the edge could learn of each image of a stream: the generalist's score (what tau is
    compared with) and calibrated top probability, whether its answer is right, whether the routed expert's
    answer (after the fallback) is right, and the expert's probability for the generalist's answer."""

    score: np.ndarray
    top: np.ndarray
    local_right: np.ndarray
    remote_right: np.ndarray
    backs: np.ndarray  # nan: none (the answer is not one of the expert's classes)

    def save(self, path: Path) -> None:
        np.savez(path, **{k: getattr(self, k) for k in self.__dataclass_fields__})

    @classmethod
    def load(cls, path: Path) -> Answers:
        with np.load(path) as z:
            return cls(**{k: z[k] for k in cls.__dataclass_fields__})

    @classmethod
    def of(cls, traces) -> Answers:
        return cls(np.array([t.confidence for t in traces]), np.array([t.top_prob for t in traces]),
                   np.array([t.local_pred == t.label for t in traces]), np.array([t.pred == t.label for t in traces]),
                   np.array([np.nan if t.expert_backs is None else t.expert_backs for t in traces]))


def answered(edge: Edge, cache: Path, images: np.ndarray, labels: np.ndarray) -> Answers:
    """Every image of the stream offloaded once through the runner (kept in ``cache`` for the next run)."""
    if not cache.is_file():
        Answers.of(edge.run(images, labels, tau=ALL)).save(cache)
    return Answers.load(cache)


def replay(answers: Answers, *, tau: float | None = None, controller=None) -> dict:
    """The edge's loop over a stream whose every answer is known (one image at a time: the tau in force, the
    rule, the controller's probes, what it observes): per image kept, probe, right, tau. The controllers are
    the edge's own classes; :func:`run_seed` checks the result against the edge's runner."""
    n = len(answers.score)
    kept, probe, taus = np.zeros(n, bool), np.zeros(n, bool), np.zeros(n)
    picker = getattr(controller, "probes", None)
    for i in range(n):
        taus[i] = controller.tau if controller is not None else tau
        sent = bool(answers.score[i] < taus[i])
        if not sent and picker is not None:
            probe[i] = sent = bool(picker(i, np.array([True]))[0])
        kept[i] = not sent
        if controller is not None:
            backs = None if not sent or np.isnan(answers.backs[i]) else float(answers.backs[i])
            controller.observe(Observation(0.0, float(answers.score[i]), 1.0 if sent else None, 0.0,
                                           float(answers.top[i]), backs))
    return {"kept": kept, "probe": probe, "right": np.where(kept, answers.local_right, answers.remote_right),
            "tau": taus}


def kept_accuracy(run: dict, answers: Answers, sl: slice = slice(None)) -> float:
    return 100 * float(answers.local_right[sl][run["kept"][sl]].mean())


def label_quality(answers: Answers, tau: float, start: int) -> dict:
    """On the images the bundle's tau keeps, before and after the drift: how often the generalist is right,
    and what its calibrated confidence and the experts' probabilities for its answers say (%)."""
    out = {}
    for part, sl in (("before", slice(0, start)), ("after", slice(start, None))):
        keep = answers.score[sl] >= tau
        backs = answers.backs[sl][keep]
        out[part] = {"images": int(keep.sum()), "accuracy": 100 * float(answers.local_right[sl][keep].mean()),
                     "confidence": 100 * float(answers.top[sl][keep].mean()),
                     "experts": 100 * float(np.nanmean(backs)), "experts_answered": int((~np.isnan(backs)).sum())}
    return out


def row(name: str, run: dict, answers: Answers, start: int, keeper: AccuracyKeeper | None = None) -> dict:
    after = slice(start, None)
    off = ~run["kept"]
    out = {"edge": name, "accuracy": 100 * float(run["right"].mean()),
           "accuracy_before": 100 * float(run["right"][:start].mean()),
           "accuracy_after": 100 * float(run["right"][after].mean()),
           "offload": 100 * float(off.mean()), "offload_after": 100 * float(off[after].mean()),
           "probes": int(run["probe"].sum()), "kept_accuracy_after": kept_accuracy(run, answers, after),
           "offload_by_window": [100 * float(off[i:i + 100].mean()) for i in range(0, len(off), 100)],
           "tau_by_image": [round(float(t), 6) for t in run["tau"][::10]]}
    if keeper is not None:
        est, true, floor = [], [], []
        for w in range(0, len(off) - ACCURACY_WINDOW + 1, ACCURACY_WINDOW):
            sl = slice(w, w + ACCURACY_WINDOW)
            top = answers.top[sl][run["kept"][sl]]
            est.append(100 * keeper.estimate(top, keeper.fit_at(w + ACCURACY_WINDOW)))
            true.append(kept_accuracy(run, answers, sl))
            # the window's realised accuracy scatters around its expectation by the kept images' Bernoulli
            # spread (here from the generalist's calibrated probabilities): the chance that even an estimate
            # of that expectation lands within 2 points
            spread = 100 * math.sqrt(float((top * (1 - top)).sum())) / len(top)
            floor.append(2 * NormalDist().cdf(2 / spread) - 1)
        err = [e - t for e, t in zip(est, true, strict=True)]
        out.update(estimate_by_window=est, kept_accuracy_by_window=true, error_by_window=err,
                   max_abs_error=max(abs(e) for e in err), mean_abs_error=statistics.mean(abs(e) for e in err),
                   windows_within_2=sum(abs(e) <= 2 for e in err), windows=len(err),
                   exact_estimate_within_2=floor,
                   tau_changes=len(keeper.changes) - 1)
    return out


def run_seed(seed: int, split: str, runs: Path) -> dict:
    started = time.perf_counter()
    bundle = bundle_for(runs, seed)
    edge = Edge(bundle)
    start = parse_corruption(DRIFT).start
    tau0 = edge.system.policy.tau
    clean = answered(edge, runs / f"answers-val-clean-seed{seed}.npz", *stream(bundle, "val", None))
    # the target: what the bundle's tau keeps on the clean validation stream
    target = kept_accuracy(replay(clean, tau=tau0), clean) / 100
    images, labels = stream(bundle, split, DRIFT)
    answers = answered(edge, runs / f"answers-{split}-drift-seed{seed}.npz", images, labels)
    settings = {"held": SETTINGS, "label-free": {"probe": 0.0, "prior": math.inf}}
    if split == "val":  # the estimator's settings are chosen here
        settings.update({f"probe {p:g}, prior {q:g}": {"probe": p, "prior": q} for p in (0.05, 0.1)
                         for q in (1.0, 20.0, 100.0, 300.0, 1000.0)})
    rows, check = [], None
    for name, kw in settings.items():
        keeper = AccuracyKeeper(target, tau0, **kw)
        held = replay(answers, controller=keeper)
        rows.append(row("target-accuracy" if name == "held" else f"target-accuracy, {name}", held, answers, start,
                        keeper) | {"settings": {k: (None if math.isinf(v) else v) for k, v in kw.items()}})
        if name == "held":  # the replay is the edge: the runner, with the same keeper, takes the same decisions
            live = edge.run(images, labels, controller=AccuracyKeeper(target, tau0, **kw))
            check = [not t.route.offloaded for t in live] == held["kept"].tolist()
            assert check, "the replay and the edge's runner took different decisions"
            share = float((~held["kept"]).mean())
    rows.append(row("fixed tau, same offload", replay(answers, tau=tau_for_offload(answers.score, share)), answers,
                    start))
    rows.append(row("target-offload, same offload", replay(answers, controller=OffloadTracker(share, tau0)), answers,
                    start))
    rows.append(row("bundle's fixed tau (30% on val)", replay(answers, tau=tau0), answers, start))
    return {"seed": seed, "split": split, "drift": DRIFT, "images": len(labels), "target": target,
            "labels": label_quality(answers, tau0, start),
            "settings": {k: (None if math.isinf(v) else v) for k, v in SETTINGS.items()}, "rows": rows,
            "runner_check": check, "machine": machine_info(), "wall_s": time.perf_counter() - started,
            "command": f"python benchmarks/deferral_drift.py --seeds {seed} --split {split}"}


def summarise(files: list[dict]) -> dict:
    files = sorted(files, key=lambda f: f["seed"])
    names = [r["edge"] for r in files[0]["rows"]]

    def col(name: str, key: str) -> list[float]:
        return [next(r for r in f["rows"] if r["edge"] == name)[key] for f in files]

    def spread(values: list[float]) -> dict:
        return {"mean": statistics.mean(values), "std": statistics.stdev(values) if len(values) > 1 else None}

    keys = ("accuracy", "accuracy_before", "accuracy_after", "offload", "offload_after", "kept_accuracy_after")
    table = {name: {key: spread(col(name, key)) for key in keys} for name in names}
    estimators = {}
    for name in names:
        rows = [next(r for r in f["rows"] if r["edge"] == name) for f in files]
        if "error_by_window" in rows[0]:
            errors = [e for r in rows for e in r["error_by_window"]]
            chance = [c for r in rows for c in r["exact_estimate_within_2"]]
            estimators[name] = {"settings": rows[0]["settings"], "windows": len(errors),
                                "exact_estimate_within_2_expected": sum(chance),
                                "exact_estimate_all_within_2": math.prod(chance),
                                "within_2": sum(abs(e) <= 2 for e in errors),
                                "mean_abs_error": statistics.mean(abs(e) for e in errors),
                                "max_abs_error": max(abs(e) for e in errors), "mean_error": statistics.mean(errors),
                                "errors": errors}
    held = "target-accuracy"
    others = ("fixed tau, same offload", "target-offload, same offload", "target-accuracy, label-free")
    return {"seeds": [f["seed"] for f in files], "split": files[0]["split"], "drift": files[0]["drift"],
            "target": [f["target"] for f in files], "settings": files[0]["settings"], "table": table,
            "paired_accuracy": {f"{held} - {o}": paired(col(held, "accuracy"), col(o, "accuracy")) for o in others},
            "paired_accuracy_after": {f"{held} - {o}": paired(col(held, "accuracy_after"), col(o, "accuracy_after"))
                                      for o in others},
            "estimators": estimators, "runner_check": all(f["runner_check"] for f in files),
            "labels": {part: {k: spread([f["labels"][part][k] for f in files])
                              for k in ("accuracy", "confidence", "experts")} for part in ("before", "after")},
            "machine": describe(files[-1]["machine"])}


def markdown(s: dict) -> str:
    def cell(v: dict) -> str:
        return f"{v['mean']:.2f}" + (f" +/- {v['std']:.2f}" if v["std"] is not None else "")

    lines = [f"{s['split']} stream, {s['drift']}; seeds {', '.join(map(str, s['seeds']))}; target (the kept accuracy "
             f"of the bundle's tau on clean validation images) {', '.join(f'{100 * t:.2f}%' for t in s['target'])}; "
             f"{s['machine']}.", "",
             "| edge | accuracy % | before / after the drift % | offload % (after) | kept accuracy after % |",
             "|---|---|---|---|---|"]
    for name, t in s["table"].items():
        lines.append(f"| {name} | {cell(t['accuracy'])} | {cell(t['accuracy_before'])} / {cell(t['accuracy_after'])} "
                     f"| {cell(t['offload'])} ({cell(t['offload_after'])}) | {cell(t['kept_accuracy_after'])} |")
    lines += ["", "| paired over seeds | overall: mean [95% interval] | after the drift |", "|---|---|---|"]
    for name, p in s["paired_accuracy"].items():
        lines.append(f"| {name} | {_interval(p)} | {_interval(s['paired_accuracy_after'][name])} |")
    lines += ["", f"| estimate against the true kept accuracy ({ACCURACY_WINDOW}-image windows) | within 2 points | "
              "mean abs error | largest | mean (signed) | an exact estimate of each window's expectation: within 2 "
              "points, expected (all of them: chance) |", "|---|---|---|---|---|---|"]
    for name, e in s["estimators"].items():
        lines.append(f"| {name} | {e['within_2']} of {e['windows']} | {e['mean_abs_error']:.2f} | "
                     f"{e['max_abs_error']:.2f} | {e['mean_error']:+.2f} | {e['exact_estimate_within_2_expected']:.1f} "
                     f"({e['exact_estimate_all_within_2']:.2%}) |")
    lines += ["", "| images the bundle's tau keeps | generalist right % | its calibrated confidence % | the experts' "
              "probability for its answer % |", "|---|---|---|---|"]
    for part, q in s["labels"].items():
        lines.append(f"| {part} the drift | {cell(q['accuracy'])} | {cell(q['confidence'])} | {cell(q['experts'])} |")
    return "\n".join(lines) + "\n"


def _interval(p: dict) -> str:
    ci = p["ci95"]
    return f"{p['mean']:+.2f}" + (f" [{ci[0]:+.2f}, {ci[1]:+.2f}]" if ci else "")


def plot(files: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    f = sorted(files, key=lambda f: f["seed"])[0]
    fig, (a, b) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    for r in f["rows"]:
        a.plot(np.arange(len(r["offload_by_window"])) * 100 + 50, r["offload_by_window"], label=r["edge"])
    a.axvline(parse_corruption(f["drift"]).start, color="grey", ls=":")
    a.set_ylabel("offloaded, 100-image windows %")
    a.legend(fontsize=7)
    held = f["rows"][0]
    x = (np.arange(len(held["estimate_by_window"])) + 0.5) * ACCURACY_WINDOW
    b.plot(x, held["estimate_by_window"], marker="o", label="estimated (from the experts' answers)")
    b.plot(x, held["kept_accuracy_by_window"], marker="s", label="true")
    b.axhline(100 * f["target"], color="grey", ls="--", label="target")
    b.axvline(parse_corruption(f["drift"]).start, color="grey", ls=":")
    b.set_ylabel(f"kept accuracy, {ACCURACY_WINDOW}-image windows %")
    b.set_xlabel("image of the stream")
    b.legend(fontsize=7)
    fig.suptitle(f"--target-accuracy under {f['drift']} (seed {f['seed']}, {f['split']})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_summary(results: Path, split: str) -> dict:
    files = [json.loads(p.read_text()) for p in sorted(results.glob(f"drift-{split}-seed*.json"))]
    if not files:
        raise SystemExit(f"no drift-{split}-seed*.json in {results}: run python benchmarks/deferral_drift.py "
                         f"--seeds 0 1 2 --split {split} first")
    summary = summarise(files)
    (results / f"drift-{split}-summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    text = markdown(summary)
    (results / f"drift-{split}-summary.md").write_text(text)
    plot(files, results / f"drift-{split}.png")
    print(text)
    return summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[])
    ap.add_argument("--split", choices=("val", "test"), default="test",
                    help="val: also every estimator setting of the grid the default is chosen from")
    ap.add_argument("--summary", action="store_true", help="run nothing: aggregate the seed files present")
    ap.add_argument("--runs", type=Path, default=Path("runs/deferral"),
                    help="where benchmarks/deferral.py trained the systems")
    ap.add_argument("--results", type=Path, default=RESULTS)
    args = ap.parse_args()
    args.results.mkdir(parents=True, exist_ok=True)
    for seed in args.seeds:
        result = run_seed(seed, args.split, args.runs)
        (args.results / f"drift-{args.split}-seed{seed}.json").write_text(json.dumps(result, indent=1) + "\n")
        print(f"seed {seed}: " + "; ".join(f"{r['edge']} {r['accuracy']:.2f}% at {r['offload']:.1f}%"
                                           for r in result["rows"]), flush=True)
    if args.summary or args.seeds:
        write_summary(args.results, args.split)


if __name__ == "__main__":
    main()

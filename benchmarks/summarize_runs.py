"""Benchmark tables from the metrics files of the reference-table runs, seed by seed.

    python benchmarks/summarize_runs.py results/gpu-2026-11-26

Reads the copies that benchmarks/gpu_session.sh collects from each run directory
(``<run>-seed<N>-metrics.json`` of the generalist and the general model, with its per-epoch
``-metrics.jsonl`` where present, and ``<run>-seed<N>-experts.json``
of the static and progressive experts) and prints, as Markdown with mean +/- standard deviation
over seeds: each model's test top-1 and training time, and each expert strategy's accuracy on its
experts' subsets (every expert on the test images of its own classes, weighted by their number)
and its recall of "other" (images outside the subset recognised as such).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from collections import defaultdict
from pathlib import Path


def _ms(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} +/- {statistics.stdev(values):.2f}"


def load(folder: Path) -> tuple[dict, dict]:
    models: dict[str, dict[int, dict]] = defaultdict(dict)
    experts: dict[str, dict[int, dict]] = defaultdict(dict)
    for path in sorted(folder.glob("*-seed*-*.json")):
        m = re.fullmatch(r"(.+)-seed(\d+)-(metrics|experts)\.json", path.name)
        if not m:
            continue
        name, seed, kind = m.group(1), int(m.group(2)), m.group(3)
        record = json.loads(path.read_text())
        epochs = path.with_suffix(".jsonl")  # every epoch's log: the training time across resumptions
        if kind == "metrics" and epochs.is_file():
            record["train"]["seconds"] = sum(json.loads(line)["train_seconds"] for line in epochs.open())
        (models if kind == "metrics" else experts)[name][seed] = record
    return models, experts


def subset_scores(summary: dict, split: str) -> tuple[float, float]:
    """Accuracy on the experts' own subsets and recall of 'other', each weighted by its images."""
    rows = summary["experts"]
    n = sum(e[split]["subset_samples"] for e in rows)
    acc = sum(e[split]["subset_accuracy"] * e[split]["subset_samples"] for e in rows) / n
    m = sum(e[split]["other_samples"] for e in rows)
    other = sum(e[split]["other_recall"] * e[split]["other_samples"] for e in rows) / m
    return acc, other


def tables(models: dict, experts: dict) -> str:
    lines = ["| model (full Fashion-MNIST) | seeds | test top-1 % | val top-1 % | training loop s | images/s |",
             "|---|---|---|---|---|---|"]
    for name, seeds in sorted(models.items()):
        rs = [seeds[s] for s in sorted(seeds)]
        lines.append(f"| {name} | {len(rs)} | {_ms([r['test']['top1'] for r in rs])} | "
                     f"{_ms([r['val']['top1'] for r in rs])} | {_ms([r['train']['seconds'] for r in rs])} | "
                     f"{_ms([r['train']['images_per_s'] for r in rs])} |")
    lines += ["", "| experts | seeds | on their subsets, test % | on their subsets, val % | 'other' recall, test % "
              "| training s |", "|---|---|---|---|---|---|"]
    for name, seeds in sorted(experts.items()):
        rs = [seeds[s] for s in sorted(seeds)]
        test = [subset_scores(r, "test") for r in rs]
        val = [subset_scores(r, "val") for r in rs]
        seconds = [sum(e["train_seconds"] for e in r["experts"]) for r in rs]
        lines.append(f"| {name} | {len(rs)} | {_ms([a for a, _ in test])} | {_ms([a for a, _ in val])} | "
                     f"{_ms([o for _, o in test])} | {_ms(seconds)} |")
    lines += ["", "| seed | partition (class ids per expert) |", "|---|---|"]
    first = next(iter(experts.values()), {})
    for seed in sorted(first):
        lines.append(f"| {seed} | {first[seed]['partition']['experts']} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", type=Path)
    args = ap.parse_args()
    models, experts = load(args.folder)
    if not models and not experts:
        raise SystemExit(f"no <run>-seed<N>-metrics.json or -experts.json files in {args.folder}")
    print(tables(models, experts))


if __name__ == "__main__":
    main()

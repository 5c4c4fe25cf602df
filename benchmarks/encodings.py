"""Benchmark: what each image encoding costs on the miniature (issue 29): bytes an offload, link time on
wifi / lte / 5g, the edge's encode time, and the experts' accuracy on the offloaded images when the
images travel lossy (JPEG, WebP at Q = 95, 85, 75) against raw bytes, per seed.

    python benchmarks/encodings.py [--seeds 0 1 2] [--images 5000]
    python benchmarks/encodings.py --summary          # the tables from the saved runs

For each seed a bundle of ``runs/specialists-full`` (the generalist and progressive experts of issue
26, seed S) at 30% offload is served by a real server on loopback; the edge CLI's runner streams the
same stratified test images once per encoding (the edge on this host, unthrottled: the encode times of
the emulated devices are in the paper-scale bench). The same images are offloaded whatever the
encoding (the generalist decides before anything is encoded), so the accuracy differences are paired:
per seed, the images an encoding turned right or wrong against raw.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np

from askexpert.console import stdout_console
from askexpert.contract.codecs import Encoding
from askexpert.runtime.link import PRESETS
from askexpert.runtime.session import EdgeSettings, run_edge
from askexpert.runtime.settings import Connection, Inputs
from askexpert.system.build import Operating, build_system
from askexpert_lab.bench.machine import describe, machine_info
from askexpert_lab.testbed.server import ServerProcess

RUNS = Path("runs/specialists-full")
OUT = Path(__file__).parents[1] / "results" / "encodings"
FORMS = ("raw", "png", "jpeg:95", "jpeg:85", "jpeg:75", "webp:95", "webp:85", "webp:75")
LINKS = ("wifi", "lte", "5g")


def bundle_for(seed: int, work: Path) -> Path:
    root = work / f"bundle-seed{seed}"
    if not (root / "system.json").is_file():
        build_system(RUNS / f"generalist-fmnist-cpu-seed{seed}", RUNS / f"progressive-plain-seed{seed}", root,
                     Operating(offload=0.3, k=3), overwrite=True)
    return root


def measure(seed: int, images: int, work: Path) -> dict:
    bundle = bundle_for(seed, work)
    rows = {}
    with ServerProcess(bundle, threads=1) as url:
        for form in FORMS:
            report = run_edge(EdgeSettings(system=bundle, threads=1,
                                           connection=Connection(server=url, encoding=Encoding.parse(form),
                                                                 timeout_s=10.0),
                                           inputs=Inputs(sources=["split:test"], limit=images)))
            t = report.traces
            off = [x for x in t if x.route.offloaded]
            rows[form] = {
                "summary": {k: v for k, v in vars(report.summary).items() if k != "latency_ms"},
                "pred": [x.pred for x in t], "label": [x.label for x in t], "offloaded": [x.route.offloaded for x in t],
                "encode_ms": statistics.median(x.encode_ms for x in off),
                "up_bytes": statistics.mean(x.up_bytes for x in off),
                "down_bytes": statistics.mean(x.down_bytes for x in off),
            }
            print(f"seed {seed} {form}: offload {report.summary.offload_rate:.1f}%, on offloaded "
                  f"{report.summary.offloaded_accuracy:.2f}%, {rows[form]['up_bytes']:.0f} B up", flush=True)
    return rows


def summarize(runs: dict[int, dict]) -> str:
    lines = ["| encoding | bytes up an offload | link ms wifi / lte / 5g | encode ms (host, median) | "
             "accuracy on offloaded % (mean ± std over seeds) | paired vs raw, points (mean ± std) | "
             "answers changed vs raw (right→wrong / wrong→right, all seeds) | accuracy overall % |",
             "|---|---|---|---|---|---|---|---|"]
    for form in FORMS:
        acc, diff, overall, up, down, enc, lost, won = [], [], [], [], [], [], 0, 0
        for rows in runs.values():
            r, raw = rows[form], rows["raw"]
            off = np.array(r["offloaded"])
            assert off.tolist() == raw["offloaded"], "the same images are offloaded whatever the encoding"
            label = np.array(r["label"])
            right, right_raw = np.array(r["pred"]) == label, np.array(raw["pred"]) == label
            acc.append(100 * right[off].mean())
            diff.append(100 * (right[off].mean() - right_raw[off].mean()))
            overall.append(100 * right.mean())
            lost += int((right_raw & ~right)[off].sum())
            won += int((~right_raw & right)[off].sum())
            up.append(r["up_bytes"])
            down.append(r["down_bytes"])
            enc.append(r["encode_ms"])
        u, d = statistics.mean(up), statistics.mean(down)
        links = " / ".join(f"{PRESETS[name].delay_s(u, d) * 1000:.2f}" for name in LINKS)

        def ms(v: list[float]) -> str:
            return f"{statistics.mean(v):.2f} ± {statistics.stdev(v):.2f}" if len(v) > 1 else f"{v[0]:.2f}"

        lines.append(f"| {form} | {u:.0f} | {links} | {statistics.mean(enc):.3f} | {ms(acc)} | "
                     f"{'—' if form == 'raw' else ms(diff)} | {'—' if form == 'raw' else f'{lost} / {won}'} | "
                     f"{ms(overall)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--images", type=int, default=5000, help="stratified test images a seed (all encodings)")
    ap.add_argument("--work", type=Path, default=Path("runs/encodings"))
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--summary", action="store_true", help="only summarise the saved runs")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.summary:
        for seed in args.seeds:
            (args.out / f"seed{seed}.json").write_text(json.dumps(measure(seed, args.images, args.work)))
        (args.out / "machine.json").write_text(json.dumps({**machine_info(), "images": args.images}, indent=1))
    runs = {int(p.stem[4:]): json.loads(p.read_text()) for p in sorted(args.out.glob("seed*.json"))}
    if not runs:
        print("no saved runs: run without --summary first", file=sys.stderr)
        return 2
    machine = json.loads((args.out / "machine.json").read_text())
    text = (f"{len(runs)} seeds ({', '.join(map(str, runs))}), {machine['images']} stratified Fashion-MNIST test "
            f"images a seed, 30% offloaded; {describe(machine)}, {machine['date']}.\n\n" + summarize(runs) + "\n")
    (args.out / "summary.md").write_text(text)
    stdout_console().print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

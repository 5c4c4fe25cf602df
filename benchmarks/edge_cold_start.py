"""Benchmark: the edge's cold start (process start to its first answer) and resident memory, the
bundle edge (ONNX Runtime + NumPy + httpx) against the run-directory edge (torch; the edge as it was
before bundles: checkpoint in torch, calibration from the cached validation logits), side by side.

    python benchmarks/edge_cold_start.py                 # the demo's models (trained or reused in runs/demo)
    python benchmarks/edge_cold_start.py --repeats 7 --generalist RUN --experts RUN
    python benchmarks/edge_cold_start.py --learned        # also a bundle with the learned deferral rule

One expert server (the bundle, 1 thread) answers both. Each repeat starts a fresh process per edge,
interleaved, that answers one image file (``askexpert edge ... --input one.png``) and exits: the
process's wall time from ``Popen`` to exit bounds its cold start, and ``os.wait4`` gives its peak
resident memory. Medians over the repeats; goals: cold start <= 1 s, RSS <= 150 MB on this machine.
Writes results/<date>-<host>-edge-cold-start.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

GOAL_S, GOAL_MB = 1.0, 150.0


# Linux carries a process's peak RSS across fork and exec (the kernel's maxrss), so an edge started
# from this process (torch loaded: ~900 MB) would report this process's peak. The edges are started
# by a small stdlib-only launcher instead, forked before anything heavy is imported.
LAUNCHER = r"""
import json, os, subprocess, sys, tempfile, time
for line in sys.stdin:
    args = json.loads(line)
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        pid = subprocess.Popen(args, stdout=out, stderr=err, env={**os.environ, "OMP_NUM_THREADS": "1"}).pid
        _, status, usage = os.wait4(pid, 0)
        seconds = time.perf_counter() - t0
        out.seek(0); err.seek(0)
        code = os.waitstatus_to_exitcode(status)
        print(json.dumps({"seconds": seconds, "rss_mb": usage.ru_maxrss / 1024, "code": code,
                          "out": out.read().decode()[-3000:], "err": err.read().decode()[-3000:]}), flush=True)
"""


class Launcher:
    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", LAUNCHER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True)

    def run(self, args: list[str]) -> tuple[float, float]:
        """(wall seconds from start to exit, the edge's own peak RSS in MB) of one edge process."""
        self.proc.stdin.write(json.dumps(args) + "\n")
        self.proc.stdin.flush()
        r = json.loads(self.proc.stdout.readline())
        if r["code"] != 0 or "offload rate" not in r["out"]:
            raise SystemExit(f"edge failed ({' '.join(args)}): {r['err']}")
        return r["seconds"], r["rss_mb"]

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--generalist", type=Path, help="a generalist run (default: the demo's)")
    ap.add_argument("--experts", type=Path, help="an expert run (default: the demo's)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--slim-venv", type=Path,
                    help="also run the bundle edge from this venv (pip install askexpert: the edge install, no torch)")
    ap.add_argument("--learned", action="store_true",
                    help="also the bundle built with --deferral learned (its own server: another system id)")
    ap.add_argument("--results", type=Path, default=Path(__file__).parents[1] / "results")
    args = ap.parse_args()
    launcher = Launcher()  # before torch is imported
    from PIL import Image

    from askexpert.system.build import Operating, build_system
    from askexpert_lab.bench.machine import describe, machine_info
    from askexpert_lab.testbed.server import ServerProcess

    if args.generalist is None or args.experts is None:
        from askexpert.system.pipeline import train_system
        from askexpert_lab.demo import demo_pipeline

        trained = train_system(demo_pipeline(), Path("runs/demo"))
        args.generalist, args.experts = trained.generalist, trained.experts["progressive"]
    info = machine_info()
    with tempfile.TemporaryDirectory() as tmp:
        bundle = build_system(args.generalist, args.experts, Path(tmp) / "system").root
        from askexpert.data.fashion_mnist import load_split, locate

        images, _ = load_split(locate(None, allow_download=False), "test")
        image = Path(tmp) / "one.png"
        Image.fromarray(images[0, 0].numpy()).save(image)
        cli = [sys.executable, "-m", "askexpert.cli", "edge"]
        rows: dict[str, list[tuple[float, float]]] = {"run directory (torch)": [], "bundle (ONNX Runtime)": []}
        if args.slim_venv:
            rows["bundle, slim edge install (no torch)"] = []
        learned = None
        if args.learned:
            learned = build_system(args.generalist, args.experts, Path(tmp) / "learned",
                                   Operating(deferral="learned")).root
            rows["bundle, learned deferral (ONNX Runtime)"] = []
        with contextlib.ExitStack() as stack:
            url = stack.enter_context(ServerProcess(bundle, threads=1))
            common = ["--server", url, "--input", str(image), "--threads", "1"]
            run_dir = [*cli, str(args.generalist), *common]
            bundled = [*cli, str(bundle), *common]
            commands = {"run directory (torch)": run_dir, "bundle (ONNX Runtime)": bundled}
            if args.slim_venv:
                commands["bundle, slim edge install (no torch)"] = [str(args.slim_venv / "bin" / "askexpert"), "edge",
                                                                   str(bundle), *common]
            if learned is not None:
                learned_url = stack.enter_context(ServerProcess(learned, threads=1))
                commands["bundle, learned deferral (ONNX Runtime)"] = [*cli, str(learned), "--server", learned_url,
                                                                       *common[2:]]
            for name in rows:  # warm the logits cache and the page cache once, untimed
                launcher.run(commands[name])
            for _ in range(args.repeats):
                for name in rows:
                    rows[name].append(launcher.run(commands[name]))
    launcher.close()
    table = {name: {"cold_start_s": statistics.median(s for s, _ in r), "rss_mb": statistics.median(m for _, m in r),
                    "runs": [{"seconds": s, "rss_mb": m} for s, m in r]} for name, r in rows.items()}
    old, new = table["run directory (torch)"], table["bundle (ONNX Runtime)"]
    result = {"machine": info, "command": "python benchmarks/edge_cold_start.py " + " ".join(sys.argv[1:]),
              "generalist": str(args.generalist), "experts": str(args.experts), "repeats": args.repeats,
              "edges": table, "ratio_cold_start": new["cold_start_s"] / old["cold_start_s"],
              "ratio_rss": new["rss_mb"] / old["rss_mb"],
              "goals": {"cold_start_le_1s": new["cold_start_s"] <= GOAL_S, "rss_le_150mb": new["rss_mb"] <= GOAL_MB}}
    args.results.mkdir(parents=True, exist_ok=True)
    out = args.results / f"{info['date']}-{info['host']}-edge-cold-start.json"
    out.write_text(json.dumps(result, indent=1))
    print(f"machine: {describe(info)}; median of {args.repeats}, interleaved; results: {out}\n")
    print("| edge | cold start (process start to first answer, s) | peak RSS (MB) |\n|---|---|---|")
    for name, row in table.items():
        print(f"| {name} | {row['cold_start_s']:.2f} | {row['rss_mb']:.0f} |")
    print(f"\nbundle / run directory: cold start {result['ratio_cold_start']:.2f}x, RSS {result['ratio_rss']:.2f}x; "
          f"goals (<= {GOAL_S:.0f} s, <= {GOAL_MB:.0f} MB): {result['goals']}")


if __name__ == "__main__":
    main()

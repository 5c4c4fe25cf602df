"""Where the test suite's accuracy floors stand: every test that checks a trained model against a floor
(the tests taking the ``floor`` fixture), run over several training seeds on each precision path, with
what each floor measured.

    python benchmarks/suite_floors.py                          # seeds 0 1 2, bf16 (where native) and fp32
    python benchmarks/suite_floors.py --seeds 0 --precisions fp32
    python benchmarks/suite_floors.py --seeds 1 2 --merge floors.jsonl   # and a full suite's own log

A full ``make test`` run with ``ASKEXPERT_FLOOR_LOG=floors.jsonl`` records the same lines for its seed;
``--merge`` adds such logs to the table (``--seeds`` with no seed: only tabulate them).

Each (precision, seed) is one pytest run of just those tests, with ``ASKEXPERT_PRECISION`` and
``ASKEXPERT_SEED`` set and ``ASKEXPERT_FLOOR_LOG`` collecting the values; the table gives, per floor
and precision, the lowest, mean and highest value and the margin (lowest - floor). A floor is sound
when its margin is several times the spread between seeds on both paths. Results go to
``results/test-floors.json`` (with the CPU and the date); docs/testing.md quotes them.
"""

from __future__ import annotations

import argparse
import ast
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def floor_tests() -> list[str]:
    """Node ids of the test functions that take the ``floor`` fixture."""
    ids = []
    for path in sorted((ROOT / "tests").glob("test_*.py")):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.FunctionDef) and any(a.arg == "floor" for a in node.args.args):
                ids.append(f"tests/{path.name}::{node.name}")
    return ids


def run(precision: str, seed: int, tests: list[str], console: Console) -> tuple[list[dict], float, int]:
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "floors.jsonl"
        env = {**os.environ, "ASKEXPERT_PRECISION": precision, "ASKEXPERT_SEED": str(seed),
               "ASKEXPERT_FLOOR_LOG": str(log)}
        start = datetime.datetime.now()
        done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests], cwd=ROOT,
                              env=env, capture_output=True, text=True)
        seconds = (datetime.datetime.now() - start).total_seconds()
        tail = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr[-300:]
        console.log(f"{precision} seed {seed}: {tail} ({seconds:.0f} s)")
        rows = [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() else []
    return rows, seconds, done.returncode


def main() -> int:
    from askexpert.training.engine import cpu_has_native_bf16
    from askexpert_lab.bench.machine import machine_info

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2], help="none: only tabulate --merge logs")
    parser.add_argument("--precisions", nargs="+", choices=["bf16", "fp32"], default=None,
                        help="default: bf16 where this CPU has it natively, and fp32")
    parser.add_argument("--merge", type=Path, nargs="*", default=[], help="floor logs of earlier runs to add")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "test-floors.json")
    args = parser.parse_args()
    console = Console(stderr=True)
    precisions = args.precisions or (["bf16", "fp32"] if cpu_has_native_bf16() else ["fp32"])
    tests = floor_tests()
    console.log(f"{len(tests)} tests with floors; seeds {args.seeds}; precisions {precisions}")
    rows = [json.loads(line) for log in args.merge for line in log.read_text().splitlines() if line.strip()]
    runs = [{"merged": str(log)} for log in args.merge]
    for precision in precisions:
        for seed in args.seeds:
            measured, seconds, code = run(precision, seed, tests, console)
            rows += measured
            runs.append({"precision": precision, "seed": seed, "seconds": round(seconds, 1), "exit": code})
    summary = {}
    for r in rows:
        by_precision = summary.setdefault((r["what"], r["floor"]), {})
        by_precision.setdefault(r["precision"], []).append((r.get("seed", 0), r["value"]))
    table = Table(title="the suite's accuracy floors over seeds (lowest / mean / highest; margin = lowest - floor)")
    table.add_column("what")
    table.add_column("floor", justify="right")
    for precision in precisions:
        table.add_column(precision, justify="right")
        table.add_column("margin", justify="right")
    out_rows = []
    for (what, minimum), by_precision in sorted(summary.items()):
        cells = []
        for precision in precisions:
            values = [v for _, v in sorted(by_precision.get(precision, []))]
            cells += ([f"{min(values):.1f} / {statistics.mean(values):.1f} / {max(values):.1f}",
                       f"{min(values) - minimum:+.1f}"] if values else ["-", "-"])
        table.add_row(what, f"{minimum:g}", *cells)
        by_seed = {p: {} for p in by_precision}
        for p, pairs in by_precision.items():
            for seed, value in sorted(pairs):
                by_seed[p].setdefault(str(seed), []).append(value)  # a test may check one floor several times
        out_rows.append({"what": what, "floor": minimum, "by_seed": by_seed})
    Console().print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    machine = machine_info()
    args.out.write_text(json.dumps({"date": machine["date"], "cpu": machine["cpu"],
                                    "native_bf16": machine["cpu_native_bf16"], "machine": machine,
                                    "seeds": args.seeds, "runs": runs, "floors": out_rows}, indent=1) + "\n")
    console.log(f"written {args.out}")
    return 0 if all(r.get("exit", 0) == 0 for r in runs) else 1


if __name__ == "__main__":
    raise SystemExit(main())

"""Benchmark: the experts behind askexpert's /v1, askexpert's Open Inference Protocol endpoint and a real Triton,
side by side in one run, closed loop and open loop, on loopback.

    python benchmarks/oip_serving.py [--system BUNDLE] [--clients 16] [--seconds 10] [--open-seconds 8]

The servers: ``askexpert serve BUNDLE`` (uvicorn, torch, 1 thread, ``--max-in-flight`` as its queue bound) asked
over ``/v1`` and over ``/v2``; and ``askexpert serve --backend triton REPO`` on ``askexpert export triton``'s
repository (PyTriton's tritonserver, ONNX Runtime, 1 thread, ``--max-queue`` as its queue bound), over ``/v2``.
One server runs at a time, on the same cores.

1. **Closed loop**: ``--clients`` threads, each sending one image at a time to expert 0 for ``--seconds``:
   p50 / p99 latency, images a second, and the server's CPU a request (user + system time of its whole process
   group over the run, divided by the requests answered).
2. **Open loop** (MLPerf's server scenario, :mod:`askexpert_lab.testbed.open_loop`): Poisson arrivals at 0.5x, 1x,
   1.5x and 2x the capacity the closed loop measured for that server, ``--open-seconds`` each: p50 / p99 from
   each request's scheduled arrival, the share shed (429 / 503), failures (timeouts, others), answers checked
   against single sends of the same images, and the server's RSS before and after.

Goal (issue 53): the OIP path's p50 within 1.2x of /v1's. Without --system the demo's bundle (runs/demo/system,
made by ``askexpert demo`` if missing). Writes results/<date>-<host>-oip-serving.json and prints Markdown tables.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from server_under_load import demo_bundle

from askexpert_lab.bench.machine import describe, machine_info
from askexpert_lab.testbed.open_loop import Sender, open_loop, reference_answers
from askexpert_lab.testbed.server import ServerProcess, TritonProcess, triton_python

IMAGES = 256
LOADS = (0.5, 1.0, 1.5, 2.0)
QUEUE_BOUND = 32  # requests a server holds before it sheds; the load's clients can hold 4x that
CLIENT_SLOTS = 4 * QUEUE_BOUND


def _group(pid: int):
    """Each live process of ``pid``'s process group (``pid`` alone where that group is this benchmark's own) as
    its /proc directory."""
    pgid, own = os.getpgid(pid), os.getpgid(os.getpid())
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (entry.name == str(pid) if pgid == own else _pgid(entry) == pgid):
            yield entry


def _pgid(entry: Path) -> int | None:
    try:
        return int((entry / "stat").read_text().rsplit(")", 1)[1].split()[2])
    except (OSError, IndexError, ValueError):
        return None


def group_cpu_s(pid: int) -> float:
    """User + system CPU seconds of the server's processes (:func:`_group`)."""
    tick, total = os.sysconf("SC_CLK_TCK"), 0.0
    for entry in _group(pid):
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


def group_rss_mb(pid: int) -> float:
    total = 0
    for entry in _group(pid):
        try:
            total += int(next(x for x in (entry / "status").read_text().splitlines() if x.startswith("VmRSS"))
                         .split()[1])
        except (OSError, StopIteration):
            continue
    return total / 1024


def closed_loop(sender: Sender, images: np.ndarray, clients: int, seconds: float, pid: int) -> dict:
    bodies = [sender.body(image) for image in images]
    latencies: list[float] = []
    lock = threading.Lock()
    stop = time.perf_counter() + seconds

    def client(k: int) -> None:
        i, mine = k, []
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            resp = sender.send(*bodies[i % len(bodies)])
            if resp.status_code == 200:
                mine.append((time.perf_counter() - t0) * 1000)
            i += clients
        with lock:
            latencies.extend(mine)

    cpu0, t0 = group_cpu_s(pid), time.perf_counter()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall, cpu = time.perf_counter() - t0, group_cpu_s(pid) - cpu0
    return {"requests": len(latencies), "seconds": wall, "images_per_s": len(latencies) / wall,
            "p50_ms": statistics.median(latencies), "p99_ms": float(np.percentile(latencies, 99)),
            "server_cpu_ms_per_request": 1000 * cpu / max(len(latencies), 1)}


def measure(name: str, url: str, protocol: str, pid: int, images: np.ndarray, args) -> dict:
    sender = Sender(url, "0", protocol, timeout_s=args.timeout, connections=CLIENT_SLOTS)
    try:
        reference = reference_answers(sender, images[:64])
        closed_loop(sender, images, args.clients, 2.0, pid)  # warm-up
        closed = closed_loop(sender, images, args.clients, args.seconds, pid)
        print(f"{name}: closed loop {closed['images_per_s']:.0f} images/s, p50 {closed['p50_ms']:.2f} ms, "
              f"p99 {closed['p99_ms']:.2f} ms", flush=True)
        opened = []
        for load in LOADS:
            rss0 = group_rss_mb(pid)
            r = open_loop(sender, images[:64], reference, rate=load * closed["images_per_s"],
                          seconds=args.open_seconds, seed=int(load * 10), workers=CLIENT_SLOTS)
            opened.append({"load": load, **r.summary(), "rss_before_mb": rss0, "rss_after_mb": group_rss_mb(pid)})
            print(f"  open loop {load:g}x: p99 {r.p99_ms or float('nan'):.1f} ms, shed {r.shed}/{r.sent}, "
                  f"failed {r.failed}, mismatched {r.mismatched}", flush=True)
        return {"server": name, "protocol": protocol, "closed": closed, "open": opened}
    finally:
        sender.close()


def table(rows: list[dict]) -> str:
    lines = ["| server / protocol | images/s | p50 ms | p99 ms | server CPU ms a request |", "|---|---|---|---|---|"]
    for r in rows:
        c = r["closed"]
        lines.append(f"| {r['server']} | {c['images_per_s']:.0f} | {c['p50_ms']:.2f} | {c['p99_ms']:.2f} | "
                     f"{c['server_cpu_ms_per_request']:.2f} |")
    lines += ["", "| server / protocol | offered load | offered rps | answered rps | p50 ms | p99 ms | shed % | "
              "failed | mismatched | RSS MB before -> after |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        for o in r["open"]:
            lines.append(f"| {r['server']} | {o['load']:g}x | {o['offered_rps']:.0f} | {o['achieved_rps']:.0f} | "
                         f"{o['p50_ms'] or float('nan'):.1f} | {o['p99_ms'] or float('nan'):.1f} | "
                         f"{100 * o['shed_share']:.1f} | {o['failed']} | {o['mismatched']} | "
                         f"{o['rss_before_mb']:.0f} -> {o['rss_after_mb']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--system", type=Path)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=10.0, help="closed loop, a server")
    ap.add_argument("--open-seconds", type=float, default=8.0, help="open loop, a load level")
    ap.add_argument("--timeout", type=float, default=2.0, help="a request's deadline (s)")
    ap.add_argument("--results", type=Path, default=Path(__file__).parents[1] / "results")
    args = ap.parse_args()
    args.system = args.system or demo_bundle()
    python = triton_python()
    info = machine_info()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        from askexpert.contract.bundle import open_system
        from askexpert.system.export_triton import TritonBatching, export_triton

        system = open_system(args.system)
        images = np.random.default_rng(0).integers(
            0, 256, (IMAGES, *system.manifest.experts[0].input_shape), dtype=np.uint8)
        native = ServerProcess(args.system, threads=1, log_path=Path(tmp) / "native.log",
                               extra_args=["--no-general", "--max-in-flight", str(QUEUE_BOUND)])
        with native as url:
            for protocol in ("v1", "v2"):
                rows.append(measure(f"askexpert /{protocol}", url, protocol, native.proc.pid, images, args))
        if python is None:
            print("no environment with PyTriton (scripts/bootstrap.sh makes .venv-triton): Triton not measured")
        else:
            repo = Path(tmp) / "repo"
            export_triton(args.system, repo, TritonBatching(max_queue_size=QUEUE_BOUND), include_general=False)
            triton = TritonProcess(repo, python=python, threads=1, log_path=Path(tmp) / "triton.log",
                                   startup_timeout_s=180)
            with triton as triton_url:
                rows.append(measure("Triton (PyTriton) /v2", triton_url, "v2", triton.proc.pid, images, args))
    v1, v2 = rows[0]["closed"], rows[1]["closed"]
    summary = {"oip_p50_over_v1": v2["p50_ms"] / v1["p50_ms"],
               "triton_p50_over_native_v2": rows[2]["closed"]["p50_ms"] / v2["p50_ms"] if len(rows) > 2 else None}
    out = {"machine": info, "command": "python benchmarks/oip_serving.py " + " ".join(sys.argv[1:]),
           "system": str(args.system), "rows": rows, "summary": summary, "queue_bound": QUEUE_BOUND}
    path = args.results / f"{time.strftime('%Y-%m-%d')}-{info.get('host', 'vm')}-oip-serving.json"
    path.write_text(json.dumps(out, indent=1))
    print(f"\n{describe(info)}\n\n" + table(rows) + f"\n\nOIP p50 / v1 p50: {summary['oip_p50_over_v1']:.2f}x"
          + (f"; Triton p50 / native OIP p50: {summary['triton_p50_over_native_v2']:.2f}x"
             if summary["triton_p50_over_native_v2"] else "") + f"\n{path}")


if __name__ == "__main__":
    main()

"""``askexpert demo``: the whole collaborative system on Fashion-MNIST, offline, in a few minutes.

1. Train (or reuse from ``runs/demo``) a small generalist, a general model and progressive experts
   (configs ``demo-generalist``, ``demo-general``, ``demo-experts``), with a partition of the classes
   from the generalist's validation confusion.
2. Start the expert server as a child process on a free loopback port.
3. Stream the test split through the edge runner, one image at a time, over real HTTP.
4. Print a table (accuracy, offload rate, latency with its breakdown, modelled energy) and write a
   report into ``runs/demo/report``; stop the server.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path

from rich.console import Console

from askexpert.config import load_run_config
from askexpert.costs.profiles import device, network
from askexpert.runtime.link import LinkProfile
from askexpert.runtime.session import EdgeSettings, run_edge
from askexpert.serving.process import ServerProcess
from askexpert.training import train_generalist
from askexpert.training.engine import progress_bar
from askexpert.training.experts import train_experts
from askexpert.training.partition import make_partition

EDGE_DEVICE, RADIO = "raspberry-pi-4", "wifi"  # profiles with sourced figures (costs/profiles.yaml)


def energy_estimate(traces, summary: dict) -> dict:
    """Modelled edge energy per image: the edge device's active power over the edge compute time
    measured here, plus radio energy for the bytes each offload moved. Labelled as modelled."""
    dev, radio = device(EDGE_DEVICE), network(RADIO)
    n = len(traces)
    compute_j = sum(dev.energy_j(t.edge_ms / 1000) for t in traces) / n
    radio_j = summary["bytes_moved"] * 8 * radio.joules_per_bit / n
    return {
        "kind": "modelled",
        "edge_compute_mj_per_image": 1000 * compute_j,
        "radio_mj_per_image": 1000 * radio_j,
        "total_mj_per_image": 1000 * (compute_j + radio_j),
        "device_profile": f"{dev.name}: {dev.active_w} W active ({dev.source})",
        "network_profile": f"{radio.name}: {radio.joules_per_bit:g} J/bit ({radio.source})",
        "note": "edge compute time measured on this host; power from the device profile",
    }


def run_demo(*, output_dir: Path = Path("runs"), fresh: bool = False, limit: int | None = 2000,
             link: LinkProfile | None = None, console: Console | None = None,
             overrides: list[str] | None = None) -> dict:
    """Run the demo; ``overrides`` (``section.key=value``) apply to all three demo configs."""
    base = Path(output_dir) / "demo"
    if fresh and base.exists():
        shutil.rmtree(base)
    console = console or Console(stderr=True)
    common = [f"output_dir={base}", "train.threads=2", *(overrides or [])]
    console.rule("1/3 models: generalist, general model, progressive experts (reused when already trained)")
    generalist = train_generalist(load_run_config("demo-generalist", common), resume=True, console=console)
    general = train_experts(load_run_config("demo-general", common), resume=True, console=console)
    partition_file = base / "partition.json"
    if not partition_file.is_file():
        make_partition(generalist.run_dir, 3).save(partition_file)
    experts = train_experts(load_run_config("demo-experts", [
        *common, f"experts.init={general.run_dir}", f"experts.partition={partition_file}"]),
        resume=True, console=console)
    report_dir = base / "report"
    report_dir.mkdir(parents=True, exist_ok=True)
    console.rule("2/3 expert server: askexpert serve on a free loopback port")
    server = ServerProcess(experts.run_dir, threads=1, log_path=report_dir / "server.log")
    with server as url:
        console.log(f"expert server up at {url}")
        console.rule("3/3 edge: the test split, one image at a time, over HTTP")
        settings = EdgeSettings(generalist=generalist.run_dir, server=url, inputs=["split:test"], limit=limit,
                                link=link, threads=1, trace=report_dir / "trace.jsonl")
        with progress_bar(console, transient=True) as progress:
            summary, traces, policy = run_edge(settings, progress=progress)
    summary["bytes_moved"] = sum(t.up_bytes + t.down_bytes for t in traces)
    summary["energy"] = energy_estimate(traces, summary)
    summary["models"] = {"generalist": str(generalist.run_dir), "general": str(general.run_dir),
                         "experts": str(experts.run_dir),
                         "partition": json.loads(partition_file.read_text())["experts"]}
    summary["settings"] = {k: str(v) for k, v in asdict(settings).items()}
    (report_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    (report_dir / "report.md").write_text(markdown(summary))
    return summary


def markdown(s: dict) -> str:
    b = s["breakdown_ms_offloaded"]
    e = s["energy"]
    lines = [
        "# askexpert demo report", "",
        f"{s['samples']} images of {s['input']}, edge backend {s['backend']}, link {s['link']}, "
        f"tau {s['tau']:.3f} (chosen on validation), k {s['k']}.", "",
        "| metric | value |", "|---|---|",
        f"| accuracy, collaborative | {s['accuracy']:.2f}% |",
        f"| accuracy, generalist alone | {s['generalist_accuracy']:.2f}% |",
        f"| offload rate | {s['offload_rate']:.1f}% |",
        f"| degraded (no expert answer) | {s['degraded']} |",
        f"| latency p50 / p95 | {s['latency_ms']['p50']:.2f} / {s['latency_ms']['p95']:.2f} ms |",
        "| offloaded: edge / encode / network / link / queue / expert | "
        + " / ".join(f"{b[k]:.2f}" for k in ("edge_ms", "encode_ms", "network_ms", "link_ms", "queue_ms", "expert_ms"))
        + " ms |",
        f"| edge energy per image ({e['kind']}) | {e['total_mj_per_image']:.2f} mJ "
        f"(compute {e['edge_compute_mj_per_image']:.2f}, radio {e['radio_mj_per_image']:.3f}) |",
        "", f"Energy profiles: {e['device_profile']}; {e['network_profile']}. {e['note']}.", "",
        "Per-image traces: trace.jsonl; server log: server.log.",
    ]
    return "\n".join(lines) + "\n"

"""The ``askexpert edge`` command: its parser and its handler."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from askexpert.cli._common import (
    add_edge_device_flags,
    add_rule_flags,
    log_console,
    print_edge_summary,
    require_positive,
    table_console,
)
from askexpert.errors import ConfigError
from askexpert.extensions import lab_hook
from askexpert.security import TOKEN_ENV, refuse_pin_without_bundle

if TYPE_CHECKING:
    from askexpert.runtime.settings import Connection, Control, Inputs, Outputs, Security


def cmd_edge(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from askexpert.console import logs_on, progress_bar
    from askexpert.runtime.session import EdgeSettings, run_edge

    require_positive(("--timeout", args.timeout), ("--deadline", args.deadline), ("--slo-p95", args.slo_p95),
                     ("--energy-budget", args.energy_budget))
    if args.retries < 0:
        raise ConfigError(f"--retries must be 0 or more, got {args.retries}", fix="give --retries 0, 1, 2, ...")
    settings = EdgeSettings(_system(args), _connection(args), _security(args), _control(args), _inputs(args),
                            _outputs(args), threads=args.threads)
    placement = None
    if args.device == "host":
        console = log_console()
        with logs_on(console), progress_bar(console, transient=True) as progress:
            report = run_edge(settings, progress=progress)
    else:
        run_edge_emulated = lab_hook("run_edge_emulated", f"--device {args.device} (an emulated edge)")
        report, placement = run_edge_emulated(settings, args.device, args.edge_mode, say=log_console().log)
        table_console().print(f"[bold]edge[/bold]: {placement.describe()}")
    if args.summary:
        args.summary.parent.mkdir(parents=True, exist_ok=True)
        args.summary.write_text(json.dumps({**asdict(report.summary), "policy": asdict(report.policy),
                                            "control": asdict(report.control) if report.control else None,
                                            "corruption": report.corruption, "encoding": report.encoding,
                                            "backend": report.backend, "input": report.input, "link": report.link,
                                            "system": report.source,
                                            "placement": placement.to_dict() if placement else None,
                                            "settings": settings.described()}, indent=1))
    print_edge_summary(report)
    return 0


def _connection(args: argparse.Namespace) -> Connection:
    from askexpert.runtime.link import parse_link_arg
    from askexpert.runtime.settings import Connection

    return Connection(server=args.server[0] if args.server and len(args.server) == 1 else args.server,
                      protocol=args.server_protocol, timeout_s=args.timeout, retries=args.retries,
                      deadline_s=args.deadline, link=parse_link_arg(args.link), encoding=_encoding(args.encode))


def _security(args: argparse.Namespace) -> Security:
    from askexpert.runtime.settings import Security
    from askexpert.security import read_token

    return Security(token=read_token(args.token_file), ca_file=args.ca_file,
                    expect_system_id=args.expect_system_id, trust_unpinned=args.trust_unpinned_server)


def _control(args: argparse.Namespace) -> Control:
    from askexpert.runtime.settings import Control

    return Control(tau=args.tau, temperature=args.temperature, k=args.k, confidence=args.confidence,
                   fallback=args.fallback, slo_p95_ms=args.slo_p95, energy_budget_mj=args.energy_budget,
                   target_offload=args.target_offload, target_accuracy=args.target_accuracy, probe=args.probe,
                   energy_profile=args.edge_profile or _edge_energy_profile(args.device), radio=args.radio)


def _inputs(args: argparse.Namespace) -> Inputs:
    from askexpert.corruptions import parse_corruption
    from askexpert.runtime.settings import Inputs

    return Inputs(sources=args.input, corrupt=parse_corruption(args.corrupt) if args.corrupt else None,
                  batch_size=args.batch_size, limit=args.limit)


def _outputs(args: argparse.Namespace) -> Outputs:
    from askexpert.runtime.settings import Outputs

    return Outputs(trace=args.trace, predictions=args.predictions, resume=args.resume)


def _encoding(text: str):
    from askexpert.contract.codecs import Encoding, spellings

    try:
        return Encoding.parse(text)
    except ValueError as err:
        raise ConfigError(str(err), fix=f"give --encode {spellings()} with Q in 1..100") from err


def _system(args: argparse.Namespace):
    """The system the edge runs: a bundle, opened once here; or a generalist's run directory, calibrated
    here at build time (torch and its dataset: the full install), so the edge's run time never calibrates."""
    from askexpert.contract.bundle import is_bundle, open_system

    if is_bundle(args.system):
        return open_system(args.system, expect_id=args.expect_system_id)
    refuse_pin_without_bundle(args.expect_system_id, args.system, "a generalist's run directory", "run")
    from askexpert.routing import DEFAULT_K
    from askexpert.system.calibrate import calibrated_run

    return calibrated_run(args.system, offload_rate=args.offload_rate, k=args.k or DEFAULT_K,
                          confidence=args.confidence or "max-prob", fallback=args.fallback or "other", tau=args.tau,
                          temperature=args.temperature)


def _edge_energy_profile(device: str) -> str:
    """The energy profile of an emulated edge device (costs/profiles.yaml), else the Raspberry Pi 4's."""
    from askexpert.costs.profiles import edge_speed

    return (edge_speed(device).energy_profile if device != "host" else None) or "raspberry-pi-4"


def register(sub) -> None:
    """The ``askexpert edge`` command and its flags."""
    p = sub.add_parser("edge", help="run the edge side: generalist, router, experts over HTTP",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Run the generalist over the inputs, keep its confident answers, send the rest to "
                       "the chosen expert on --server. Every input gets a prediction: when the server is down, slow "
                       "or failing, the generalist's answer stands, flagged degraded. With a bundle the edge runs the "
                       "ONNX generalist with the bundle's calibration (ONNX Runtime, NumPy, httpx; no torch, no "
                       "dataset); with a generalist's run directory it runs torch and calibrates on validation.",
                       epilog="examples:\n"
                       "  askexpert edge system --server http://127.0.0.1:8000 --input photos/\n"
                       "  askexpert edge system --server http://h:8000 --input images.npz --link lte\n"
                       "  askexpert edge runs/generalist-fmnist --server http://127.0.0.1:8000 --input split:test")
    p.add_argument("system", type=Path, help="a bundle (askexpert build-system), or a generalist's run directory")
    p.add_argument("--server", nargs="+", metavar="URL",
                   help="expert server URL, e.g. http://127.0.0.1:8000, or several (each expert is asked on a "
                   "server that lists it; a dead server degrades only its experts); none: generalist only")
    p.add_argument("--server-protocol", choices=("v1", "v2"), default="v1",
                   help="v1: askexpert's own server (default); v2: the Open Inference Protocol (Triton, KServe, "
                   "MLServer, or askexpert serve's /v2), the experts named expert-<id>, version 1")
    p.add_argument("--trust-unpinned-server", action="store_true",
                   help="with --server-protocol v2: use a server whose models do not name this bundle's system id "
                   "(askexpert export triton writes it into each model's configuration)")
    p.add_argument("--input", nargs="+", default=["split:test"],
                   help="image files, an image folder (one sub-folder per class: labelled), a .npz with 'images' "
                   "(and 'labels'), or split:test|val|train of the generalist's dataset (full install)")
    p.add_argument("--limit", type=int, help="use at most this many inputs (a stratified subset when labelled)")
    p.add_argument("--batch-size", type=int, default=1, help="inputs processed together (1: a live stream)")
    p.add_argument("--link", help="emulated link: wifi, lte, 5g, ethernet or rtt=20ms,bw=20mbit; a recorded one, "
                   "trace:UP,DOWN[,rtt=40ms] (Mahimahi trace files; trace:STEM reads STEM.up and "
                   "STEM.down); or a schedule, wifi@0,lte@500 (lte from image 500 on; SIGUSR1 to the edge moves "
                   "to the next entry at once)")
    p.add_argument("--encode", default="raw", metavar="FORM",
                   help="how offloaded images travel: raw (uint8 bytes, default), npy, png (lossless), jpeg:Q or "
                   "webp:Q (lossy at quality Q, 1..100); fewer bytes mean less link time and radio energy")
    p.add_argument("--corrupt", metavar="NAME:SEVERITY[@IMAGE]",
                   help="drift the inputs: gaussian_noise, brightness, contrast or gaussian_blur at severity 1..5 "
                   "(CIFAR-10-C's settings), from image IMAGE on (default 0), e.g. gaussian_noise:3@1000")
    _operating_point_flags(p)
    p.add_argument("--timeout", type=float, default=2.0,
                   help="seconds any one network wait of a request may take (connect, send, each read)")
    p.add_argument("--retries", type=int, default=1, help="tries after a failed one, within --deadline")
    p.add_argument("--deadline", type=float, help="seconds one offload may take in all, retries included; then the "
                   "generalist's answer stands, flagged degraded (default: (retries + 1) x timeout)")
    _output_flags(p)
    add_edge_device_flags(p, "--device")
    p.set_defaults(func=cmd_edge)


def _operating_point_flags(p: argparse.ArgumentParser) -> None:
    """The operating point: held to a latency, energy, offload or accuracy target, or set by tau and k."""
    from askexpert.routing import DEFAULT_K

    hold = p.add_mutually_exclusive_group()
    hold.add_argument("--slo-p95", type=float, metavar="MS",
                      help="hold the p95 latency under MS: tau moves along the bundle's operating curve as offloads "
                      "get slower or faster (windows of 100 images)")
    hold.add_argument("--energy-budget", type=float, metavar="MJ",
                      help="hold the edge's energy an image under MJ (the --edge-profile's power, the --radio's cost)")
    hold.add_argument("--target-offload", type=float, metavar="SHARE",
                      help="hold the offload share at SHARE (0..1) as the inputs drift, without labels (tau follows "
                      "the confidence's quantile over the last 500 images)")
    p.add_argument("--target-accuracy", type=float, metavar="ACC",
                   help="hold the accuracy of the answers the edge keeps at ACC (0..1), estimated from the experts' "
                   "answers (with --probe's random extra offloads); with --slo-p95 or --energy-budget, that budget "
                   "caps it")
    p.add_argument("--probe", type=float, default=0.05, metavar="SHARE",
                   help="with --target-accuracy: the share of the images the edge keeps that go to their expert "
                   "anyway, to check the kept answers (counted in the offload rate; default 0.05)")
    p.add_argument("--edge-profile", help="the edge's power for --energy-budget (costs/profiles.yaml; default: the "
                   "emulated device's, else raspberry-pi-4)")
    p.add_argument("--radio", default="wifi", help="the radio's energy for --energy-budget: wifi or cellular")
    p.add_argument("--offload-rate", type=float, default=0.3,
                   help="run directories only: target offload rate for tau on validation (a bundle has its own)")
    p.add_argument("--tau", type=float, help="confidence threshold (overrides the bundle's / --offload-rate)")
    p.add_argument("--temperature", type=float, help="softmax temperature (default: the calibrated one)")
    p.add_argument("--k", type=int,
                   help=f"Top-k classes that choose the expert (default: the bundle's, or {DEFAULT_K})")
    add_rule_flags(p, default_from="the bundle's, or")


def _output_flags(p: argparse.ArgumentParser) -> None:
    """Where the answers go, and how the edge trusts the server and the bundle."""
    p.add_argument("--threads", type=int, help="CPU threads for the generalist")
    p.add_argument("--trace", type=Path, help="write one JSON line per input (route and timings), as answered")
    p.add_argument("--predictions", type=Path, help="write a CSV of every input's prediction as it is made: file, "
                   "true and predicted class (id and name), the generalist's answer, confidence, route, expert, "
                   "degraded")
    p.add_argument("--resume", action="store_true", help="go on after the answers --predictions / --trace already "
                   "hold (an interrupted run with the same --input)")
    p.add_argument("--token-file", type=Path, help=f"the server's bearer token (default: ${TOKEN_ENV} when set)")
    p.add_argument("--ca-file", type=Path, help="the certificate authority of an https server (a self-signed one)")
    p.add_argument("--expect-system-id", metavar="SHA256",
                   help="run the bundle only if its system.json has this published sha256")
    p.add_argument("--summary", type=Path, help="write the summary as JSON")

"""The ``askexpert build-system`` command: its parser and its handler."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.table import Table

from askexpert.cli._common import add_edge_device_flags, add_rule_flags, log_console, require_positive, table_console
from askexpert.contract.confidence import FITTED_RULE
from askexpert.extensions import lab_hook


def _plan_bundle(bundle, args: argparse.Namespace):
    """Point a freshly built bundle at the most accurate operating point within --p95-latency or
    --edge-energy on --edge-device over --link (the lab's ``plan_new_bundle``: the
    bundle is removed when no point fits, archived after with --archive), and say what was measured."""
    from askexpert.console import logs_on
    from askexpert.runtime.link import parse_link

    plan_new_bundle = lab_hook("plan_new_bundle", "--p95-latency / --edge-energy (measured on an emulated edge)")
    require_positive(("--p95-latency", args.p95_latency), ("--edge-energy", args.edge_energy),
                     ("--plan-images", args.plan_images))
    link = parse_link(args.link)
    console = log_console()
    console.log(f"measuring the cost model's parts on {args.edge_device} over "
                f"{link.describe() if link else 'loopback'} with {args.server_load} competing clients ...")
    with logs_on(console):
        bundle, choice, parts, placement = plan_new_bundle(
            bundle, images=args.plan_images, archive=args.archive, p95_ms=args.p95_latency, edge_mj=args.edge_energy,
            device=args.edge_device, link=link, k=args.k, load=args.server_load, mode=args.edge_mode,
            edge_profile=args.edge_profile, radio=args.radio, say=console.log)
    console.log(placement.describe())
    x = choice.prediction
    console.log(f"measured: the generalist {x.edge_ms:.2f} ms an image (median), an offload {x.offload_ms:.2f} ms "
                f"on the socket + {x.link_ms:.2f} ms of link ({'; '.join(parts.notes)}); the most accurate point "
                "within the budget on validation is kept")
    return bundle


def cmd_build_system(args: argparse.Namespace) -> int:
    from askexpert.routing import DEFAULT_K
    from askexpert.system.build import Operating, ServerChoice, build_system

    budget = args.p95_latency is not None or args.edge_energy is not None
    operating = Operating(offload=args.offload, accuracy=args.accuracy, tau=args.tau, k=args.k or DEFAULT_K,
                          confidence=args.confidence, fallback=args.fallback, deferral=args.deferral,
                          curve_ks=tuple(args.curve_k) if args.curve_k else None)
    server = ServerChoice(server=args.server, include_general=not args.no_general, reroute=args.reroute,
                          reroute_tries=args.reroute_tries, reroute_below=args.reroute_below)
    bundle = build_system(args.generalist, args.experts, args.out, operating, server,
                          archive=args.archive and not budget, name=args.name, device=args.device,
                          overwrite=args.overwrite)
    if budget:
        bundle = _plan_bundle(bundle, args)
    m = bundle.manifest
    r = m.routing
    table = Table(title=f"system bundle {bundle.root} (schema {m.schema_version})")
    table.add_column("")
    table.add_column("", justify="left")
    table.add_row("classes", f"{len(m.classes)} ({m.data.name}; calibrated on {m.data.val_images} validation images)")
    table.add_row("generalist", f"{m.generalist.onnx} ({m.generalist.parameters / 1e6:.2f}M parameters, "
                  f"T {r.temperature:.3f})")
    for e in m.experts:
        table.add_row(f"expert {e.id}", f"{', '.join(e.class_names)} (T {e.temperature:.3f})")
    table.add_row("general model", "included" if m.general else "left out")
    op = r.operating_point
    table.add_row("routing", f"tau {r.tau:.4f}, k {r.k}, {r.confidence}, fallback {r.fallback}")
    if r.deferral is not None:
        table.add_row("learned deferral", f"{len(r.deferral.features)} features, L2 {r.deferral.l2:g} (5-fold CV), "
                      f"fitted on {r.deferral.fitted_on} validation images at k {r.deferral.k}")
    if m.design is not None:
        how = "chosen on validation" if m.design.chosen_by == "validation" else "as asked"
        table.add_row("server design", f"{m.design.server} ({how}): {m.design.reason}")
    if r.reroute is not None:
        v = r.reroute.validation
        what = "the next expert" if r.reroute.to == "next" else "the general model"
        table.add_row("re-routing", f"on 'other' or under {r.reroute.below:g}, to {what}, at most "
                      f"{r.reroute.tries} experts an image; on "
                      f"validation {v['accuracy']:.2f}% (without {v['accuracy_without']:.2f}%), coverage "
                      f"{v['coverage']:.1f}% (without {v['coverage_without']:.1f}%), "
                      f"{v['expert_calls_per_offload']:.2f} expert calls an offload")
    table.add_row("operating point", f"{op.target} {op.value:g}: on validation {op.val_offload_rate:.1f}% offloaded, "
                  f"{op.val_accuracy:.2f}% accurate")
    if op.predicted is not None:
        x = op.predicted
        table.add_row("predicted", f"p95 {x.p95_ms:.1f} ms, mean {x.mean_ms:.1f} ms, edge {x.edge_mj:.1f} mJ an image "
                      f"on {x.device} over {x.link} ({x.load} competing clients)")
    if m.curve is not None:
        table.add_row("operating curve", f"{len(m.curve.points)} points (k {', '.join(map(str, m.curve.ks))}): the "
                      "edge's --slo-p95 / --energy-budget move along it")
    table.add_row("system id", f"{bundle.system_id} (sha256 of system.json: publish it, and serve and run "
                  "with --expect-system-id ID)")
    table.add_row("files", f"{len(m.files)}, each with its sha256 in system.json"
                  + (f"; archive {bundle.root}.tar.gz" if args.archive else ""))
    table_console().print(table)
    return 0


def register(sub) -> None:
    """The ``askexpert build-system`` command and its flags."""
    from askexpert.routing import DEFAULT_K

    p = sub.add_parser("build-system", help="trained runs + an operating point -> one deployable bundle",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Calibrate once on validation data (the generalist's and every expert's "
                       "temperature, tau for the operating point) and write one directory: system.json "
                       "(schema-versioned: classes, partition, routing, preprocessing, model specs, sha256 of every "
                       "file), the generalist as ONNX and safetensors, the experts (and the general model) as "
                       "safetensors. The edge then needs only ONNX Runtime, NumPy and httpx.",
                       epilog="examples:\n"
                       "  askexpert build-system runs/generalist runs/experts-progressive --out system\n"
                       "  askexpert build-system runs/g runs/experts --out system --accuracy 92 --k 2 --archive\n"
                       "  askexpert build-system runs/g runs/experts --out system --deferral learned")
    p.add_argument("generalist", type=Path, help="the generalist's run directory")
    p.add_argument("experts", type=Path, help="an expert run directory (askexpert train experts)")
    p.add_argument("--out", type=Path, required=True, help="the bundle directory to write")
    point = p.add_mutually_exclusive_group()
    point.add_argument("--offload", type=float, help="target offload share on validation, 0..1 (default 0.3)")
    point.add_argument("--accuracy", type=float, metavar="PERCENT",
                       help="the least offloading that reaches this validation accuracy")
    point.add_argument("--tau", type=float, help="a fixed confidence threshold")
    point.add_argument("--p95-latency", type=float, metavar="MS",
                       help="the most accurate point whose predicted p95 latency on --edge-device over --link is "
                       "within MS (the cost model's parts are measured there first)")
    point.add_argument("--edge-energy", type=float, metavar="MJ",
                       help="the most accurate point whose predicted edge energy an image is within MJ")
    p.add_argument("--k", type=int,
                   help=f"Top-k classes that choose the expert (default {DEFAULT_K}; with a budget, default: the "
                   "best k of the curve)")
    p.add_argument("--curve-k", type=int, nargs="+", metavar="K",
                   help="the k values of the operating curve the bundle carries (default 1 2 3, and --k)")
    add_edge_device_flags(p, "--edge-device")
    p.add_argument("--link", default="wifi", help="the link a budget is for: wifi, lte, 5g, ethernet, rtt=..,bw=.. "
                   "(default wifi)")
    p.add_argument("--plan-images", type=int, default=1000, metavar="N",
                   help="validation images streamed through the emulated edge to measure a budget's cost model")
    p.add_argument("--server-load", type=int, default=0, metavar="CLIENTS",
                   help="competing clients on the server while the offloads are measured (default 0)")
    p.add_argument("--edge-profile", help="the edge's power for --edge-energy (default: the device's, else "
                   "raspberry-pi-4)")
    p.add_argument("--radio", help="the radio's energy profile (default: wifi for wifi, cellular for lte and 5g)")
    add_rule_flags(p)
    p.add_argument("--deferral", choices=("confidence", FITTED_RULE), default="confidence",
                   help="which images to offload: those whose --confidence is under tau (the paper's rule, the "
                   "default), or 'learned': a rule fitted on validation to offload the images the routed expert "
                   "gets right and the generalist wrong (tau applies to its score; the bundle carries it)")
    p.add_argument("--reroute", choices=("none", "next", "general"), default="none",
                   help="when the routed expert says 'other' (or is unsure), the server asks the next expert of the "
                   "generalist's ranking, or the general model, within the same request (default none)")
    p.add_argument("--reroute-tries", type=int, default=2, metavar="N",
                   help="experts asked at most an image, the routed one included (default 2)")
    p.add_argument("--reroute-below", type=float, metavar="CONF",
                   help="also re-ask under this confidence (default: chosen on validation among 0, .3, .5, .7, .9)")
    p.add_argument("--server", choices=("auto", "experts", "general"), default="auto",
                   help="what the server holds: auto compares on validation the experts with their routing against "
                   "the general model as the one expert (same offloaded images) and builds the better; experts or "
                   "general builds that one (default auto)")
    p.add_argument("--no-general", action="store_true", help="leave the general model out of the bundle")
    p.add_argument("--archive", action="store_true", help="also write OUT.tar.gz")
    p.add_argument("--name", help="the system's name (default: the directory's)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing bundle at --out")
    p.add_argument("--device", default="auto", help="where logits are computed (cached next to each checkpoint)")
    p.set_defaults(func=cmd_build_system)

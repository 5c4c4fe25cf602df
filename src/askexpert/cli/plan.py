"""The ``askexpert plan`` command: its parser and its handler."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from askexpert.cli._common import table_console


def _cell(value: float | None, fmt: str) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else fmt.format(value)


def cmd_plan(args: argparse.Namespace) -> int:
    from rich.table import Table

    from askexpert.costs.modes import Goals
    from askexpert.system.plan import ImageForm, plan, sample_images

    goals = Goals(min_accuracy=args.min_accuracy, p95_ms=args.p95_ms, energy_mj=args.energy_budget,
                  energy=args.energy, minimise=args.minimise)
    result = plan(args.bundle, goals, edge_device=args.edge_device, server_device_name=args.server_device,
                  link=args.link, image=ImageForm(args.image, args.image_size), images=sample_images(args.images),
                  server_batch=args.server_batch, scale=args.scale)
    if args.json:
        print(json.dumps(result.to_dict(), indent=1))
        return 0
    rec, parts = result.recommendation, result.parts
    console = table_console()
    title = (f"{result.bundle}: {parts.edge_device} edge, {parts.server_device} server, {parts.link} link, "
             f"{parts.image} images (on validation)")
    table = Table(title=title)
    for col in ("option", "accuracy %", "offloaded %", "p95 ms", "mean ms", "edge mJ", "near-edge mJ", "total mJ",
                "meets goals"):
        table.add_column(col, justify="left" if col in ("option", "meets goals") else "right")
    shown = [o for o in rec.best.values() if o is not None] + [o for o in rec.front if o not in rec.best.values()]
    for o in shown:
        misses = goals.misses(o)
        mark = "recommended" if o is rec.chosen else ("yes" if not misses else "; ".join(misses))
        table.add_row(o.label(), _cell(o.accuracy, "{:.2f}"), f"{o.offload_rate:.1f}", f"{o.p95_ms:.2f}",
                      f"{o.mean_ms:.2f}", _cell(o.edge_mj, "{:.2f}"), _cell(o.near_edge_mj, "{:.2f}"),
                      _cell(o.total_mj, "{:.2f}"), mark)
    console.print(table)
    console.print(f"each mode's cheapest option that meets the goals, then the Pareto front over accuracy, p95 and "
                  f"{goals.energy} energy ({len(rec.front)} of {len(rec.options)} options)")
    verdict = ("recommended: " + rec.chosen.label()) if rec.chosen else "recommended: none (no option meets the goals)"
    console.print(f"[bold]{verdict}[/bold]")
    for line in rec.reasons:
        console.print(f"  - {line}")
    for line in parts.notes:
        console.print(f"  [dim]{line}[/dim]")
    return 0


def register(sub) -> None:
    """The ``askexpert plan`` command and its flags."""
    p = sub.add_parser("plan", help="which mode pays on a device, link and image: edge only, full offload or "
                       "collaborative", description="Predict, on the bundle's validation curve, edge only, full "
                       "offload (the general model) and collaboration at every tau and k on an edge device, server "
                       "device and link, with the image as sent; print the Pareto front and the mode to deploy for "
                       "the goals: of the options meeting every goal, the least energy (or p95 with --minimise p95).")
    p.add_argument("bundle", type=Path, help="a bundle directory or archive (askexpert build-system)")
    p.add_argument("--edge-device", default="rpi4",
                   help="rpi4, snapdragon-820, jetson-agx-orin-cpu (costs/profiles.yaml) or host (timed here)")
    p.add_argument("--server-device", default="h100", help="h100, jetson-agx-orin or host (timed here, priced "
                   "as one EPYC core)")
    p.add_argument("--server-batch", type=int, default=1,
                   help="the batch the server forms (1: one edge's requests alone; more with many edges)")
    p.add_argument("--link", default="wifi", help="wifi, lte, 5g, ethernet, rtt=20ms,bw=20mbit, or a recorded "
                   "trace:UP,DOWN[,rtt=40ms] / trace:STEM")
    p.add_argument("--image", default="raw", metavar="FORM", help="how an offloaded image travels: raw, png, jpeg:Q")
    p.add_argument("--image-size", type=int, metavar="PX", help="its side as sent (default: the bundle's input)")
    p.add_argument("--images", metavar="NPZ|photos", help="sample images a compressed form's size is measured on")
    p.add_argument("--scale", choices=("bundle", "paper"), default="bundle",
                   help="price the bundle's own models, or the paper's DeiT-Tiny edge and DeiT-Small experts at 224 px "
                   "with the bundle's accuracy curve (a what-if)")
    p.add_argument("--min-accuracy", type=float, metavar="PCT", help="accuracy floor on validation (%%)")
    p.add_argument("--p95-ms", type=float, metavar="MS", help="p95 latency budget an image")
    p.add_argument("--energy-budget", type=float, metavar="MJ", help="energy budget an image (the --energy reading)")
    p.add_argument("--energy", choices=("total", "near-edge"), default="total",
                   help="which energy the budget and the minimisation read: edge + near-edge, or near-edge alone")
    p.add_argument("--minimise", choices=("energy", "p95"), default="energy")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.set_defaults(func=cmd_plan)

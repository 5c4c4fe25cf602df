"""The ``askexpert export`` command (``export triton``): its parser and its handler."""

from __future__ import annotations

import argparse
from pathlib import Path

from askexpert.cli._common import table_console


def cmd_export_triton(args: argparse.Namespace) -> int:
    from askexpert.system.export_triton import TritonBatching, export_triton

    batching = TritonBatching(args.max_batch, round(args.max_wait_ms * 1000), args.instances, args.max_queue)
    models = export_triton(args.bundle, args.out, batching, include_general=not args.no_general)
    console = table_console()
    console.print(f"wrote a Triton model repository to {args.out}: {', '.join(m.name for m in models)} (ONNX, "
                  f"config.pbtxt with max batch {batching.max_batch_size}, queue delay "
                  f"{batching.max_queue_delay_us} us, {batching.instances} CPU instance(s)); how to start Triton on "
                  f"it: {args.out / 'README.md'}")
    return 0


def register(sub) -> None:
    """``askexpert export triton BUNDLE --out REPO``."""
    p = sub.add_parser("export", help="export a bundle's experts for another serving engine (triton)")
    kinds = p.add_subparsers(dest="kind", required=True, metavar="KIND")
    t = kinds.add_parser("triton", help="a Triton model repository of the bundle's experts",
                         description="Each expert (and the general model) as an ONNX model with its config.pbtxt "
                         "(uint8 images in, logits out; dynamic batching; the bundle's system id in its parameters), "
                         "a manifest and a README saying how to start Triton on it; each config parsed with Triton's "
                         "own model-config protobuf. Serve it with Triton, or askexpert serve --backend triton REPO.")
    t.add_argument("bundle", type=Path, help="a bundle (askexpert build-system)")
    t.add_argument("--out", type=Path, required=True, help="the repository directory to write")
    t.add_argument("--max-batch", type=int, default=64, help="Triton's max_batch_size (askexpert serve's default)")
    t.add_argument("--max-wait-ms", type=float, default=0.0, help="dynamic batching's queue delay")
    t.add_argument("--instances", type=int, default=1, help="model instances on the CPU")
    t.add_argument("--max-queue", type=int, default=0, help="requests waiting for a batch beyond this are refused at "
                   "once (Triton's queue policy; 0: no bound)")
    t.add_argument("--no-general", action="store_true", help="leave the general model out")
    t.set_defaults(func=cmd_export_triton)

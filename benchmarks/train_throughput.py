"""Benchmark: training images/s of the edge and medium presets, before and after the CPU speed-ups.

    python benchmarks/train_throughput.py                 # the edge and medium presets, 3 repeats
    python benchmarks/train_throughput.py --compile       # also bf16 + torch.compile

Every measurement runs the real training loop (``askexpert.training.engine.fit``: AdamW, clipping,
augmentation, the batch plan) on real Fashion-MNIST images, two epochs of ``--images`` images at
batch 128; the second epoch is timed, so one-off costs (compilation, allocator warm-up) are not.
Modes, interleaved within each repeat so that they share the machine's state:

- ``fp32`` (before): ``train.amp=false``, float32 with timm's fused attention kernel, which is what
  the loop did on every CPU until now;
- ``auto`` (after): ``train.amp=true``: bfloat16 autocast where the CPU multiplies bfloat16 natively
  (AMX or AVX512-BF16), with explicit attention; float32 elsewhere (the run says which ran);
- ``auto, batch 256``: the same with twice the batch (the recipes use 128);
- ``auto + torch.compile`` (with ``--compile``): the compiled model (the first epoch's time, which
  holds the compilation, is reported beside it).

Where the CPU has native bfloat16, a bare training step (no loop) under bf16 autocast is also timed
with timm's fused attention kernel and with explicit attention: why the loop switches to explicit.
The data path alone (batching and the conversion to augmented inputs, no model) is timed too, to
show how small a share of a step it is.

Prints the median images/s of each mode and its ratio to ``fp32`` and writes
results/<date>-<host>-train-throughput.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from askexpert.config import DataConfig, ModelConfig, TrainConfig
from askexpert.data import load_dataset, to_model_input
from askexpert.models import build_model, explicit_attention, resolve_spec
from askexpert.training.engine import fit
from askexpert.training.plans import SplitPlan
from askexpert_lab.bench.machine import describe, machine_info


def _model(preset: str):
    torch.manual_seed(0)
    spec, _ = resolve_spec(ModelConfig(name=preset), num_classes=10, mean=(0.286,), std=(0.353,))
    return build_model(spec), spec


def loop_rate(preset: str, mode: str, split) -> dict:
    """Images/s of the second epoch of ``fit``, the first epoch's seconds, and the precision that ran."""
    model, spec = _model(preset)
    cfg = TrainConfig(epochs=2, batch_size=256 if "batch 256" in mode else 128, amp=mode != "fp32", device="cpu",
                      warmup_epochs=0.5, augment="flip")
    if mode.endswith("compile"):
        model = torch.compile(model)
    result = fit(model, plan=SplitPlan(split, cfg.batch_size, cfg.epochs), val=None, spec=spec.input, cfg=cfg,
                 augment="flip", label=f"{preset} {mode}")
    return {"images_per_s": result.history[1].images_per_s, "first_epoch_s": result.history[0].train_seconds,
            "precision": result.precision}


def data_rate(split, spec_preset: str = "vit-edge-28") -> float:
    """Images/s of the data path alone: one epoch of batches (order, slicing) and their conversion to
    augmented, normalised model inputs, with no model: how much of a training step is data work."""
    _, spec = _model(spec_preset)
    plan = SplitPlan(split, 128, 1)
    t0 = time.perf_counter()
    n = 0
    for images, _labels in plan.batches(1, torch.Generator().manual_seed(0)):
        to_model_input(images, spec.input, augment="flip", generator=torch.Generator().manual_seed(1))
        n += len(images)
    return n / (time.perf_counter() - t0)


def step_rate(preset: str, fused: bool, steps: int = 8) -> float:
    """Images/s of bare bf16-autocast training steps (random inputs, batch 128), fused or explicit attention."""
    model, spec = _model(preset)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, foreach=True)
    x = torch.randn(128, spec.input.channels, spec.input.size, spec.input.size)
    y = torch.randint(0, 10, (128,))

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = F.cross_entropy(model(x).float(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    with explicit_attention(model, not fused):
        for _ in range(2):
            step()
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
    return 128 * steps / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", help="presets to time",
                    default=["vit-mini-edge-28", "vit-mini-expert-28", "vit-edge-28", "vit-expert-28"])
    ap.add_argument("--images", type=int, default=128 * 12, help="images per epoch (two epochs per measurement)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--compile", action="store_true", help="also time bf16 + torch.compile")
    ap.add_argument("--results", type=Path, default=Path(__file__).parents[1] / "results")
    args = ap.parse_args()
    info = machine_info()
    torch.set_num_threads(torch.get_num_threads())
    split = load_dataset(DataConfig(train_subset=args.images), image_size=28, channels=1).train
    modes = ["fp32", "auto", "auto, batch 256"] + (["auto + torch.compile"] if args.compile else [])
    data = [data_rate(split) for _ in range(args.repeats)]
    runs: dict[str, dict[str, list[dict]]] = {m: {mode: [] for mode in modes} for m in args.models}
    attention: dict[str, dict[str, list[float]]] = {m: {"fused": [], "explicit": []} for m in args.models}
    for r in range(args.repeats):
        for preset in args.models:
            for mode in modes:
                runs[preset][mode].append(loop_rate(preset, mode, split))
                print(f"[repeat {r + 1}] {preset} {mode}: {runs[preset][mode][-1]['images_per_s']:.0f} img/s "
                      f"({runs[preset][mode][-1]['precision']})", flush=True)
            if info["cpu_native_bf16"]:
                for kind in ("fused", "explicit"):
                    attention[preset][kind].append(step_rate(preset, kind == "fused"))
    rows = []
    for preset in args.models:
        base = statistics.median(x["images_per_s"] for x in runs[preset]["fp32"])
        for mode in modes:
            rates = [x["images_per_s"] for x in runs[preset][mode]]
            rows.append({"model": preset, "mode": mode, "precision": runs[preset][mode][0]["precision"],
                         "images_per_s": rates, "median": statistics.median(rates),
                         "ratio_to_fp32": statistics.median(rates) / base,
                         "first_epoch_s": statistics.median(x["first_epoch_s"] for x in runs[preset][mode])})
    args.results.mkdir(parents=True, exist_ok=True)
    out = args.results / f"{info['date']}-{info['host']}-train-throughput.json"
    out.write_text(json.dumps({"machine": info, "images": args.images, "repeats": args.repeats, "rows": rows,
                               "bf16_step_attention": attention if info["cpu_native_bf16"] else None,
                               "data_path_images_per_s": data,
                               "command": "python benchmarks/train_throughput.py " + " ".join(sys.argv[1:])},
                              indent=1))
    print(f"\nmachine: {describe(info)}; native bf16: {info['cpu_native_bf16']}; medians of {args.repeats}; "
          f"results: {out}")
    print("| model | mode | precision | train img/s (median) | vs fp32 | first epoch s |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['mode']} | {r['precision']} | {r['median']:.0f} | {r['ratio_to_fp32']:.2f}x | "
              f"{r['first_epoch_s']:.1f} |")
    print(f"\ndata path alone (batches + augmented inputs, no model): {statistics.median(data):.0f} img/s")
    if info["cpu_native_bf16"]:
        print("\nbare bf16 training steps, batch 128 (img/s, median): " + "; ".join(
            f"{p}: fused attention {statistics.median(a['fused']):.0f}, explicit {statistics.median(a['explicit']):.0f}"
            for p, a in attention.items()))


if __name__ == "__main__":
    main()

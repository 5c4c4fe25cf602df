"""The reference experiment on 2 CPU cores: its presets, CPU mixed precision, router-aware progressive
training, and a smoke run of `benchmarks/experts_table.py` (the real command, a few hundred images)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from askexpert.config import DataConfig, ExpertsConfig, ModelConfig, TrainConfig
from askexpert.data import load_dataset
from askexpert.errors import ConfigError
from askexpert.models import PRESETS, build_model, explicit_attention, flops_per_image, resolve_spec
from askexpert.training.engine import cpu_has_native_bf16, fit, training_precision
from askexpert.training.plans import SplitPlan
from askexpert.training.recipes import Steering, draw_steering

ROOT = Path(__file__).resolve().parents[1]


def _spec(name: str, **kwargs):
    spec, _ = resolve_spec(ModelConfig(name=name, kwargs=kwargs), num_classes=10, mean=(0.3,), std=(0.3,))
    return spec


def test_mini_pair_keeps_the_papers_proportions():
    """The near-edge model costs 3-5x the edge model's FLOPs (DeiT-Small : DeiT-Tiny is ~3.6x)."""
    assert PRESETS["vit-mini-edge-28"].role == "edge" and PRESETS["vit-mini-expert-28"].role == "expert"
    flops = {}
    for name in ("vit-mini-edge-28", "vit-mini-expert-28"):
        spec = _spec(name)
        flops[name] = flops_per_image(build_model(spec), spec)
    assert 3.0 <= flops["vit-mini-expert-28"] / flops["vit-mini-edge-28"] <= 5.0


def test_full_resolution_stem_layer():
    plain, full = _spec("vit-mini-edge-28"), _spec("vit-mini-edge-28", stem_full_res=1)
    model = build_model(full).eval()
    assert model(torch.randn(3, 1, 28, 28)).shape == (3, 10)
    assert flops_per_image(model, full) > flops_per_image(build_model(plain), plain)


def test_training_precision_is_detected_not_assumed(monkeypatch):
    monkeypatch.delenv("ASKEXPERT_PRECISION", raising=False)  # the detection itself, not the suite's forced path
    cpu = torch.device("cpu")
    assert training_precision(cpu, amp=False) == "fp32"
    assert training_precision(cpu, amp=True) == ("bf16" if cpu_has_native_bf16() else "fp32")


def test_explicit_attention_computes_the_same_and_restores_the_kernel():
    spec = _spec("vit-mini-edge-28")
    torch.manual_seed(0)
    model = build_model(spec).eval()
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        fused = model(x)
        with explicit_attention(model):
            assert not any(getattr(m, "fused_attn", False) for m in model.modules())
            explicit = model(x)
    assert torch.allclose(fused, explicit, atol=1e-4)
    assert any(getattr(m, "fused_attn", False) for m in model.modules())  # restored


@pytest.mark.slow
def test_training_records_its_precision_and_learns(fmnist_dir, floor):
    """Three epochs on 3,000 real images, in whatever precision this CPU runs by default."""
    bundle = load_dataset(DataConfig(train_subset=3000, val_subset=500), image_size=28, channels=1)
    spec, _ = resolve_spec(ModelConfig(name="vit-mini-edge-28"), num_classes=10, mean=bundle.mean, std=bundle.std)
    torch.manual_seed(0)
    model = build_model(spec)
    cfg = TrainConfig(epochs=3, lr=3e-3, warmup_epochs=0.2, device="cpu", augment="flip")
    result = fit(model, plan=SplitPlan(bundle.train, 128, 3), val=bundle.val, spec=spec.input, cfg=cfg,
                 augment="flip")
    assert result.precision == training_precision(torch.device("cpu"), True)
    assert all(h.precision == result.precision for h in result.history)
    floor("vit-mini-edge-28, 3 epochs on 3,000 images: val accuracy", result.history[-1].val_acc, 50)
    assert any(getattr(m, "fused_attn", False) for m in model.modules())  # the loop restores the kernel


def test_router_steering_weighs_each_image_by_what_the_router_sends():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [0.05, 0.9, 0.05]])
    labels = torch.tensor([0, 2, 2])
    steering = Steering(hardness=1 - probs.max(1).values, class_affinity=None, router_probs=probs)
    # out-of-subset images 1 and 2 for an expert on class 1: weight = the router's mass on class 1
    assert torch.allclose(steering.negative_weight(labels, torch.tensor([1, 2]), [1]), torch.tensor([0.1, 0.9]))
    assert torch.allclose(steering.hardness, torch.tensor([0.3, 0.2, 0.1]))


def test_router_without_a_trained_model_is_refused(tmp_path):
    ecfg = ExpertsConfig(strategy="progressive", router=tmp_path)
    with pytest.raises(ConfigError, match="holds no trained model") as err:
        draw_steering(None, ecfg, None, None, torch.device("cpu"))
    assert "generalist" in err.value.fix


def _table(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / "experts_table.py"), *args], env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_experts_table_smoke_seed_by_seed(tmp_path, fmnist_dir, floor):
    """The real command on a few hundred images: a seed file as soon as the seed ends, a summary over
    every seed file present (from more than one sitting), router-aware progressive experts."""
    env = {**os.environ, "ASKEXPERT_DATA": str(fmnist_dir.parent)}
    runs, results = tmp_path / "runs", tmp_path / "results"
    done = _table("--profile", "smoke", "--seeds", "0", "--output-dir", str(runs), "--results", str(results), env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    seed_file = results / "experts-table-smoke" / "seed0.json"
    record = json.loads(seed_file.read_text())
    assert record["profile"] == "smoke" and record["seed"] == 0 and record["machine"]["cpu"]
    assert record["timings"]["total_s"] > 0 and set(record["headline"]) >= {"static", "progressive"}
    floor("experts table smoke: the generalist alone", record["baselines"]["generalist"]["accuracy"], 20)
    assert 10 <= record["headline"]["progressive"]["test"]["offload_rate"] <= 50
    progressive_cfg = (runs / "experts-progressive-fmnist-cpu-seed0" / "config.yaml").read_text()
    assert "generalist-fmnist-cpu-seed0" in progressive_cfg  # the router the experts were drawn for
    for row in ("generalist alone", "general model alone", "static experts", "progressive experts",
                "general model as the expert"):
        assert row in done.stdout

    # a second sitting: another seed's file appears; --summary aggregates both without training
    other = json.loads(seed_file.read_text())
    other["seed"] = 7
    other["baselines"]["generalist"]["accuracy"] += 2.0
    (seed_file.parent / "seed7.json").write_text(json.dumps(other))
    summary = _table("--profile", "smoke", "--summary", "--results", str(results), env=env)
    assert summary.returncode == 0, summary.stderr[-3000:]
    assert "seeds 0, 7" in summary.stdout and "+/- 1.41" in summary.stdout
    assert (seed_file.parent / "summary.md").read_text().strip() in summary.stdout

    shutil.rmtree(seed_file.parent)
    empty = _table("--profile", "smoke", "--summary", "--results", str(results), env=env)
    assert empty.returncode != 0 and "run without --summary first" in empty.stderr

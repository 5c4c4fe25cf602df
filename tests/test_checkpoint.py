"""Checkpoints: safetensors + JSON, rebuilt from the files alone, every kind of damage detected."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from askexpert.config import ModelConfig
from askexpert.errors import CheckpointError
from askexpert.models import build_model, load_checkpoint, read_meta, resolve_spec, save_checkpoint


@pytest.fixture
def saved(tmp_path):
    spec, _ = resolve_spec(ModelConfig(name="vit-edge-28"), num_classes=10, mean=(0.28,), std=(0.35,))
    torch.manual_seed(0)
    model = build_model(spec).eval()
    stem = save_checkpoint(tmp_path / "run" / "model", model, spec=spec, kind="generalist",
                           class_names=[f"c{i}" for i in range(10)], metrics={"test": {"top1": 12.5}})
    return model, stem


def test_roundtrip_is_bit_identical(saved):
    model, stem = saved
    x = torch.randn(5, 1, 28, 28)
    ckpt = load_checkpoint(stem.parent)  # a run directory works as well as the stem
    assert torch.equal(model(x), ckpt.model(x))
    assert ckpt.meta.metrics["test"]["top1"] == 12.5 and ckpt.meta.model.input.mean == (0.28,)
    assert not ckpt.model.training
    assert load_checkpoint(stem.with_suffix(".json")).meta.weights_sha256 == ckpt.meta.weights_sha256


def test_metadata_is_plain_json_with_everything_needed(saved):
    _, stem = saved
    meta = json.loads(stem.with_suffix(".json").read_text())
    assert meta["format"] == "askexpert-checkpoint" and meta["kind"] == "generalist"
    assert meta["model"]["kwargs"]["embed_dim"] == 128 and len(meta["weights_sha256"]) == 64
    assert meta["parameters"] > 0 and meta["versions"]["torch"]


def test_corrupted_weights_are_detected(saved):
    _, stem = saved
    weights = stem.with_suffix(".safetensors")
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupted .*sha256.*fix: restore"):
        load_checkpoint(stem)


def test_missing_and_malformed_files(saved, tmp_path):
    _, stem = saved
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "nowhere")
    stem.with_suffix(".json").write_text("{ not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        read_meta(stem)
    stem.with_suffix(".json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(CheckpointError, match="not askexpert checkpoint metadata"):
        read_meta(stem)


def test_weights_of_another_model_are_rejected(saved, tmp_path):
    _, stem = saved
    spec, _ = resolve_spec(ModelConfig(name="vit-expert-28"), num_classes=10, mean=(0.3,), std=(0.3,))
    other = save_checkpoint(tmp_path / "other" / "model", build_model(spec), spec=spec, kind="general",
                            class_names=[str(i) for i in range(10)])
    meta = json.loads(stem.with_suffix(".json").read_text())
    other_meta = json.loads(other.with_suffix(".json").read_text())
    shutil.copyfile(other.with_suffix(".safetensors"), stem.parent / "other.safetensors")
    meta["weights_file"], meta["weights_sha256"] = "other.safetensors", other_meta["weights_sha256"]
    stem.with_suffix(".json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="do not fit the model"):
        load_checkpoint(stem)

"""The command line: help texts, one-line errors with exit status 2, eval and listings."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch

from askexpert.cli import build_parser, main
from askexpert.config import ModelConfig
from askexpert.models import build_model, resolve_spec, save_checkpoint

pytestmark = pytest.mark.timeout(300)  # real subprocesses

SUBCOMMANDS = [["demo"], ["train"], ["train", "generalist"], ["train", "experts"], ["partition"], ["evaluate-system"],
               ["build-system"], ["serve"], ["edge"], ["export-onnx"], ["bench"], ["eval"], ["models"], ["datasets"]]


def _cli(*args: str) -> subprocess.CompletedProcess:
    exe = shutil.which("askexpert") or ""
    cmd = [exe] if exe else [sys.executable, "-m", "askexpert.cli"]
    return subprocess.run(cmd + list(args), capture_output=True, text=True, timeout=300)


def test_top_level_help_lists_commands():
    out = _cli("--help")
    assert out.returncode == 0
    for word in ("demo", "train", "build-system", "serve", "edge", "eval", "models", "datasets", "examples:"):
        assert word in out.stdout


@pytest.mark.parametrize("args", SUBCOMMANDS, ids=" ".join)
def test_every_subcommand_explains_itself(args, capsys):
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(args + ["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert "usage: askexpert " + " ".join(args) in text and len(text.splitlines()) >= 4


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("askexpert: error: ") and "fix:" in err
    return err


def test_missing_dataset_error(tmp_path, capsys):
    code = main(["train", "generalist", "--data-root", str(tmp_path), "--set", "data.download=false",
                 "--output-dir", str(tmp_path / "runs")])
    assert code == 2
    assert "Fashion-MNIST not found" in _error_line(capsys)


def test_wrong_model_name_error(tmp_path, capsys, fmnist_dir):
    code = main(["train", "generalist", "--model", "vit-tiny-28", "--output-dir", str(tmp_path)])
    assert code == 2
    assert "unknown model 'vit-tiny-28'" in _error_line(capsys)


def test_malformed_config_error(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epochs: [\n")
    assert main(["train", "generalist", "--config", str(bad)]) == 2
    assert "not valid YAML" in _error_line(capsys)


def test_corrupted_checkpoint_error(tmp_path, capsys):
    spec, _ = resolve_spec(ModelConfig(name="vit-edge-28", kwargs={"depth": 1}), num_classes=10,
                           mean=(0.3,), std=(0.3,))
    stem = save_checkpoint(tmp_path / "model", build_model(spec), spec=spec, kind="generalist",
                           class_names=[str(i) for i in range(10)])
    weights = stem.with_suffix(".safetensors")
    weights.write_bytes(weights.read_bytes()[:-64])
    assert main(["eval", str(tmp_path)]) == 2
    assert "corrupted" in _error_line(capsys)


def test_eval_reports_per_class_accuracy_and_confusion(tmp_path, capsys, fmnist_dir):
    spec, _ = resolve_spec(ModelConfig(name="vit-edge-28", kwargs={"depth": 1}), num_classes=10,
                           mean=(0.286,), std=(0.353,))
    torch.manual_seed(0)
    from askexpert.data.fashion_mnist import CLASS_NAMES

    stem = save_checkpoint(tmp_path / "model", build_model(spec), spec=spec, kind="generalist",
                           class_names=CLASS_NAMES,
                           dataset={"config": {"name": "fashion-mnist", "test_subset": 500}})
    assert main(["eval", str(stem) + ".json", "--save-logits", "--out-dir", str(tmp_path / "ev")]) == 0
    out = capsys.readouterr().out
    assert "Ankle boot" in out and "top-1" in out
    report = json.loads((tmp_path / "ev" / "test.json").read_text())
    assert report["samples"] == 500 and len(report["confusion"]) == 10
    assert sum(map(sum, report["confusion"])) == 500
    assert (tmp_path / "ev" / "test-confusion.png").stat().st_size > 1000
    assert (tmp_path / "ev" / "test-logits.safetensors").is_file()


def test_models_lists_presets_with_costs(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in ("vit-edge-28", "vit-expert-28", "vit-edge-32", "vit-expert-32", "deit-edge-224",
                 "deit-expert-224"):
        assert name in out
    assert main(["models", "--timm", "deit_tiny*"]) == 0
    assert "deit_tiny_patch16_224" in capsys.readouterr().out


def test_datasets_lists_and_loads(capsys, fmnist_dir):
    assert main(["datasets"]) == 0
    out = capsys.readouterr().out
    assert "fashion-mnist" in out and "cifar100" in out
    assert main(["datasets", "fashion-mnist", "--no-download"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["train"] == 54000 and info["class_names"][9] == "Ankle boot"

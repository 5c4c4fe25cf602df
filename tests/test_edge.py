"""The edge side: ONNX export and runtime, the `askexpert edge` command, and the demo end to end."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from askexpert.cli import main
from askexpert.errors import CheckpointError
from askexpert.runtime.edge_models import OnnxGeneralist, TorchGeneralist, export_onnx
from askexpert.serving.process import ServerProcess, free_port


def test_onnx_export_matches_torch_and_carries_class_names(tiny_system, tmp_path):
    info = export_onnx(tiny_system["generalist"], tmp_path / "g.onnx")
    assert info["max_abs_diff"] < 1e-4
    onnx.checker.check_model(str(tmp_path / "g.onnx"))
    ort_model = OnnxGeneralist(tmp_path / "g.onnx", threads=1)
    torch_model = TorchGeneralist(tiny_system["generalist"])
    assert ort_model.class_names == torch_model.class_names and ort_model.input == torch_model.input
    images = np.random.default_rng(0).integers(0, 256, (37, 1, 28, 28), dtype=np.uint8)
    a, b = ort_model.logits(images), torch_model.logits(images)
    assert torch.allclose(a, b, atol=1e-4) and (a.argmax(1) == b.argmax(1)).all()
    assert torch.allclose(ort_model.logits(images[:1]), b[:1], atol=1e-4)  # any batch size


def test_onnx_errors_are_clear(tmp_path):
    with pytest.raises(CheckpointError, match="no ONNX model at .*export-onnx"):
        OnnxGeneralist(tmp_path / "missing.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(CheckpointError, match="cannot load ONNX model"):
        OnnxGeneralist(tmp_path / "junk.onnx")


def test_edge_cli_over_http_with_onnx_and_a_trace(tiny_system, tmp_path, capsys):
    onnx_path = tmp_path / "g.onnx"
    assert main(["export-onnx", str(tiny_system["generalist"]), "--out", str(onnx_path)]) == 0
    with ServerProcess(tiny_system["experts"], threads=1) as url:
        code = main(["edge", "--generalist", str(tiny_system["generalist"]), "--server", url, "--limit", "120",
                     "--backend", "onnx", "--onnx", str(onnx_path), "--threads", "1", "--link", "wifi",
                     "--trace", str(tmp_path / "t.jsonl"), "--predictions", str(tmp_path / "p.csv"),
                     "--summary", str(tmp_path / "s.json")])
    assert code == 0
    out = capsys.readouterr().out
    assert "accuracy, collaborative" in out and "wifi" in out
    traces = [json.loads(line) for line in (tmp_path / "t.jsonl").read_text().splitlines()]
    assert len(traces) == 120 and (tmp_path / "p.csv").read_text().count("\n") == 121
    offloaded = [t for t in traces if t["route"] != "local"]
    assert offloaded and all(t["link_ms"] >= 5.0 for t in offloaded)  # the wifi preset's 5 ms RTT at least
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["backend"] == "onnx" and summary["degraded"] == 0


def test_edge_cli_with_no_server_still_answers_everything(tiny_system, tmp_path, capsys):
    code = main(["edge", "--generalist", str(tiny_system["generalist"]), "--server",
                 f"http://127.0.0.1:{free_port()}", "--limit", "80", "--threads", "1", "--timeout", "0.5",
                 "--predictions", str(tmp_path / "p.csv")])
    assert code == 0
    rows = (tmp_path / "p.csv").read_text().splitlines()[1:]
    assert len(rows) == 80 and all(r.split(",")[2] != "" for r in rows)
    degraded = [r for r in rows if r.endswith(",1")]
    assert degraded and all(r.split(",")[4] == "degraded" for r in degraded)


def test_edge_cli_errors(tiny_system, capsys):
    assert main(["edge", "--generalist", str(tiny_system["generalist"]), "--link", "rtt=5"]) == 2
    assert "cannot read link" in capsys.readouterr().err
    assert main(["edge", "--generalist", str(tiny_system["generalist"]), "--backend", "onnx"]) == 2
    assert "--onnx FILE" in capsys.readouterr().err
    assert main(["edge", "--generalist", str(tiny_system["generalist"]), "--input", "/no/such/dir"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_edge_on_image_files(tiny_system, tmp_path, capsys):
    from PIL import Image

    from askexpert.data.fashion_mnist import CLASS_NAMES, load_split, locate

    images, labels = load_split(locate(), "test")
    for i in range(12):  # a labelled folder: sub-folders named after the classes
        d = tmp_path / "imgs" / CLASS_NAMES[int(labels[i])].replace("/", "-")
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i, 0].numpy()).save(d / f"{i}.png")
    assert main(["edge", "--generalist", str(tiny_system["generalist"]), "--input", str(tmp_path / "imgs"),
                 "--predictions", str(tmp_path / "folder.csv")]) == 0
    rows = [r.split(",") for r in (tmp_path / "folder.csv").read_text().splitlines()[1:]]
    assert len(rows) == 12 and sorted(int(r[1]) for r in rows) == sorted(int(v) for v in labels[:12])
    assert "accuracy, collaborative" in capsys.readouterr().out  # labelled: accuracy is reported
    loose = tmp_path / "loose.png"
    Image.fromarray(images[0, 0].numpy()).resize((56, 56)).save(loose)
    assert main(["edge", "--generalist", str(tiny_system["generalist"]), "--input", str(loose),
                 "--predictions", str(tmp_path / "p.csv")]) == 0
    assert (tmp_path / "p.csv").read_text().splitlines()[1].startswith("0,,")  # unlabelled, predicted


def test_demo_end_to_end_on_a_small_budget(tmp_path, fmnist_dir):
    from askexpert.demo import run_demo

    summary = run_demo(output_dir=tmp_path, limit=150, overrides=[
        "data.train_subset=1500", "data.val_subset=400", "data.test_subset=400", "train.epochs=1",
        "model.kwargs.depth=1", "train.threads=1"])
    assert summary["samples"] == 150 and summary["degraded"] == 0 and 10 < summary["offload_rate"] < 60
    assert summary["energy"]["kind"] == "modelled" and summary["energy"]["total_mj_per_image"] > 0
    report = tmp_path / "demo" / "report"
    assert "askexpert demo report" in (report / "report.md").read_text()
    assert len((report / "trace.jsonl").read_text().splitlines()) == 150
    again = run_demo(output_dir=tmp_path, limit=50, overrides=[  # a second run reuses every model
        "data.train_subset=1500", "data.val_subset=400", "data.test_subset=400", "train.epochs=1",
        "model.kwargs.depth=1", "train.threads=1"])
    assert again["models"] == summary["models"]

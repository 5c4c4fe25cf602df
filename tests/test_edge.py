"""The edge side: ONNX export and runtime, the `askexpert edge` command, and the demo end to end."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import TRAIN_THREADS

from askexpert.cli import main
from askexpert.errors import CheckpointError
from askexpert.models.onnx_export import export_onnx
from askexpert.runtime.edge_models import TorchGeneralist
from askexpert.runtime.onnx_model import OnnxGeneralist
from askexpert_lab.testbed.server import free_port


def test_onnx_export_matches_torch_and_carries_class_names(tiny_system, tmp_path):
    info = export_onnx(tiny_system["generalist"], tmp_path / "g.onnx")
    assert info["max_abs_diff"] < 1e-4
    onnx.checker.check_model(str(tmp_path / "g.onnx"))
    ort_model = OnnxGeneralist(tmp_path / "g.onnx", threads=1)
    torch_model = TorchGeneralist(tiny_system["generalist"])
    assert ort_model.class_names == torch_model.class_names and ort_model.input == torch_model.input
    images = np.random.default_rng(0).integers(0, 256, (37, 1, 28, 28), dtype=np.uint8)
    a, b = ort_model.logits(images), torch_model.logits(images)
    assert np.allclose(a, b, atol=1e-4) and (a.argmax(1) == b.argmax(1)).all()
    assert np.allclose(ort_model.logits(images[:1]), b[:1], atol=1e-4)  # any batch size


def test_onnx_errors_are_clear(tmp_path):
    with pytest.raises(CheckpointError, match="no ONNX model at .*export-onnx"):
        OnnxGeneralist(tmp_path / "missing.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(CheckpointError, match="cannot load ONNX model"):
        OnnxGeneralist(tmp_path / "junk.onnx")


@pytest.mark.timeout(180)
def test_edge_cli_over_http_from_a_bundle_with_a_trace(tiny_system, bundle_server, tmp_path, capsys):
    code = main(["edge", str(tiny_system["bundle"]), "--server", bundle_server, "--limit", "120", "--threads", "1",
                 "--link", "wifi", "--trace", str(tmp_path / "t.jsonl"), "--predictions", str(tmp_path / "p.csv"),
                 "--summary", str(tmp_path / "s.json")])
    assert code == 0
    out = capsys.readouterr().out
    assert "accuracy, collaborative" in out and "wifi" in out and "bundle" in out
    traces = [json.loads(line) for line in (tmp_path / "t.jsonl").read_text().splitlines()]
    assert len(traces) == 120 and (tmp_path / "p.csv").read_text().count("\n") == 121
    offloaded = [t for t in traces if t["route"] != "local"]
    assert offloaded and all(t["link_ms"] >= 5.0 for t in offloaded)  # the wifi preset's 5 ms RTT at least
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["backend"] == "onnx" and summary["degraded"] == 0
    assert summary["policy"]["tau"] == json.loads((tiny_system["bundle"] / "system.json").read_text())[
        "routing"]["tau"]  # the bundle's calibration, not a new one


@pytest.mark.timeout(180)
def test_edge_on_a_run_directory_still_works(tiny_system, experts_server, tmp_path):
    """The torch path: a generalist's run directory, calibrated on validation at start."""
    assert main(["edge", str(tiny_system["generalist"]), "--server", experts_server, "--limit", "60", "--threads", "1",
                 "--summary", str(tmp_path / "s.json")]) == 0
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["backend"] == "torch" and summary["samples"] == 60 and summary["degraded"] == 0


def test_edge_cli_with_no_server_still_answers_everything(tiny_system, tmp_path, capsys):
    code = main(["edge", str(tiny_system["bundle"]), "--server", f"http://127.0.0.1:{free_port()}", "--limit", "80",
                 "--threads", "1", "--timeout", "0.5", "--predictions", str(tmp_path / "p.csv")])
    assert code == 0
    rows = list(csv.DictReader((tmp_path / "p.csv").open()))
    assert len(rows) == 80 and all(r["pred"] != "" and r["pred_name"] for r in rows)
    degraded = [r for r in rows if r["degraded"] == "1"]
    assert degraded and all(r["route"] == "degraded" and r["pred"] == r["local_pred"] for r in degraded)
    err = capsys.readouterr().err
    assert err.count("stopped answering") == 1 and "flagged degraded" in err  # said once, not per image


class _FlakyClient:
    """An expert server that answers, fails for a while, then answers again (the edge side only)."""

    def __init__(self, down: range) -> None:
        self.calls, self.down = 0, down

    def infer(self, expert_id, images):
        from askexpert.runtime.clients import ExpertReply, ExpertUnavailable

        self.calls += 1
        if self.calls in self.down:
            raise ExpertUnavailable("ConnectError: connection refused")
        return ExpertReply(pred=np.full(len(images), -1), confidence=np.zeros(len(images), np.float32),
                           queue_ms=0.0, compute_ms=0.0, batch_size=len(images), round_trip_ms=1.0, encode_ms=0.0,
                           link_ms=0.0, up_bytes=0, down_bytes=0)

    def experts(self):
        return []


def test_edge_says_once_when_the_server_goes_down_and_once_when_it_is_back(caplog):
    from askexpert.routing import RoutingPolicy
    from askexpert.runtime.edge import EdgeRunner, ExpertTarget

    class Generalist:
        backend, class_names = "numpy", ["a", "b", "c", "d"]

        def logits(self, images):
            return np.zeros((len(images), 4), np.float32)  # never sure: every image is offloaded

    client = _FlakyClient(down=range(3, 8))
    runner = EdgeRunner(Generalist(), RoutingPolicy(tau=0.9, k=1), client,
                        [ExpertTarget("0", [0, 1]), ExpertTarget("1", [2, 3])])
    with caplog.at_level(logging.WARNING, logger="askexpert.edge"):
        traces = list(runner.run((np.zeros((1, 1, 4, 4), np.uint8), None) for _ in range(12)))
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2, messages
    assert "stopped answering at image 2" in messages[0] and "ConnectError" in messages[0]
    assert "answers again at image 7" in messages[1] and "5 answers from image 2 on were degraded" in messages[1]
    assert [t.degraded for t in traces] == [False] * 2 + [True] * 5 + [False] * 5


def test_edge_cli_errors(tiny_system, tmp_path, capsys):
    assert main(["edge", str(tiny_system["bundle"]), "--link", "rtt=5"]) == 2
    assert "cannot read link" in capsys.readouterr().err
    assert main(["edge", str(tiny_system["bundle"]), "--input", "/no/such/dir"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["edge", str(tmp_path)]) == 2  # neither a bundle nor a run
    assert "askexpert" in capsys.readouterr().err


def test_edge_on_image_files(tiny_system, tmp_path, capsys):
    from PIL import Image

    from askexpert.data.fashion_mnist import CLASS_NAMES, load_split, locate

    images, labels = load_split(locate(), "test")
    for i in range(12):  # a labelled folder: sub-folders named after the classes
        d = tmp_path / "imgs" / CLASS_NAMES[int(labels[i])].replace("/", "-")
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i, 0].numpy()).save(d / f"{i}.png")
    assert main(["edge", str(tiny_system["bundle"]), "--input", str(tmp_path / "imgs"),
                 "--predictions", str(tmp_path / "folder.csv")]) == 0
    rows = list(csv.DictReader((tmp_path / "folder.csv").open()))
    assert len(rows) == 12 and sorted(int(r["label"]) for r in rows) == sorted(int(v) for v in labels[:12])
    for r in rows:  # every row names its file and its classes
        assert r["file"].endswith(".png") and Path(r["file"]).parent.name == r["label_name"].replace("/", "-")
        assert r["pred_name"] == CLASS_NAMES[int(r["pred"])]
        assert r["local_pred_name"] == CLASS_NAMES[int(r["local_pred"])]
    assert "accuracy, collaborative" in capsys.readouterr().out  # labelled: accuracy is reported
    loose = tmp_path / "loose.png"
    Image.fromarray(images[0, 0].numpy()).resize((56, 56)).save(loose)
    assert main(["edge", str(tiny_system["bundle"]), "--input", str(loose),
                 "--predictions", str(tmp_path / "p.csv")]) == 0
    (row,) = csv.DictReader((tmp_path / "p.csv").open())  # unlabelled, predicted, its file named
    assert row["file"] == str(loose) and row["label"] == "" and row["pred_name"] == CLASS_NAMES[int(row["pred"])]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_demo_end_to_end_on_a_small_budget(tmp_path, fmnist_dir):
    from askexpert_lab.demo import run_demo

    small = ["data.train_subset=1500", "data.val_subset=400", "data.test_subset=400", "train.epochs=1",
             "model.kwargs.depth=1", f"train.threads={TRAIN_THREADS}"]
    result = run_demo(output_dir=tmp_path, limit=150, overrides=small)  # the default edge: an emulated Pi 4
    s = result.report.summary
    assert s.samples == 150 and s.degraded == 0 and 10 < s.offload_rate < 60
    assert result.placement.device == "rpi4" and result.placement.mode == "device-model"
    assert result.report.backend == "onnx" and (result.bundle / "system.json").is_file()
    assert result.energy.edge_energy_kind == "modelled" and result.energy.total_mj_per_image > 0
    assert result.energy.edge_wait_mj_per_image > 0  # the demo counts the edge's idle wait (the bench's formula)
    assert "h100's batch model" in result.energy.server_label  # the server paced to the default device, priced by it
    assert [g.link for g in result.regimes] == ["wifi", "lte"]  # today's regime, then one the map says favours collab
    assert all(g.plan["recommended"] in ("edge only", "full offload", "collaborative", None) for g in result.regimes)
    assert result.regimes[1].row("edge-only").summary == result.regimes[0].row("edge-only").summary  # not rerun
    assert result.regimes[1].row("full-offload-general").energy.radio_mj_per_image > \
        result.regimes[0].row("full-offload-general").energy.radio_mj_per_image  # lte's bytes priced at cellular
    only, offload, collab = (result.row(k) for k in ("edge-only", "full-offload-general", "collaborative"))
    assert only.summary.samples == offload.summary.samples == collab.summary.samples == 150  # the same images
    assert only.summary.offload_rate == 0 and only.energy.bytes_per_image == 0 and only.energy.server_mj_per_image == 0
    assert offload.summary.offload_rate == 100 and offload.summary.degraded == 0
    assert only.summary.accuracy == s.generalist_accuracy  # the generalist's answers, with or without a server
    assert 0 < collab.energy.bytes_per_image < offload.energy.bytes_per_image
    report = tmp_path / "demo" / "report"
    text = (report / "report.md").read_text()
    assert "askexpert demo report" in text and "| metric | edge only | full offload | collaborative |" in text
    assert "46% less energy than full offload, read two ways: total" in text and "; near-edge " in text
    assert text.count("askexpert plan recommends") == 2 and "## lte: what collaboration buys" in text
    assert text.count("emulated edge") == 1  # the placement described once, not twice
    assert len((report / "trace.jsonl").read_text().splitlines()) == 150
    again = run_demo(output_dir=tmp_path, limit=50, overrides=small, edge_device="host", server_device="host",
                     second_link=None)  # reuses every model
    assert "compute time on this host's" in again.energy.server_label and len(again.regimes) == 1
    assert again.models.reused == ["generalist", "general", "progressive"]
    recorded = json.loads((again.models.experts["progressive"] / "experts.json").read_text())["experts"]
    assert again.models.seconds["progressive"] == sum(e["train_seconds"] for e in recorded) > 0  # not the reuse's 0 s
    assert again.models.experts == result.models.experts

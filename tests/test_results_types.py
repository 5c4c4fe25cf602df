"""The typed values that cross modules keep the files they are written to: an epoch's line of
metrics.jsonl, an expert's metrics.json, a checkpoint's dataset record, the Ray hop's messages."""

from __future__ import annotations

import json
import pickle

import pytest
import torch

from askexpert.data.base import DatasetRecord
from askexpert.training.engine import EpochRecord
from askexpert.training.evaluate import SubsetMetrics, subset_metrics, subset_targets
from askexpert.training.experts import ExpertSummary
from askexpert.training.recipes import Budget


def test_an_epoch_record_is_its_metrics_line_and_back():
    line = {"epoch": 3, "stage": 2, "labels": "subset", "out_share": 0.3, "focus": 0.0, "step": 30, "lr": 0.001,
            "precision": "fp32", "train_loss": 0.5, "train_acc": 80.0, "train_images": 960, "train_seconds": 2.0,
            "images_per_s": 480.0, "val_loss": 0.6, "val_acc": 78.5}
    record = EpochRecord.from_json(line)
    assert record.plan_info == {"stage": 2, "labels": "subset", "out_share": 0.3, "focus": 0.0}
    assert record.val_acc == 78.5 and record.to_json() == line and list(record.to_json()) == list(line)
    unvalidated = {k: v for k, v in line.items() if not k.startswith("val_")}
    assert EpochRecord.from_json(unvalidated).to_json() == unvalidated
    assert "val" not in EpochRecord.from_json(unvalidated).summary()


def test_subset_metrics_count_the_subset_and_other_on_a_hand_example():
    labels = torch.tensor([3, 9, 1, 3, 5])  # subset [3, 9]: targets 0, 1, other, 0, other
    targets = subset_targets(labels, [3, 9], 10)
    logits = torch.tensor([[5.0, 0, 0], [0, 5.0, 0], [0, 0, 5.0], [0, 5.0, 0], [5.0, 0, 0]])
    m = subset_metrics(logits, targets, 2)
    assert m.subset_accuracy == pytest.approx(100 * 2 / 3, abs=1e-4)  # the mean of a float32 tensor
    assert (m.subset_samples, m.other_recall, m.other_samples) == (3, 50.0, 2)
    assert SubsetMetrics.from_json(json.loads(json.dumps(m.to_json()))) == m
    assert subset_metrics(logits[:2], targets[:2], 2).other_recall is None


def test_an_expert_summary_is_its_metrics_file_and_back():
    summary = ExpertSummary(1, [1, 8], ["trouser", "bag"], "progressive", "scratch", "ab" * 32,
                            Budget(4, 40, 2560, 640, 0, 0), 12.5, 204.8, "bf16",
                            SubsetMetrics(97.5, 1200, 90.0, 4800), SubsetMetrics(97.0, 2000, 91.0, 8000), 96.0)
    d = json.loads(json.dumps(summary.to_json()))
    assert d["images_seen"] == 2560 and d["budget"]["steps"] == 40 and d["test"]["other_recall"] == 91.0
    assert ExpertSummary.from_json(d) == summary
    old = {k: v for k, v in d.items() if k not in ("budget", "init_from", "init_sha256")}  # before budgets
    assert ExpertSummary.from_json(old).budget is None and ExpertSummary.from_json(old).images_seen is None


def test_a_dataset_record_keeps_what_an_older_checkpoint_wrote():
    record = DatasetRecord.model_validate({"name": "fashion-mnist", "train": 2000, "config": {"name": "fashion-mnist"},
                                           "written_by_an_older_version": 1})
    assert record.train == 2000 and record.config["name"] == "fashion-mnist" and record.class_names == []
    assert record.model_dump()["written_by_an_older_version"] == 1
    assert DatasetRecord().config == {}


def test_the_ray_hop_messages_cross_a_process_boundary():
    from askexpert.contract.protocol import ExpertInfo
    from askexpert.serving.ray_app import BatchReport, ReplicaInfo

    info = ExpertInfo(id="0", classes=[0, 2], class_names=["a", "c"], has_other=True, model="m", timm_name="t",
                      parameters=10, input_shape=[1, 28, 28])
    for message in (ReplicaInfo(info, [0, 2, -1], "cpu", None), BatchReport(0.01, 8, True)):
        assert pickle.loads(pickle.dumps(message)) == message

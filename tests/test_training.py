"""Training on real Fashion-MNIST: accuracy far above chance, exact reload, exact resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import TRAIN_THREADS

from askexpert.config import load_run_config
from askexpert.data import load_dataset
from askexpert.errors import ConfigError
from askexpert.models import load_checkpoint
from askexpert.training import predict_logits, train_generalist
from askexpert.training.generalist import TrainedModel

pytestmark = [pytest.mark.usefixtures("fmnist_dir"), pytest.mark.slow]  # every test here trains


@pytest.fixture(scope="module")
def trained(tiny_system):
    """The session's tiny generalist (vit-edge-28 with one block, 3 epochs on 2,000 real images, trained by
    the pipeline's train_generalist): its run's own config and what training returned. Shared, not trained
    again here (it was this module's own 4-epoch run: 31 s in bf16, 69 s in float32 on 2 cores)."""
    run = tiny_system["generalist"]
    cfg = load_run_config(str(run / "config.yaml"))
    return cfg, TrainedModel(run, run / "model", json.loads((run / "metrics.json").read_text()))


def test_short_training_is_far_above_chance(trained, floor):
    cfg, result = trained
    assert cfg.train.epochs == 3 and cfg.data.train_subset == 2000
    assert result.metrics["test"]["samples"] == cfg.data.test_subset == 600
    floor("vit-edge-28 (one block), 3 epochs on 2,000 images: test accuracy", result.metrics["test"]["top1"], 40)
    history = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    for name in ("config.yaml", "train.log", "metrics.json", "model.safetensors", "model.json",
                 "eval/test.json", "eval/test-confusion.png", "eval/val.json"):
        assert (result.run_dir / name).is_file(), name


def test_reloaded_checkpoint_gives_bit_identical_logits(trained):
    cfg, result = trained
    bundle = load_dataset(cfg.data)
    ckpt = load_checkpoint(result.checkpoint)
    logits = predict_logits(ckpt.model, bundle.test, ckpt.meta.model.input)
    again = predict_logits(load_checkpoint(result.run_dir).model, bundle.test, ckpt.meta.model.input)
    assert torch.equal(logits, again)
    acc = 100 * float((logits.argmax(1) == bundle.test.labels).float().mean())
    assert acc == pytest.approx(result.metrics["test"]["top1"], abs=1e-4)
    assert ckpt.meta.class_names[0] == "T-shirt/top" and ckpt.meta.dataset.train == 2000


def test_existing_run_is_never_clobbered(trained):
    cfg, _ = trained
    with pytest.raises(ConfigError, match="already holds a run.*--resume.*--overwrite"):
        train_generalist(cfg)
    changed = cfg.model_copy(update={"train": cfg.train.model_copy(update={"lr": 0.1})})
    with pytest.raises(ConfigError, match="config differs in train.lr"):
        train_generalist(changed, resume=True)


def test_interrupted_run_resumes_to_the_same_weights(tmp_path):
    """Interrupt a real CLI training run after its first epoch, resume it, and compare with a run
    that was never interrupted: the final weights must be identical."""
    base = ["data.train_subset=600", "data.val_subset=200", "data.test_subset=200", "train.batch_size=100",
            f"output_dir={tmp_path}", "model.kwargs.depth=1", "train.epochs=3", f"train.threads={TRAIN_THREADS}"]
    straight = train_generalist(load_run_config(None, base + ["name=straight"]))

    args = [sys.executable, "-m", "askexpert.cli", "train", "generalist", "--name", "stopped"]
    for item in base:
        args += ["--set", item]
    # SIGINT back to its default in the child: a shell that runs the suite in the background ignores it,
    # the child would inherit that, and Python installs no KeyboardInterrupt handler for an ignored signal
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    state = tmp_path / "stopped" / "state.json"
    deadline = time.monotonic() + 120
    while not state.is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "continues with --resume" in err, err
    assert not (tmp_path / "stopped" / "model.json").exists()  # it really was cut short
    assert json.loads(state.read_text())["epoch"] < 3

    resumed = train_generalist(load_run_config(None, base + ["name=stopped"]), resume=True)
    a = load_checkpoint(straight.checkpoint).model.state_dict()
    b = load_checkpoint(resumed.checkpoint).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.metrics["test"]["top1"] == straight.metrics["test"]["top1"]


def test_warmup_is_a_share_of_any_run_and_an_epoch_count_is_cut():
    from askexpert.config import TrainConfig
    from askexpert.training.engine import warmup_steps

    assert warmup_steps(TrainConfig(), 100, 1) == (5, None)  # 5% of a one-epoch run
    assert warmup_steps(TrainConfig(), 100, 20) == (100, None)
    assert warmup_steps(TrainConfig(warmup_epochs=1), 100, 20) == (100, None)  # shipped configs: unchanged
    steps, note = warmup_steps(TrainConfig(warmup_epochs=1), 100, 1)  # a whole one-epoch run warming up
    assert steps == 25 and "cut to 25" in note and "fix: set train.warmup_fraction" in note


@pytest.mark.timeout(300)
def test_two_gloo_processes_train_like_one_and_resume(tmp_path, floor):
    """torchrun with 2 CPU processes (gloo): the same losses as one process within 2%, process 0 alone
    writes the run, and a run interrupted after its first epoch resumes to the very weights of one that
    was not."""
    torchrun = Path(sys.executable).with_name("torchrun")
    base = ["data.train_subset=800", "data.val_subset=200", "data.test_subset=200", "train.batch_size=100",
            "model.kwargs.depth=1", "train.epochs=2", f"output_dir={tmp_path}", "train.threads=1",
            "train.augment=none"]
    sets = [x for item in base for x in ("--set", item)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def two(name: str, *extra: str) -> subprocess.Popen:
        return subprocess.Popen([str(torchrun), "--nproc-per-node", "2", "-m", "askexpert", "train", "generalist",
                                 "--name", name, *sets, *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=env, start_new_session=True)

    straight = two("two")
    one = train_generalist(load_run_config(None, base + ["name=one"]))
    out, err = straight.communicate(timeout=240)
    assert straight.returncode == 0, err[-2000:]
    assert out.count("trained 2 epochs") == 1  # process 1 printed nothing
    loss = [[json.loads(x)["train_loss"] for x in (tmp_path / n / "metrics.jsonl").read_text().splitlines()]
            for n in ("one", "two")]
    assert all(abs(a - b) / a < 0.02 for a, b in zip(*loss, strict=True)), loss
    assert [json.loads(x)["train_images"] for x in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()] \
        == [800] * 2  # counted over both processes

    cut = two("cut")
    state = tmp_path / "cut" / "state.json"
    deadline = time.monotonic() + 120
    while not state.is_file() and cut.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(cut.pid, signal.SIGINT)
    cut.communicate(timeout=60)
    assert json.loads(state.read_text())["epoch"] < 2 and not (tmp_path / "cut" / "model.json").exists()
    resumed = two("cut", "--resume")
    out, err = resumed.communicate(timeout=240)
    assert resumed.returncode == 0 and "resuming" in err, err[-2000:]
    a = load_checkpoint(tmp_path / "two" / "model").model.state_dict()
    b = load_checkpoint(tmp_path / "cut" / "model").model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    floor("DDP reference, one process: test accuracy", one.metrics["test"]["top1"], 20)  # chance 10%

"""han100: the Han character task built offline from Debian's fonts, its pretraining pool, the pretrained
starts, the collapsed expert head and the specialists benchmark on a tiny build of the task."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from askexpert.config import DataConfig
from askexpert.data import han, load_dataset
from askexpert.errors import DatasetError
from askexpert_lab.han import build as han_build
from askexpert_lab.han import fonts as han_fonts

ROOT = Path(__file__).resolve().parents[1]



@pytest.fixture
def fonts():
    """The han100 fonts, which the test install provides (scripts/bootstrap.sh installs them wherever apt-get
    is usable, CI included): missing, the test fails with the fix, never a skip."""
    try:
        han_fonts.require_installed()
    except DatasetError as err:
        pytest.fail(f"the han100 fonts are missing: {err} (scripts/bootstrap.sh installs them)", pytrace=False)


needs_fonts = pytest.mark.usefixtures("fonts")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("han")
    han_build.build(root, spec=han_build.TINY, workers=2)
    return root


def _arrays(directory: Path) -> dict[str, np.ndarray]:
    out = {}
    for part, splits in (("task", ("train", "val", "test")), ("pool", ("train", "val"))):
        for split in splits:
            for key, value in han.load_part(directory, part, split).items():
                out[f"{part}-{split}-{key}"] = value
    return out


@needs_fonts
def test_the_build_is_deterministic_whatever_the_worker_count(tiny, tmp_path):
    again = han_build.build(tmp_path, spec=han_build.TINY, workers=1)
    first, second = _arrays(tiny / "han100"), _arrays(again)
    assert first.keys() == second.keys()
    assert all(np.array_equal(first[k], second[k]) for k in first)
    a, b = (han.read_manifest(d) for d in (tiny / "han100", again))
    assert a["classes"] == b["classes"] and a["pool_classes"] == b["pool_classes"] and a["designs"] == b["designs"]
    other = han_build.build(tmp_path / "seed1", seed=1, spec=han_build.TINY, workers=2)
    assert not np.array_equal(_arrays(other)["task-train-images"], first["task-train-images"])


@needs_fonts
def test_every_split_is_drawn_in_designs_no_other_split_uses(tiny):
    directory = tiny / "han100"
    manifest = han.read_manifest(directory)
    faces_of = {}
    for design in manifest["designs"]:
        faces_of.setdefault(design["split"], set()).update(f["id"] for f in design["faces"])
    files_of = {split: {f["file"] for d in manifest["designs"] if d["split"] == split for f in d["faces"]}
                for split in han_fonts.SPLITS}
    for a in han_fonts.SPLITS:  # no font file, and no design, in two splits
        for b in han_fonts.SPLITS:
            if a < b:
                assert not files_of[a] & files_of[b] and not faces_of[a] & faces_of[b]
    for part, split, fonts in (("task", "train", "train"), ("task", "val", "val"), ("task", "test", "test"),
                               ("pool", "train", "train"), ("pool", "val", "val")):
        used = set(np.unique(han.load_part(directory, part, split)["faces"]).tolist())
        assert used <= faces_of[fonts] and len(used) > 1
    task = {c["codepoint"] for c in manifest["classes"]}
    pool = {c["codepoint"] for c in manifest["pool_classes"]}
    fillers = {ord(c) for c in manifest["fillers"]}
    assert not task & pool and not (task | pool) & fillers
    assert all(p["version"] for p in manifest["packages"])  # every package's version recorded
    assert not [p for p in manifest["packages"] if p["licence"].startswith("see ")]  # and its licence named
    assert all(f["sha256"] for d in manifest["designs"] for f in d["faces"])


@needs_fonts
def test_the_registry_loads_the_task_and_its_pool(tiny):
    task = load_dataset(DataConfig(name="han100", root=tiny))
    assert (task.num_classes, task.channels, task.image_size) == (10, 1, 32)
    assert (len(task.train), len(task.val), len(task.test)) == (400, 100, 200)
    assert task.coarse_names and len(task.coarse_names) == 2 and task.train.coarse_labels is not None
    assert task.train.images.dtype == torch.uint8 and task.default_augment == "crop"  # never mirrored
    pool = load_dataset(DataConfig(name="han100-pool", root=tiny))
    assert pool.num_classes == 30 and not set(pool.class_names) & set(task.class_names)
    small = load_dataset(DataConfig(name="han100", root=tiny, train_subset=100))
    assert len(small.train) == 100 and len(small.val) == 100


def test_an_unbuilt_task_names_the_command_that_builds_it(tmp_path):
    with pytest.raises(DatasetError, match="askexpert data build han100"):
        load_dataset(DataConfig(name="han100", root=tmp_path))


def test_missing_fonts_name_the_packages_to_install(monkeypatch):
    design = han_fonts.Design("gone", "sans", "train", ("fonts-nothing-here",), (("/nonexistent/a.ttf", 0),))
    with pytest.raises(DatasetError, match="apt-get install fonts-nothing-here"):
        han_fonts.require_installed((design,))


@needs_fonts
def test_the_command_line_builds_it(tmp_path, capsys):
    from askexpert.cli import main

    assert main(["data", "build", "han100", "--tiny", "--root", str(tmp_path), "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "task" in out and "pool" in out and (tmp_path / "han100" / "samples.png").stat().st_size > 1000
    assert main(["data", "build", "cifar100"]) == 2


@pytest.fixture(scope="module")
def starts(tiny, tmp_path_factory):
    from askexpert.training.pretrain import pretrain

    out = tmp_path_factory.mktemp("pretrained")
    return {m: pretrain(m, epochs=1, out=out / m, overrides=[f"data.root={tiny}"])
            for m in ("vit-micro-edge-32g", "vit-mini-expert-32g")}


@needs_fonts
@pytest.mark.slow
def test_a_pretrained_start_loads_into_both_architectures(tiny, starts):
    import safetensors.torch

    from askexpert.config import ModelConfig
    from askexpert.models import build_model, resolve_spec
    from askexpert.training.pretrain import pretrain

    for name, result in starts.items():
        record = json.loads((result.run_dir / "pretrained.json").read_text())
        assert record["pool"] == "han100-pool" and record["val_top1"] == result.val_top1
        again = pretrain(name, epochs=1, out=result.run_dir, overrides=[f"data.root={tiny}"])
        assert again.reused and again.weights == result.weights  # cached
        weights = safetensors.torch.load_file(str(result.weights))
        assert weights["head.weight"].shape[0] == 30  # the pool's classes
        spec, pretrained = resolve_spec(ModelConfig(name=name, pretrained_file=str(result.weights)), num_classes=10,
                                        mean=(0.5,), std=(0.3,))
        model = build_model(spec, pretrained=pretrained)
        state = model.state_dict()
        assert state["head.weight"].shape[0] == 10  # a fresh head of the task's classes
        body = [k for k in weights if not k.startswith("head.")]
        assert body and all(torch.equal(state[k], weights[k]) for k in body)


@needs_fonts
@pytest.mark.slow
def test_a_committed_start_is_reused_checked_and_resumed_from_its_unfinished_state(tiny, tmp_path, monkeypatch):
    """A start committed to the store (float16 + manifest) is what ``pretrain`` returns without training, its
    float32 copy loads into its architecture; a corrupted or mislabelled file is refused with the fix; a run
    stopped at its budget commits its state, and the next call resumes it after that epoch."""
    import safetensors.torch

    from askexpert.errors import ModelError
    from askexpert.models import starts
    from askexpert.training.pretrain import pretrain

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    store, over = tmp_path / "starts", [f"data.root={tiny}"]
    model = "vit-micro-edge-32g"
    first = pretrain(model, epochs=3, lr=1e-3, overrides=over, commit=True, budget_min=1e-6, store=store)
    assert first.weights is None and first.stopped_after == 1  # stopped at the first epoch boundary
    partial = starts.partial_dir("han100-pool", model, 3, 1e-3, 0, store)
    assert json.loads((partial / "state.json").read_text())["epoch"] == 1
    shutil.rmtree(first.run_dir)  # a new machine: only the store survives
    done = pretrain(model, epochs=3, lr=1e-3, overrides=over, commit=True, store=store)
    log = (done.run_dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in log] == [1, 2, 3]  # epoch 1 came from the store
    record = done.committed
    assert record is not None and not partial.exists()
    manifest = json.loads((store / "han100-pool" / "manifest.json").read_text())["starts"][model]
    assert manifest["sha256"] == starts.sha256_file(record.path(store)) and manifest["dtype"] == "float16"
    assert manifest["epochs"] == 3 and manifest["seed"] == 0 and "askexpert pretrain" in manifest["command"]
    assert abs(manifest["val_top1_stored"] - manifest["val_top1"]) <= 5.0
    assert safetensors.torch.load_file(str(record.path(store)))["head.weight"].dtype == torch.float16

    shutil.rmtree(done.run_dir)
    again = pretrain(model, epochs=3, lr=1e-3, overrides=over, store=store)  # no training: the committed start
    assert again.reused and again.committed == record and not done.run_dir.exists()
    restored = safetensors.torch.load_file(str(again.weights))
    assert restored["head.weight"].dtype == torch.float32 and restored["head.weight"].shape[0] == 30

    bytes_ = bytearray(record.path(store).read_bytes())
    bytes_[-1] ^= 0xFF
    record.path(store).write_bytes(bytes(bytes_))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache2"))
    with pytest.raises(ModelError, match="corrupted.*fix: restore it.*askexpert pretrain"):
        pretrain(model, epochs=3, lr=1e-3, overrides=over, store=store)
    wrong = starts.StartRecord(**{**manifest, "model": "vit-mini-expert-32g"})
    bytes_[-1] ^= 0xFF
    record.path(store).write_bytes(bytes(bytes_))
    with pytest.raises(ModelError, match="does not fit vit-mini-expert-32g.*fix:"):
        starts.restored_file(wrong, store)


def test_a_collapsed_head_answers_as_subset_and_other_and_rebuilds_from_its_spec(tmp_path):
    from askexpert.config import ModelConfig
    from askexpert.models import build_model, load_checkpoint, resolve_spec, save_checkpoint
    from askexpert.models.collapse import collapse_head
    from askexpert.models.onnx_export import export_onnx
    from askexpert.training.objective import collapse_logits, collapsed_spec

    spec, _ = resolve_spec(ModelConfig(name="vit-micro-edge-32g"), num_classes=8, mean=(0.5,), std=(0.3,))
    torch.manual_seed(0)
    model = build_model(spec).eval()
    x = torch.randn(3, 1, 32, 32)
    full = model(x)
    head = collapse_head(model, [2, 5])
    out = model(x)
    assert out.shape == (3, 3)
    assert torch.allclose(out, collapse_logits(full, torch.tensor([2, 5]), torch.tensor([0, 1, 3, 4, 6, 7])), atol=1e-5)
    head.wide = True
    assert torch.allclose(model(x), full, atol=1e-6)
    head.wide = False
    cspec = collapsed_spec(spec, [2, 5])
    assert cspec.num_classes == 3
    stem = tmp_path / "expert"
    save_checkpoint(stem, model, spec=cspec, kind="expert", class_names=["a", "b", "other"])
    loaded = load_checkpoint(stem).model.eval()
    assert torch.allclose(loaded(x), out, atol=1e-5)
    export_onnx(stem, tmp_path / "expert.onnx")  # checked against torch inside


@needs_fonts
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_capacity_map_writes_a_unit_and_a_rerun_skips_it(tmp_path):
    """benchmarks/capacity_map.py on a tiny build: one unit (width x seed) trained, evaluated and written; a
    rerun trains nothing and says the unit is finished; the map's summary has the documented layout."""
    results = tmp_path / "results"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "capacity_map.py"), "--profile", "smoke", "--widths", "d32",
           "--seeds", "0", "--output-dir", str(tmp_path / "runs"), "--results", str(results)]
    first = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=580)
    assert first.returncode == 0, first.stderr[-3000:]
    unit = results / "map" / "units" / "d32-seed0.json"
    written = unit.read_bytes()
    record = json.loads(written)
    assert set(record["experts"]) == {"static", "progressive", "static-overlap"}
    assert record["experts"]["static-overlap"]["class_slots"] > record["experts"]["static"]["class_slots"]
    assert {r["variant"] for r in record["routing"]} >= {"top-3", "whole mass", "re-route next x2",
                                                         "re-route general", "learned deferral"}
    again = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=580)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "unit d32 seed 0: finished" in again.stdout and "skipped" in again.stdout
    assert unit.read_bytes() == written  # not run again
    width = json.loads((results / "map.json").read_text())["widths"]["d32"]
    assert "static: re-route next x2" in width["coverage"]
    for key in ("experts_minus_general_as_expert_system", "progressive_minus_static_subset_no_other"):
        assert set(width["paired"][key]) == {"per_seed", "mean", "ci95"}
    assert (results / "map.png").stat().st_size > 10_000


@needs_fonts
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_specialists_benchmark_smoke_profile_on_a_tiny_han100(tmp_path):
    """The benchmark end to end on a tiny build: pretrained starts, the screens, a seed, the summary."""
    results = tmp_path / "results"
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "specialists.py"), "--task", "han100",
                          "--profile", "smoke", "--seeds", "0", "--sweep", "--output-dir", str(tmp_path / "runs"),
                          "--results", str(results)], capture_output=True, text=True, cwd=ROOT, timeout=880)
    assert run.returncode == 0, run.stderr[-3000:]
    seed = json.loads((results / "hansmoke-seed0.json").read_text())
    assert set(seed["recipes"]) == {"static", "static-other", "progressive", "progressive-shared", "original"}
    fresh = [seed["recipes"][r] for r in ("static", "static-other", "progressive")]
    assert len({tuple(r["init_sha256"]) for r in fresh}) == 1  # one pretrained start for the three recipes
    assert len({json.dumps([(b["steps"], b["images"]) for b in r["budget"]]) for r in fresh}) == 1
    assert all(b["wide_images"] > 0 for b in seed["recipes"]["progressive"]["budget"])
    assert {s["model"] for s in seed["starts"]} == {"vit-micro-edge-32g", "vit-mini-expert-32g"}
    assert set(seed["random"]["recipes"]) == {"static-random", "progressive-random"}
    assert seed["random"]["partition"] != seed["partition"]
    assert all(len(g) == 5 for g in seed["partition"])
    for r in seed["recipes"].values():  # the subset argmax without "other" is never below the one with it
        assert r["subset_accuracy_no_other_test_mean"] >= r["subset_accuracy_test_mean"] - 1e-9
    screen = json.loads((results / "hansmoke-screen.json").read_text())
    assert screen["chosen"] in screen["variants_val_subset"] and seed["progressive_variant"] == screen["chosen"]
    assert set(screen["variants_val_subset_no_other"]) == {*screen["variants_val_subset"], "static"}
    regime = json.loads((results / "summary.json").read_text())["regimes"]["hansmoke"]
    p = regime["paired"]["progressive_minus_static_subset"]
    assert p["mean"] == pytest.approx(seed["recipes"]["progressive"]["subset_accuracy_test_mean"]
                                      - seed["recipes"]["static"]["subset_accuracy_test_mean"])
    assert "restricted_general_per_expert_budget_system_accuracy" in regime["controls"]
    assert "progressive minus static" in run.stdout
    assert "screen of hansmoke" in run.stdout and f"| {screen['chosen']} (chosen) |" in run.stdout  # the screen's table


def test_a_seed_run_again_to_add_recipes_keeps_the_times_of_the_runs_it_reuses(tmp_path, monkeypatch):
    """Adding the random partition to a finished seed reuses its runs (0 s each): the seed's file keeps
    their earlier times and adds the new work to the earlier wall time."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from specialists import keep_earlier_times

    path = tmp_path / "han100-seed1.json"
    path.write_text(json.dumps({"command": "first", "machine": {"host": "a"},
                                "timings": {"generalist_s": 240.0, "static_s": 300.0, "evaluation_s": 20.0,
                                            "total_s": 600.0},
                                "recipes": {"static": {"train_seconds": 300.0}},
                                "random": {"recipes": {"static-random": {"train_seconds": 280.0}}}}))
    again = {"reused_runs": ["generalist", "static", "static-random"],
             "timings": {"generalist_s": 0.01, "static_s": 0.02, "static-random_s": 0.03, "progressive-random_s": 290.0,
                         "partition_s": 1.0, "evaluation_s": 25.0, "total_s": 310.0},
             "recipes": {"static": {"train_seconds": 0.02}},
             "random": {"recipes": {"static-random": {"train_seconds": 0.03}, "progressive-random": {
                 "train_seconds": 290.0}}}}
    merged = keep_earlier_times(again, path)
    assert merged["timings"]["generalist_s"] == 240.0 and merged["timings"]["static_s"] == 300.0
    assert merged["timings"]["total_s"] == pytest.approx(600.0 + 291.0)
    assert merged["recipes"]["static"]["train_seconds"] == 300.0
    assert merged["random"]["recipes"]["static-random"]["train_seconds"] == 280.0  # the random partition's too
    assert merged["random"]["recipes"]["progressive-random"]["train_seconds"] == 290.0  # new work: its own
    assert merged["earlier_run"]["command"] == "first"
    fresh = {"reused_runs": [], "timings": {"total_s": 5.0}, "recipes": {}}
    assert keep_earlier_times(fresh, path)["timings"]["total_s"] == 5.0  # nothing reused: its own time

"""Progressive vs static specialists, compared fairly: one start, one budget, real-label stages,
control rows, minimum partition sizes, and the benchmark's smoke profile, on real Fashion-MNIST."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from askexpert.config import ExpertsConfig, RunConfig, StageConfig, load_run_config
from askexpert.data import ArraySplit
from askexpert.errors import ConfigError
from askexpert.models import load_checkpoint
from askexpert.routing import RoutingPolicy, system_metrics
from askexpert.routing.metrics import ExpertAnswers, oracle_experts, subset_accuracies
from askexpert.system.calibrate import Outputs, general_restricted
from askexpert.training.evaluate import subset_targets
from askexpert.training.experts import train_experts
from askexpert.training.objective import ExpertObjective, collapse_logits
from askexpert.training.partition import agglomerate, partition_from_confusion
from askexpert.training.plans import MixturePlan, set_frozen
from askexpert.training.recipes import starting_model, weights_sha256

ROOT = Path(__file__).resolve().parents[1]


def test_a_real_label_stage_says_other_with_the_log_sum_exp_of_the_other_classes():
    logits = torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 0.0, 0.0]])
    out = collapse_logits(logits, torch.tensor([1, 3]), torch.tensor([0, 2]))
    assert out[:, :2].tolist() == [[2.0, 4.0], [0.0, 0.0]]
    assert out[0, 2].item() == pytest.approx(float(np.log(np.exp(1.0) + np.exp(3.0))), abs=1e-6)
    assert out[1, 2].item() == pytest.approx(float(np.log(2.0)), abs=1e-6)
    # so "other" takes exactly the probability of the classes outside the subset
    p = torch.softmax(logits, 1)
    assert torch.softmax(out, 1)[:, 2].tolist() == pytest.approx((p[:, 0] + p[:, 2]).tolist(), abs=1e-6)


def _plan(stages, epochs=3):
    labels = torch.arange(10).repeat(100)  # 1000 images, 100 a class; each image's pixels hold its class
    split = ArraySplit(labels.to(torch.uint8)[:, None, None, None].expand(1000, 1, 4, 4).contiguous(), labels)
    targets = subset_targets(labels, [0, 1], 10)
    return MixturePlan(split=split, targets=targets, in_subset=torch.nonzero(targets < 2).flatten(),
                       out_subset=torch.nonzero(targets == 2).flatten(), stages=stages, batch_size=20, epochs=epochs)


def test_an_all_class_stage_draws_every_class_with_its_true_label_at_the_same_budget():
    plan = _plan([StageConfig(fraction=1 / 3, labels="all"), StageConfig(fraction=2 / 3, out_share=0.2)])
    assert plan.wide_epochs() == 1
    wide = list(plan.batches(1, torch.Generator().manual_seed(0)))
    narrow = list(plan.batches(2, torch.Generator().manual_seed(0)))
    assert len(wide) == len(narrow) == plan.steps_per_epoch  # the same steps and images in every epoch
    images = torch.cat([x for x, _ in wide])[:, 0, 0, 0].long()
    labels = torch.cat([y for _, y in wide])
    assert torch.equal(images, labels) and len(labels.unique()) == 10  # true labels, every class
    assert int(torch.cat([y for _, y in narrow]).max()) == 2  # then subset + "other"


def test_stage_order_and_weights_are_validated():
    with pytest.raises(ValidationError, match="must come first"):
        ExpertsConfig(stages=[StageConfig(fraction=0.5), StageConfig(fraction=0.5, labels="all")])
    with pytest.raises(ValidationError, match="last stage"):
        ExpertsConfig(stages=[StageConfig(fraction=1.0, labels="all")])
    with pytest.raises(ValidationError, match="nothing earlier"):
        StageConfig(fraction=1.0, labels="all", lwf=0.5)


def test_lwf_distils_the_earlier_model_collapsed_onto_the_experts_outputs():
    torch.manual_seed(0)
    earlier = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 10))
    x = torch.randn(5, 1, 4, 4)
    obj = ExpertObjective(subset=[2, 7], label_smoothing=0.0, earlier=earlier, temperature=1.0)
    obj.set_stage(StageConfig(fraction=1.0, lwf=1.0))
    with torch.no_grad():
        same = obj.collapse(earlier(x))
        assert float(obj(same, torch.zeros(5, dtype=torch.int64), x)) == pytest.approx(0.0, abs=1e-5)
        assert float(obj(torch.zeros(5, 3), torch.zeros(5, dtype=torch.int64), x)) > 0.01
    obj.set_stage(StageConfig(fraction=1.0))  # a stage without lwf: plain cross-entropy
    z = torch.randn(5, 3)
    y = torch.zeros(5, dtype=torch.int64)
    assert float(obj(z, y, x)) == pytest.approx(float(torch.nn.functional.cross_entropy(z, y)))


def test_a_stage_freezes_the_stem_and_lower_blocks_and_the_next_thaws_them():
    from askexpert.config import ModelConfig
    from askexpert.models import build_model, resolve_spec

    spec, _ = resolve_spec(ModelConfig(name="vit-mini-expert-28", kwargs={"depth": 2}), num_classes=10,
                           mean=(0.3,), std=(0.3,))
    model = build_model(spec)
    plan = _plan([StageConfig(fraction=0.5, freeze_stem=True, freeze_blocks=1), StageConfig(fraction=0.5)], epochs=2)
    plan.begin_epoch(1, model)
    assert not any(p.requires_grad for p in model.patch_embed.parameters())
    assert not any(p.requires_grad for p in model.blocks[0].parameters())
    assert all(p.requires_grad for p in model.blocks[1].parameters()) and model.head.weight.requires_grad
    plan.begin_epoch(2, model)
    assert all(p.requires_grad for p in model.parameters())
    with pytest.raises(ConfigError, match="cannot freeze 3 blocks"):
        set_frozen(model, blocks=3)


def test_restricted_general_control_on_a_hand_made_example():
    # 4 classes, two experts {0, 1} and {2, 3}; the general model's logits on 4 test images
    z = np.array([[3.0, 1.0, 5.0, 0.0],   # true 0: the general model says 2, restricted to {0, 1} it says 0
                  [0.0, 2.0, 1.0, 0.0],   # true 1: 1 either way
                  [4.0, 0.0, 1.0, 2.0],   # true 3: restricted to {2, 3} it says 3
                  [0.0, 0.0, 1.0, 3.0]])  # true 2: restricted to {2, 3} it still says 3 (wrong)
    y = np.array([0, 1, 3, 2])
    general = Outputs("general", Path("g"), z, y, z, y, {})
    restricted = general_restricted(general, 1.0, [[0, 1], [2, 3]], "restricted")
    assert restricted.test.pred.tolist() == [[0, 1, 0, 0], [2, 2, 3, 3]]  # never "other"
    assert subset_accuracies(restricted.test, restricted.subsets, y) == [100.0, 50.0]
    # in the system: every image offloaded, routed by the generalist's top-1 (here: the truth's expert)
    gen = np.eye(4)[[0, 1, 3, 2]] * 0.1  # nearly uniform: below any tau
    policy = RoutingPolicy(tau=0.9, k=1)
    m = system_metrics(gen, y, restricted.membership(4), restricted.test, policy)
    assert m.offload_rate == 100.0 and m.accuracy == 75.0


def test_oracle_routing_sends_each_offloaded_image_to_an_expert_holding_its_class():
    membership = np.array([[1, 1, 0, 0], [0, 0, 1, 1]], dtype=np.float32)
    y = np.array([0, 3, 2, 1])
    assert oracle_experts(y, membership, np.array([True, True, False, True])).tolist() == [0, 1, -1, 0]
    # the generalist's top-1 points every image at the wrong expert; each expert knows its own classes
    gen = np.array([[0.0, 0.0, 0.3, 0.0], [0.3, 0.0, 0.0, 0.0], [0.0, 0.3, 0.0, 0.0], [0.0, 0.0, 0.0, 0.3]])
    answers = ExpertAnswers(np.array([[0, 0, 0, 1], [2, 3, 2, 2]]), np.ones((2, 4), dtype=np.float32))
    policy = RoutingPolicy(tau=0.9, k=1)
    routed = system_metrics(gen, y, membership, answers, policy)
    oracle = system_metrics(gen, y, membership, answers, policy, oracle=True)
    assert routed.routing_hit_rate == 0.0 and oracle.routing_hit_rate == 100.0
    assert oracle.accuracy == 100.0 and oracle.offload_rate == routed.offload_rate == 100.0


def _isolated(n=10, lone=9):
    """A confusion matrix in which one class is confused with nothing."""
    confusion = torch.eye(n) * 50
    for i in range(n):
        for j in range(n):
            if i != j and lone not in (i, j):
                confusion[i, j] = 1 + ((i + j) % 3)
    return confusion


def test_min_size_keeps_one_class_experts_out_unless_asked_for():
    names = [f"c{i}" for i in range(10)]
    confusion = _isolated()
    alone = partition_from_confusion(confusion, names, 3, min_size=1)
    assert [9] in alone.experts  # the isolated class stays alone when allowed to
    part = partition_from_confusion(confusion, names, 3)  # default: 2
    assert min(len(g) for g in part.experts) >= 2 and part.details["min_size"] == 2
    assert sorted(c for g in part.experts for c in g) == list(range(10))
    four = partition_from_confusion(confusion, names, 3, min_size=3, max_size=4)
    assert sorted(len(g) for g in four.experts) == [3, 3, 4]
    with pytest.raises(ConfigError, match="at least 4 classes"):
        agglomerate(confusion, 3, 5, 4)


def test_min_size_on_the_command_line(tmp_path, tiny_system, capsys):
    from askexpert.cli import main

    gen = tmp_path / "gen"
    shutil.copytree(tiny_system["generalist"], gen)
    for size in (1, 3):
        out = tmp_path / f"p{size}.json"
        assert main(["partition", str(gen), "--num-experts", "3", "--min-size", str(size), "--out", str(out)]) == 0
        groups = json.loads(out.read_text())["experts"]
        assert min(len(g) for g in groups) >= size
    capsys.readouterr()
    assert main(["partition", str(gen), "--num-experts", "4", "--min-size", "3"]) == 2
    assert "fix:" in capsys.readouterr().err


@pytest.fixture(scope="module")
def scratch_runs(tmp_path_factory, tiny_system):
    """Static, static-other and progressive experts (an all-class stage, then narrowing with LwF) from the
    same random weights at the same budget, on the tiny system's data and partition."""
    out = tmp_path_factory.mktemp("scratch")
    general = out / "general"
    shutil.copytree(tiny_system["general"], general)
    stages = ("[{fraction: 0.34, labels: all}, {fraction: 0.33, out_share: 0.3, lwf: 0.3, lr_scale: 0.5}, "
              "{fraction: 0.33, out_share: 0.1, lwf: 0.3}]")
    runs = {}
    for strategy in ("static", "static-other", "progressive"):
        overrides = [f"output_dir={out}", f"name={strategy}", f"experts.strategy={strategy}",
                     "experts.init_from=scratch", "experts.init_seed=7", f"experts.init={general}",
                     f"experts.partition={tiny_system['partition']}", "experts.passes=3", "train.lr=0.003",
                     "data.train_subset=600"]  # the same validation and test images, fewer to train on
        if strategy == "progressive":
            overrides.append(f"experts.stages={stages}")
        from askexpert.training.experts import experts_run_config

        cfg = experts_run_config(None, overrides, base={"experts": {}})
        runs[strategy] = (cfg, train_experts(cfg))
    return general, runs


@pytest.mark.slow
def test_strategies_start_from_identical_weights_at_equal_steps_and_images(scratch_runs):
    general, runs = scratch_runs
    cfg = runs["static"][0]
    ckpt = load_checkpoint(general)
    first = starting_model(cfg.experts, cfg, ckpt, _bundle(cfg, ckpt))
    again = starting_model(cfg.experts, cfg, ckpt, _bundle(cfg, ckpt))
    assert all(torch.equal(a, b) for a, b in zip(first.model.state_dict().values(),
                                                 again.model.state_dict().values(), strict=True))
    assert first.sha256 == weights_sha256(again.model)
    assert not torch.equal(first.model.get_classifier().weight, ckpt.model.get_classifier().weight)  # not trained
    summaries = {s: json.loads((r.run_dir / "experts.json").read_text()) for s, (_, r) in runs.items()}
    assert {s["init_sha256"] for s in summaries.values()} == {first.sha256}
    budgets = {s: [(e["budget"]["steps"], e["budget"]["images"]) for e in m["experts"]] for s, m in summaries.items()}
    assert budgets["static"] == budgets["static-other"] == budgets["progressive"]
    for e in summaries["progressive"]["experts"]:
        b = e["budget"]
        per_epoch = b["images"] // b["passes"]
        assert b["wide_images"] == per_epoch  # one of the three passes on every class with its true label
        assert b["teacher_images"] == 2 * per_epoch  # the two LwF passes forward the earlier model once an image
        assert e["init_from"] == "scratch" and e["init_sha256"] == first.sha256
    for e in summaries["static"]["experts"]:
        assert e["budget"]["wide_images"] == 0 and e["budget"]["teacher_images"] == 0


@pytest.mark.slow
def test_a_progressive_expert_trains_every_class_first_then_its_subset(scratch_runs):
    _, runs = scratch_runs
    run_dir = runs["progressive"][1].run_dir
    wide = [json.loads(line) for line in (run_dir / "expert-0" / "all-classes" / "metrics.jsonl").open()]
    narrow = [json.loads(line) for line in (run_dir / "expert-0" / "metrics.jsonl").open()]
    assert [r["epoch"] for r in wide] == [1] and wide[0]["labels"] == "all"
    assert [r["epoch"] for r in narrow] == [2, 3] and {r["labels"] for r in narrow} == {"subset"}
    assert narrow[0]["lr_scale"] == 0.5
    steps = runs["progressive"][1].experts[0].budget.steps // 3
    assert [r["step"] for r in wide + narrow] == [steps, 2 * steps, 3 * steps]  # one schedule over all three
    ckpt = load_checkpoint(run_dir / "expert-0")
    assert ckpt.model.get_classifier().out_features == len(ckpt.meta.extra["subset"]) + 1


def _bundle(cfg: RunConfig, ckpt):
    from askexpert.data import load_dataset

    return load_dataset(cfg.data, image_size=ckpt.meta.model.input.size, channels=ckpt.meta.model.input.channels)


def test_pretrained_start_reads_the_weights_file(tmp_path, tiny_system):
    import safetensors.torch

    ckpt = load_checkpoint(tiny_system["general"])
    torch.manual_seed(3)
    from askexpert.models import build_model

    source = build_model(ckpt.meta.model)
    weights = tmp_path / "pretrained.safetensors"
    safetensors.torch.save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(weights))
    cfg = load_run_config(None, [f"model.pretrained_file={weights}", "experts.init_from=pretrained",
                                 f"experts.init={tiny_system['general']}", "data.train_subset=2000",
                                 "data.val_subset=600", "data.test_subset=600"], base={"experts": {}})
    start = starting_model(cfg.experts, cfg, ckpt, _bundle(cfg, ckpt))
    assert start.sha256 == weights_sha256(source) and "pretrained" in start.source


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_specialists_benchmark_smoke_profile(tmp_path):
    """The benchmark end to end on a few hundred images: screens, the seed, the summary and its plot."""
    results = tmp_path / "results"
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "specialists.py"), "--profile", "smoke",
                          "--seeds", "0", "--sweep", "--output-dir", str(tmp_path / "runs"), "--results",
                          str(results)], capture_output=True, text=True, cwd=ROOT, timeout=580)
    assert run.returncode == 0, run.stderr[-3000:]
    seed = json.loads((results / "smoke-seed0.json").read_text())
    assert set(seed["recipes"]) == {"original", "static", "static-other", "progressive"}
    scratch = [seed["recipes"][r] for r in ("static", "static-other", "progressive")]
    assert len({tuple(r["init_sha256"]) for r in scratch}) == 1  # one start for the three recipes
    assert len({json.dumps([(b["steps"], b["images"]) for b in r["budget"]]) for r in scratch}) == 1
    assert seed["recipes"]["original"]["init_sha256"] != scratch[0]["init_sha256"]
    screen = json.loads((results / "smoke-screen.json").read_text())
    assert screen["chosen"] in screen["variants_val_subset"] and seed["progressive_variant"] == screen["chosen"]
    summary = json.loads((results / "summary.json").read_text())
    regime = summary["regimes"]["smoke"]
    assert regime["seeds"] == [0] and set(regime["recipes"]) == set(seed["recipes"])
    p = regime["paired"]["progressive_minus_static_subset"]
    assert p["mean"] == pytest.approx(seed["recipes"]["progressive"]["subset_accuracy_test_mean"]
                                      - seed["recipes"]["static"]["subset_accuracy_test_mean"])
    curve = summary["screens"]["smoke"]["curve_val_subset"]
    assert set(curve) == {"static", "static-other", "progressive"} and all(len(v) == 2 for v in curve.values())
    assert (results / "budget.png").stat().st_size > 10_000 and "progressive - static" in run.stdout


def test_subset_accuracy_is_reported_with_and_without_other():
    from askexpert.training.evaluate import subset_metrics

    # expert over classes {0, 1} (+ "other" at index 2): four subset images, two outside
    logits = torch.tensor([[3.0, 1.0, 0.0], [0.0, 1.0, 5.0], [1.0, 2.0, 0.0], [2.0, 1.0, 4.0],
                           [0.0, 0.0, 3.0], [2.0, 0.0, 1.0]])
    targets = torch.tensor([0, 1, 1, 0, 2, 2])
    m = subset_metrics(logits, targets, 2)
    assert m.subset_accuracy == 50.0  # two "other" answers to its own images count as errors
    assert m.subset_accuracy_no_other == 100.0  # the argmax over its classes alone names all four
    assert m.other_recall == 50.0
    answers = ExpertAnswers.from_logits([logits.numpy()], [[0, 1]])
    labels = np.array([0, 1, 1, 0, 5, 6])
    assert subset_accuracies(answers, [[0, 1]], labels) == [50.0]
    assert subset_accuracies(answers, [[0, 1]], labels, other=False) == [100.0]


def test_a_random_partition_deals_equal_groups_from_its_seed():
    from askexpert.training.partition import partition_from_random

    names = [f"c{i}" for i in range(100)]
    a, b = partition_from_random(names, 4, seed=3), partition_from_random(names, 4, seed=3)
    assert a.experts == b.experts and [len(g) for g in a.experts] == [25] * 4
    assert sorted(c for g in a.experts for c in g) == list(range(100))
    assert partition_from_random(names, 4, seed=4).experts != a.experts
    with pytest.raises(ConfigError, match="at least"):
        partition_from_random(names[:5], 4, min_size=2)


@pytest.mark.slow
def test_a_kept_head_trains_every_stage_in_one_run_of_the_loop(tmp_path, tiny_system):
    """experts.head: collapse: no head surgery, one optimiser and one schedule over all the stages, validation
    only where the targets are the subset's, and the same budget as a static expert."""
    from askexpert.models.collapse import head_of
    from askexpert.training.experts import experts_run_config

    general = tmp_path / "general"
    shutil.copytree(tiny_system["general"], general)
    runs = {}
    for strategy in ("static", "progressive"):
        overrides = [f"output_dir={tmp_path}", f"name={strategy}", f"experts.strategy={strategy}",
                     "experts.init_from=scratch", f"experts.init={general}", "experts.head=collapse",
                     f"experts.partition={tiny_system['partition']}", "experts.passes=3", "train.lr=0.003",
                     "data.train_subset=600",
                     "experts.stages=[{fraction: 0.34, labels: all}, {fraction: 0.33, out_share: 0.3}, "
                     "{fraction: 0.33, out_share: 0.1}]"]
        runs[strategy] = train_experts(experts_run_config(None, overrides, base={"experts": {}}))
    expert = runs["progressive"].run_dir / "expert-0"
    assert not (expert / "all-classes").exists()
    records = [json.loads(line) for line in (expert / "metrics.jsonl").open()]
    assert [r["labels"] for r in records] == ["all", "subset", "subset"]
    assert "val_acc" not in records[0] and all("val_acc" in r for r in records[1:])
    steps = runs["progressive"].experts[0].budget.steps // 3
    assert [r["step"] for r in records] == [steps, 2 * steps, 3 * steps]
    assert [(s.budget.steps, s.budget.images) for s in runs["static"].experts] == \
        [(s.budget.steps, s.budget.images) for s in runs["progressive"].experts]
    ckpt = load_checkpoint(expert)
    subset = ckpt.meta.extra["subset"]
    head = head_of(ckpt.model)
    assert head is not None and not head.wide and ckpt.meta.model.timm_name == "askexpert_collapsed"
    x = torch.randn(4, 1, 28, 28)
    out = ckpt.model.eval()(x)
    assert out.shape == (4, len(subset) + 1)
    head.wide = True
    full = ckpt.model(x)
    rest = [c for c in range(10) if c not in subset]
    assert torch.allclose(out, collapse_logits(full, torch.tensor(subset), torch.tensor(rest)), atol=1e-4)


def test_the_reviewed_recipes_regime_summarises_like_the_others(tmp_path):
    """``--regime 500fix --summary`` reads the seed files present (none here: the message names the run
    to make), instead of looking the regime up among the first recipe's."""
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "specialists.py"), "--regime", "500fix",
                          "--summary", "--results", str(tmp_path)], capture_output=True, text=True, cwd=ROOT,
                         timeout=120)
    assert run.returncode != 0 and "KeyError" not in run.stderr
    assert "no seed results in" in run.stderr and "run without --summary first" in run.stderr

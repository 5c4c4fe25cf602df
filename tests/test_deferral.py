"""The learned deferral rule (routing.deferral): it beats max-prob where confidence and the expert's
correctness disagree, the oracle on a hand example, the policy's refusals and its round trip through the
bundle's schema, and one row routed alone as in a batch."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from askexpert.contract.schema import DeferralSpec, OperatingPoint, RoutingSpec
from askexpert.routing import ALL, ExpertAnswers, Router, RoutingPolicy, finalize, membership_matrix
from askexpert.routing.deferral import DeferralModel, fit_deferral, gains, oracle_accuracy
from askexpert.routing.thresholds import tau_for_offload

SUBSETS = [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]


def _stream(n: int, seed: int):
    """A generalist whose calibrated confidence says how often it is right, and two experts: expert 1 right on
    95% of its classes' images, expert 0 on 20%, whatever the generalist's confidence. The gain of an offload
    depends on the expert the image is routed to, which max-prob cannot see."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, n)
    c = rng.uniform(0.25, 0.95, n)
    right = rng.random(n) < c
    top = np.where(right, y, (y + rng.integers(1, 10, n)) % 10)
    p = np.tile(((1 - c) * 0.4 / 8)[:, None], (1, 10))
    second = np.where(right, (y + 1 + rng.integers(0, 4, n)) % 10, y)  # a wrong generalist has the truth second
    p[np.arange(n), second] = (1 - c) * 0.6
    p[np.arange(n), top] = c
    logits = np.log(p / p.sum(1, keepdims=True)).astype(np.float32)
    pred = np.empty((2, n), dtype=np.int64)
    for e, (subset, skill) in enumerate(zip(SUBSETS, (0.2, 0.95), strict=True)):
        pick = rng.integers(0, 5, n)
        wrong = np.array(subset)[np.where(np.array(subset)[pick] == y, (pick + 1) % 5, pick)]  # never the truth
        pred[e] = np.where(np.isin(y, subset) & (rng.random(n) < skill), y, wrong)
    answers = ExpertAnswers(pred, np.full((2, n), 0.9, dtype=np.float32))
    return logits, y, answers


def _outcomes(router: Router, logits, y, answers):
    everything = router.with_policy(replace(router.policy, tau=ALL))
    d = everything.route(logits)
    final, _ = finalize(d, *answers.for_route(d.expert), everything.policy)
    return d.local_pred == y, final == y


def _accuracy(router: Router, logits, y, answers, tau: float) -> float:
    policy = replace(router.policy, tau=tau)
    d = router.with_policy(policy).route(logits)
    final, _ = finalize(d, *answers.for_route(d.expert), policy)
    return float((final == y).mean() * 100)


def test_the_learned_rule_beats_max_prob_where_confidence_and_the_expert_disagree():
    membership = membership_matrix(SUBSETS, 10)
    val, test = _stream(4000, seed=0), _stream(4000, seed=1)
    plain = Router(RoutingPolicy(tau=ALL, k=3), membership)
    local, remote = _outcomes(plain, *val)
    rule = fit_deferral(plain.deferral_inputs(val[0]), gains(local, remote), num_experts=2, num_classes=10, k=3)
    learned = Router(RoutingPolicy(tau=ALL, k=3, confidence="learned", deferral=rule), membership)
    at = {}
    for name, router in (("max-prob", plain), ("learned", learned)):
        tau = tau_for_offload(router.route(val[0]).confidence, 0.3)
        offloaded = router.with_policy(replace(router.policy, tau=tau)).route(test[0]).offload.mean()
        assert abs(offloaded - 0.3) < 0.03  # the same share on test as chosen on validation
        at[name] = _accuracy(router, *test, tau)
    t_local, t_remote = _outcomes(plain, *test)
    oracle = oracle_accuracy(t_local, t_remote, 0.3)
    # max-prob sends expert 0 as many images as expert 1; the learned rule sends expert 1 its images
    assert at["learned"] >= at["max-prob"] + 3, at
    assert oracle >= at["learned"]


def test_the_oracle_offloads_gains_first_then_what_changes_nothing():
    local = [1, 0, 0, 1, 1]
    remote = [0, 1, 0, 1, 1]  # gains -1, +1, 0, 0, 0
    assert gains(local, remote).tolist() == [-1, 1, 0, 0, 0]
    assert oracle_accuracy(local, remote, 0.0) == 60.0
    assert oracle_accuracy(local, remote, 0.2) == 80.0  # the one gain
    assert oracle_accuracy(local, remote, 0.8) == 80.0  # then the images where nothing changes
    assert oracle_accuracy(local, remote, 1.0) == 60.0  # and last the one loss


def _rule(seed: int = 0) -> DeferralModel:
    logits, y, answers = _stream(400, seed)
    plain = Router(RoutingPolicy(tau=ALL, k=3), membership_matrix(SUBSETS, 10))
    return fit_deferral(plain.deferral_inputs(logits), gains(*_outcomes(plain, logits, y, answers)), num_experts=2,
                        num_classes=10, k=3)


def test_one_row_routes_as_in_a_batch_and_the_rule_survives_the_bundle_schema():
    rule = _rule()
    spec = RoutingSpec(temperature=1.0, tau=0.5, k=3, confidence="learned",
                       operating_point=OperatingPoint(target="offload", value=0.3, val_offload_rate=30.0,
                                                      val_accuracy=80.0),
                       deferral=DeferralSpec(**rule.to_dict(), fitted_on=400))
    again = RoutingSpec.model_validate_json(spec.model_dump_json())
    policy = RoutingPolicy.from_spec(again)
    assert policy.deferral == rule and policy.confidence == "learned"
    router = Router(policy, membership_matrix(SUBSETS, 10))
    logits = _stream(50, seed=3)[0]
    batch = router.route(logits)
    for i in range(len(logits)):
        one = router.route(logits[i:i + 1])
        assert one.offload[0] == batch.offload[i] and one.expert[0] == batch.expert[i]
        assert one.confidence[0] == batch.confidence[i]
    assert 0 < batch.offload.sum() < len(logits)
    # another confidence rule in its place drops the learned one; another k is refused
    assert RoutingPolicy.from_spec(again, confidence="max-prob").deferral is None
    with pytest.raises(ValueError, match="fitted at k 3, not k 2"):
        RoutingPolicy.from_spec(again, k=2)


def test_a_learned_policy_needs_its_rule_and_the_right_system():
    with pytest.raises(ValueError, match="go together"):
        RoutingPolicy(tau=0.5, confidence="learned")
    with pytest.raises(ValueError, match="go together"):
        RoutingPolicy(tau=0.5, deferral=_rule())
    with pytest.raises(ValueError, match="fitted for 2 experts over 10 classes"):
        three = membership_matrix([[0, 1], [2, 3], [4, 5, 6, 7, 8, 9]], 10)
        Router(RoutingPolicy(tau=0.5, confidence="learned", deferral=_rule()), three)
    base = RoutingSpec(temperature=1.0, tau=0.5, k=3, operating_point=OperatingPoint(
        target="offload", value=0.3, val_offload_rate=30.0, val_accuracy=80.0))
    with pytest.raises(ValueError, match="needs its fitted rule"):
        RoutingSpec.model_validate({**base.model_dump(), "confidence": "learned"})
    d = _rule().to_dict()
    with pytest.raises(ValueError, match="other shapes"):
        DeferralModel.from_dict({**d, "weights": d["weights"][:-1]})


def test_the_benchmark_scores_every_rule_on_the_same_images_and_pairs_the_seeds(tiny_system, monkeypatch):
    """benchmarks/deferral.py on a real system: every rule at every share on test with tau from validation,
    the oracle row as computed by hand from the routed outcomes; the summary's paired differences."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import deferral as bench

    from askexpert.models import open_checkpoint
    from askexpert.models.runs import open_expert_run
    from askexpert.system.calibrate import load_experts, outputs_of, routed_outcomes
    from askexpert_lab.bench.machine import machine_info

    result = bench.evaluate(tiny_system["generalist"], tiny_system["experts"])
    assert result["test_images"] == 600 and result["val_images"] == 600
    for share in bench.SHARES:
        for rule in bench.RULES:
            row = bench.at(result, rule, share)
            assert abs(row["offload_rate"] - share * 100) < 8  # tau from validation, applied to test
    gen = outputs_of(open_checkpoint(tiny_system["generalist"]), "the generalist")
    experts = load_experts(open_expert_run(tiny_system["experts"]), "static", gen)
    local, remote = routed_outcomes(gen, experts, RoutingPolicy(tau=ALL, k=3, temperature=result["temperature"]),
                                    "test")
    assert bench.at(result, "oracle", 0.3)["accuracy"] == oracle_accuracy(local, remote, 0.3)
    assert result["generalist_test"] == pytest.approx(local.mean() * 100)
    # two seeds: the second the first with the learned rule one point better at 30%
    second = json.loads(json.dumps(result))
    bench.at(second, "learned", 0.3)["accuracy"] += 1.0
    machine = machine_info()
    summary = bench.summarise({0: {**result, "machine": machine}, 1: {**second, "machine": machine}})
    diff = summary["at_30"]["learned - max-prob"]
    first = bench.at(result, "learned", 0.3)["accuracy"] - bench.at(result, "max-prob", 0.3)["accuracy"]
    assert diff["per_seed"] == pytest.approx([first, first + 1.0]) and diff["ci95"] is not None
    assert len(summary["curves"]["oracle"]) == len(bench.SHARES)


@pytest.mark.timeout(300)
def test_accuracy_held_online_runs_live_as_the_benchmark_replays_it(tiny_system, bundle_server, tmp_path, capsys,
                                                                    monkeypatch):
    """`askexpert edge --target-accuracy` over HTTP on drifted images, one at a time: the probes go to their
    expert and count as offloads, every answered offload gives the expert's probability for the generalist's answer,
    the summary sets the estimate beside the true kept accuracy, and the benchmark's in-process edge (the
    server's expert pool called directly) takes every decision the live edge took."""
    from askexpert.cli import main
    from askexpert.corruptions import parse_corruption
    from askexpert.runtime.control import AccuracyKeeper
    from askexpert.runtime.edge import Route

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import deferral_drift as bench

    images, labels = bench.stream(tiny_system["bundle"], "test", None, n=600)
    np.savez(tmp_path / "test.npz", images=images, labels=labels)
    trace = tmp_path / "trace.jsonl"
    assert main(["edge", str(tiny_system["bundle"]), "--server", bundle_server, "--input", str(tmp_path / "test.npz"),
                 "--corrupt", "gaussian_noise:5@300", "--target-accuracy", "0.8", "--probe", "0.2",
                 "--trace", str(trace), "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "kept accuracy by window: estimated / true %" in out and "kept accuracy >= 80% - 2 points" in out
    live = [json.loads(line) for line in trace.read_text().splitlines()]
    probes = [t for t in live if t["probe"]]
    assert probes and all(t["route"] in ("expert", "expert-fallback") for t in probes)
    answered = [t for t in live if t["route"] in ("expert", "expert-fallback")]
    assert all(t["expert_backs"] is None for t in live if t["route"] == "local")
    assert all(0 <= t["expert_backs"] <= 1 for t in answered if t["expert_backs"] is not None)
    assert sum(t["expert_backs"] is not None for t in answered) > len(answered) / 2
    assert all(0 < t["top_prob"] <= 1 for t in live)

    edge = bench.Edge(tiny_system["bundle"])
    keeper = AccuracyKeeper(0.8, edge.system.policy.tau, probe=0.2)
    mine = edge.run(parse_corruption("gaussian_noise:5@300").apply(images), labels, controller=keeper)
    assert [(t.route.value, t.probe, t.tau, t.pred, t.expert_backs) for t in mine] == [
        (t["route"], t["probe"], t["tau"], t["pred"], t["expert_backs"]) for t in live]
    assert len(keeper.changes) > 1  # tau moved
    # the benchmark's replay over every image's answers takes the same decisions
    from askexpert.routing.thresholds import ALL

    answers = bench.Answers.of(edge.run(parse_corruption("gaussian_noise:5@300").apply(images), labels, tau=ALL))
    replayed = bench.replay(answers, controller=AccuracyKeeper(0.8, edge.system.policy.tau, probe=0.2))
    assert replayed["kept"].tolist() == [t.route is Route.LOCAL for t in mine]
    assert replayed["probe"].tolist() == [t.probe for t in mine]
    assert replayed["right"].tolist() == [t.pred == t.label for t in mine]
    kept = [t.pred == t.label for t in mine[:500] if t.route is Route.LOCAL]
    assert f"/ {100 * np.mean(kept):.1f}" in out  # the true kept accuracy of the one 500-image window

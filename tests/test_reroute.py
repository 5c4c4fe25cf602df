"""Re-routing on the server (contract.reroute): the rule, its simulation offline, and the live system over
HTTP giving, image by image, what the offline evaluation computes."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest

from askexpert.cli import main
from askexpert.contract.bundle import open_system
from askexpert.contract.labels import GENERAL, OTHER
from askexpert.contract.reroute import Reroute, RerouteError, parse_next, settle
from askexpert.contract.schema import SCHEMA_VERSION
from askexpert.routing import RoutingPolicy, finalize, membership_matrix, route
from askexpert.routing.metrics import ExpertAnswers, rerouted_answers, system_metrics


def test_the_rule_asks_in_order_stops_at_its_cap_and_settles_on_the_first_sure_answer():
    rule = Reroute(tries=3, to="next", below=0.5)
    assert rule.chain("2", ["2", "0", "1", "3"]) == ["2", "0", "1"]  # the routed one first, at most 3
    assert Reroute(2, "general").chain("1", ["0", "2"]) == ["1", GENERAL]
    assert not Reroute(1).active and Reroute(1).chain("0", ["1"]) == ["0"]
    assert settle(rule, [(OTHER, 0.9), (4, 0.4), (7, 0.8)]) == 2  # the first neither "other" nor unsure
    assert settle(rule, [(OTHER, 0.9), (4, 0.4), (7, 0.3)]) == 1  # none sure: the most confident answer
    assert settle(rule, [(OTHER, 0.9), (OTHER, 0.8)]) == 1  # all "other": "other"
    assert parse_next("2,0") == ["2", "0"] and parse_next("") == []
    for bad, match in ((dict(tries=0), "cap of 0 tries.*at least 1.*fix: --reroute-tries"),
                       (dict(tries=2, below=1.5), "confidence is in \\[0, 1\\]"),
                       (dict(tries=2, to="elsewhere"), "fix: --reroute next or --reroute general")):
        with pytest.raises(RerouteError, match=match):
            Reroute(**bad)
    with pytest.raises(RerouteError, match="comma-separated expert ids"):
        parse_next("1,,2")


def test_the_offline_simulation_follows_the_ranking_and_counts_coverage():
    """Three experts over six classes; the generalist's top class is in expert 0, its second in expert 2:
    the ranking is 0, 2, 1. Expert 0 says "other", expert 2 answers: two calls, the answer expert 2's."""
    subsets = [[0, 1], [2, 3], [4, 5]]
    member = membership_matrix(subsets, 6)
    logits = np.log(np.array([[0.5, 0.05, 0.05, 0.05, 0.3, 0.05],  # routed to 0, then 2
                              [0.05, 0.05, 0.6, 0.2, 0.05, 0.05]], dtype=np.float32))  # routed to 1, which answers
    labels = np.array([4, 2])
    answers = ExpertAnswers(pred=np.array([[OTHER, 0], [3, 2], [4, 5]]),
                            conf=np.array([[0.9, 0.6], [0.7, 0.95], [0.8, 0.7]], dtype=np.float32))
    policy = RoutingPolicy(tau=1.1, k=3, reroute=Reroute(3, "next"))  # everything offloaded
    d = route(logits, policy, member)
    assert d.expert.tolist() == [0, 1] and d.ranking[0].tolist() == [0, 2, 1]
    r = rerouted_answers(answers, None, d, policy.reroute, labels, member)
    assert r.pred.tolist() == [4, 2] and r.calls.tolist() == [2, 1] and r.covered.tolist() == [True, True]
    capped = rerouted_answers(answers, None, d, Reroute(1, "next"), labels, member)
    assert capped.pred.tolist() == [OTHER, 2] and capped.calls.tolist() == [1, 1]
    m = system_metrics(logits, labels, member, answers, policy)
    plain = system_metrics(logits, labels, member, answers, RoutingPolicy(tau=1.1, k=3))
    assert (m.accuracy, m.coverage, m.expert_calls_per_offload) == (100.0, 100.0, 1.5)
    assert (plain.accuracy, plain.coverage, plain.expert_calls_per_offload) == (50.0, 50.0, 1.0)


def _answers_far_from(conf: np.ndarray) -> float:
    """A re-routing confidence in [0.5, 0.95] as far as can be from every expert confidence (a test whose
    outcome no last-bit difference between torch and NumPy can flip)."""
    grid = np.linspace(0.5, 0.95, 451)
    gaps = np.abs(grid[:, None] - conf.reshape(-1)[None, :]).min(1)
    return float(round(grid[gaps.argmax()], 3))


def _offline(tiny_system, bundle, general: bool):
    """The offline evaluation's answers on the bundle's test images under the bundle's routing."""
    from askexpert.models import open_checkpoint
    from askexpert.models.runs import open_expert_run
    from askexpert.routing import fit_temperature
    from askexpert.system.calibrate import general_as_expert, load_experts, outputs_of

    gen = outputs_of(open_checkpoint(tiny_system["generalist"]), "the generalist")
    experts = load_experts(open_expert_run(tiny_system["experts"]), "static", gen)
    general_set = None
    if general:
        out = outputs_of(open_checkpoint(tiny_system["general"]), "the general model")
        general_set = general_as_expert(out, fit_temperature(out.val_logits, out.val_labels), 10)
    policy = RoutingPolicy.from_spec(bundle.manifest.routing)
    member = membership_matrix(experts.subsets, 10)
    d = route(gen.test_logits, policy, member)
    r = rerouted_answers(experts.test, None if general_set is None else general_set.test, d, policy.reroute,
                         gen.test_labels, member)
    final, _ = finalize(d, r.pred, r.conf, policy)
    confidences = experts.test.conf.reshape(-1)
    if general_set is not None:
        confidences = np.concatenate([confidences, general_set.test.conf.reshape(-1)])
    return policy, d, r, final, gen.test_labels, confidences


@pytest.mark.timeout(400)
@pytest.mark.parametrize("to", ["next", "general"])
def test_a_rerouting_bundle_answers_live_as_offline(tiny_system, tmp_path, capsys, to):
    """build-system --reroute: the rule travels in system.json; a real server re-asks within the request, the
    edge streams images one at a time over HTTP, and every answer, every count of experts asked and every
    answering expert equals the offline simulation's; the server counts its re-routes."""
    from test_bundle import _test_npz

    from askexpert.runtime.clients import HttpExpertClient
    from askexpert.runtime.edge import EdgeRunner, ExpertTarget, summarize
    from askexpert.runtime.onnx_model import OnnxGeneralist
    from askexpert_lab.testbed.server import ServerProcess

    probe = tmp_path / "probe"
    assert main(["build-system", "--server", "experts",
                 str(tiny_system["generalist"]), str(tiny_system["experts"]), "--out", str(probe),
                 "--reroute", to, "--reroute-tries", "3"]) == 0
    out = capsys.readouterr().out
    assert "re-routing" in out and "expert calls an offload" in out
    *_, confidences = _offline(tiny_system, open_system(probe), to == "general")
    below = _answers_far_from(confidences)
    system = tmp_path / "system"
    assert main(["build-system", "--server", "experts",
                 str(tiny_system["generalist"]), str(tiny_system["experts"]), "--out", str(system),
                 "--reroute", to, "--reroute-tries", "3", "--reroute-below", str(below)]) == 0
    bundle = open_system(system)
    spec = bundle.manifest.routing.reroute
    assert (spec.tries, spec.to, spec.below) == (3, to, below) and bundle.manifest.schema_version == SCHEMA_VERSION
    policy, d, r, final, labels, _ = _offline(tiny_system, bundle, to == "general")
    n = 300
    images = np.load(_test_npz(tiny_system, tmp_path / "t.npz", n))["images"]
    targets = [ExpertTarget(e.id, list(e.classes)) for e in bundle.manifest.experts]
    with ServerProcess(system, threads=1) as url, HttpExpertClient(url) as client:
        runner = EdgeRunner(OnnxGeneralist(bundle.generalist_onnx, threads=1), policy, client, targets)
        traces = list(runner.run((images[i:i + 1], labels[i:i + 1]) for i in range(n)))
        metrics = httpx.get(f"{url}/metrics").text
        # a request whose ranking is not one is refused with the fix
        bad = httpx.post(f"{url}/v1/experts/0/infer?next=1,,2", content=images[:1].tobytes(),
                         headers={"Content-Type": "application/octet-stream", "X-Shape": "1,1,28,28"})
    assert bad.status_code == 422 and "fix:" in bad.json()["detail"]
    off = d.offload[:n]
    assert [t.route.offloaded for t in traces] == off.tolist()
    live = np.array([t.pred for t in traces])
    assert np.array_equal(live, final[:n]), f"{int((live != final[:n]).sum())} of {n} answers differ"
    calls = np.array([t.tries for t in traces])
    assert np.array_equal(calls[off], r.calls[:n][off]) and calls.max() <= 3  # the cap holds
    rerouted = sum(t.answered_by != t.expert for t in traces if t.route.offloaded)
    assert rerouted > 0 and (calls[off] > 1).sum() >= rerouted  # it did act, and only by asking again
    ids = [e.id for e in bundle.manifest.experts]
    for t, rank in zip(traces, d.ranking[:n], strict=True):
        if t.route.offloaded and t.tries > 1 and to == "next":
            assert t.answered_by in [ids[j] for j in rank[: t.tries]]  # in the ranking's order
        if t.route.offloaded and t.tries > 1 and to == "general":
            assert t.tries == 2 and t.answered_by in (t.expert, GENERAL)
    summary = summarize(traces)
    assert summary.expert_calls_per_offload > 1 and summary.rerouted == rerouted
    assert "askexpert_reroutes_total" in metrics


def test_build_system_refuses_a_reroute_cap_below_one(tiny_system, tmp_path, capsys):
    code = main(["build-system", "--server", "experts",
                 str(tiny_system["generalist"]), str(tiny_system["experts"]), "--out",
                 str(tmp_path / "s"), "--reroute", "next", "--reroute-tries", "0"])
    err = capsys.readouterr().err
    assert code == 2 and "at least 1" in err and "fix: --reroute-tries" in err
    assert not (tmp_path / "s").exists() or not any((tmp_path / "s").iterdir())


def test_every_routing_variant_is_measured_and_re_routing_only_adds_coverage(tiny_system):
    """The routing study on the tiny system: every variant at the same offload share; re-routing asks the
    routed expert first and more after it, so its coverage is never under top-k's, and it costs calls."""
    from askexpert_lab.bench.routing import routing_variants

    rows = {r.variant: r for r in routing_variants(tiny_system["generalist"], tiny_system["general"],
                                                   {"static": tiny_system["experts"]})}
    assert {"top-3", "whole mass", "re-route next x2", "re-route next x3", "re-route general",
            "learned deferral"} <= set(rows)
    top = rows["top-3"]
    assert top.expert_calls_per_offload == 1 and top.reroute is None
    for name in ("re-route next x2", "re-route next x3", "re-route general"):
        r = rows[name]
        assert r.test_offload_rate == top.test_offload_rate  # the same images offloaded
        assert r.coverage >= top.coverage and 1 <= r.expert_calls_per_offload <= r.reroute["tries"]
        assert r.up_bytes == top.up_bytes and r.down_bytes > top.down_bytes  # the tries travel back, nothing up


def _synthetic(right: str):
    """A system known by construction: 200 images of 4 classes, the generalist unsure of all of them, two
    experts of two classes each, and a general model; ``right`` names which of the two answers every image
    correctly (the other answers a wrong class of its own every time)."""
    from askexpert.system.calibrate import ExpertSet, Outputs

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 200)
    logits = rng.normal(0, 0.01, (200, 4)).astype(np.float32)
    logits[np.arange(200), labels] += 0.3  # the generalist is right, barely sure (its mass in the right expert)
    logits[np.arange(200), labels ^ 1] += 0.25
    gen = Outputs("g", Path("g"), logits, labels, logits, labels, {})
    subsets = [[0, 1], [2, 3]]
    good = np.stack([np.where(np.isin(labels, s), labels, OTHER) for s in subsets])
    bad = np.stack([np.where(np.isin(labels, s), s[0] + s[1] - labels, OTHER) for s in subsets])  # its other class
    conf = np.full((2, 200), 0.9, dtype=np.float32)
    expert_answers = ExpertAnswers(good if right == "experts" else bad, conf)
    general_pred = labels if right == "general" else (labels + 1) % 4
    general_answers = ExpertAnswers(general_pred[None], conf[:1])
    experts = ExpertSet("experts", subsets, [1.0, 1.0], expert_answers, expert_answers, [])
    general = ExpertSet("general", [[0, 1, 2, 3]], [1.0], general_answers, general_answers, [])
    return gen, experts, general


@pytest.mark.parametrize("right", ["experts", "general"])
def test_the_server_design_follows_the_validation_figures(right):
    """build-system --server auto builds the design that answers better on validation; a named design is
    built as asked, saying which leads; without a general model, the experts, saying why."""
    from askexpert.system.calibrate import choose_design

    gen, experts, general = _synthetic(right)
    policy = RoutingPolicy(tau=1.1, k=2)  # every image offloaded
    auto = choose_design("auto", gen, experts, general, policy)
    assert auto.server == right and auto.chosen_by == "validation"
    wrong_acc, right_acc = (auto.general_val_accuracy, auto.experts_val_accuracy) if right == "experts" else \
        (auto.experts_val_accuracy, auto.general_val_accuracy)
    assert right_acc == 100.0 and wrong_acc < 100.0 and "100.00%" in auto.reason
    other = "general" if right == "experts" else "experts"
    told = choose_design(other, gen, experts, general, policy)
    assert told.server == other and told.chosen_by == "user" and f"the {right} lead" in told.reason
    alone = choose_design("auto", gen, experts, None, policy)
    assert alone.server == "experts" and "no general model" in alone.reason
    with pytest.raises(Exception, match="--server general needs the general model.*fix:"):
        choose_design("general", gen, experts, None, policy)


@pytest.mark.timeout(300)
def test_a_general_model_bundle_serves_it_as_the_one_expert(tiny_system, tmp_path, capsys):
    """build-system --server general: one expert, the general model, without 'other'; the edge's answers over
    HTTP are the general model's on every offloaded image, the generalist's elsewhere, as offline."""
    from test_bundle import _test_npz

    from askexpert.models import open_checkpoint
    from askexpert.routing import fit_temperature
    from askexpert.runtime.clients import HttpExpertClient
    from askexpert.runtime.edge import EdgeRunner, ExpertTarget
    from askexpert.runtime.onnx_model import OnnxGeneralist
    from askexpert.system.calibrate import general_as_expert, outputs_of
    from askexpert_lab.testbed.server import ServerProcess

    out = tmp_path / "general"
    assert main(["build-system", str(tiny_system["generalist"]), str(tiny_system["experts"]), "--out", str(out),
                 "--server", "general"]) == 0
    assert "server design" in capsys.readouterr().out
    m = open_system(out).manifest
    assert m.design.server == "general" and m.design.chosen_by == "user" and len(m.experts) == 1
    assert not m.experts[0].has_other and m.experts[0].classes == list(range(10)) and m.routing.reroute is None
    gen = outputs_of(open_checkpoint(tiny_system["generalist"]), "the generalist")
    g = outputs_of(open_checkpoint(tiny_system["general"]), "the general model")
    general = general_as_expert(g, fit_temperature(g.val_logits, g.val_labels), 10)
    policy = RoutingPolicy.from_spec(m.routing)
    d = route(gen.test_logits, policy, membership_matrix(general.subsets, 10))
    final, _ = finalize(d, *general.test.for_route(d.expert), policy)
    n = 200
    images = np.load(_test_npz(tiny_system, tmp_path / "t.npz", n))["images"]
    with ServerProcess(out, threads=1) as url, HttpExpertClient(url) as client:
        runner = EdgeRunner(OnnxGeneralist(open_system(out).generalist_onnx, threads=1), policy, client,
                            [ExpertTarget(e.id, list(e.classes)) for e in m.experts])
        traces = list(runner.run((images[i:i + 4], gen.test_labels[i:i + 4]) for i in range(0, n, 4)))
    assert [t.route.offloaded for t in traces] == d.offload[:n].tolist() and not any(t.degraded for t in traces)
    assert np.array_equal(np.array([t.pred for t in traces]), final[:n])

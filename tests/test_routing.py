"""The router against a slow reference, thresholds, temperature scaling and system metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest

from askexpert.routing import (
    OTHER,
    ExpertAnswers,
    Router,
    RoutingPolicy,
    confidence_scores,
    finalize,
    fit_temperature,
    membership_matrix,
    route,
    system_metrics,
    tau_for_accuracy,
    tau_for_offload,
)


def reference_route(logits, policy, subsets):
    """One sample at a time, in plain Python: the routing rule as written in the docs."""
    out = []
    for row in logits.tolist():
        z = [v / policy.temperature for v in row]
        m = max(z)
        e = [math.exp(v - m) for v in z]
        p = [v / sum(e) for v in e]
        ranked = sorted(range(len(p)), key=lambda c: (-p[c], c))
        if policy.confidence == "max-prob":
            conf = p[ranked[0]]
        elif policy.confidence == "margin":
            conf = p[ranked[0]] - p[ranked[1]]
        else:
            conf = 1 + sum(q * math.log(max(q, 1e-12)) for q in p) / math.log(len(p))
        if conf >= policy.tau:
            out.append(-1)
            continue
        top = ranked[: policy.k]
        masses = [sum(p[c] for c in top if c in subset) for subset in subsets]
        best = max(masses)
        out.append(next(i for i, v in enumerate(masses) if v >= best - 1e-6))
    return out


@pytest.mark.parametrize("confidence", ["max-prob", "margin", "entropy"])
@pytest.mark.parametrize("k", [1, 2, 3, 5])
@pytest.mark.parametrize("n_classes", [12, 100])
def test_router_matches_the_slow_reference(confidence, k, n_classes):
    g = np.random.default_rng(k)
    subsets = [[0, 1, 2, 3], [4, 5, 6], list(range(7, n_classes)), [3, 4]]  # with an overlap
    logits = (g.standard_normal((400, n_classes)) * 3).astype(np.float32)
    membership = membership_matrix(subsets, n_classes)
    for tau in (0.2, 0.5, 0.8):
        policy = RoutingPolicy(tau=tau, k=k, temperature=0.8, confidence=confidence)
        d = route(logits, policy, membership)
        assert d.expert.tolist() == reference_route(logits, policy, subsets)
        assert np.array_equal(d.offload, d.expert >= 0)


@pytest.mark.parametrize("confidence", ["max-prob", "margin", "entropy"])
@pytest.mark.parametrize("k", [1, 3, 5])
@pytest.mark.parametrize("n_classes", [3, 10, 100])
def test_one_image_fast_path_equals_the_batch_policy_bit_for_bit(confidence, k, n_classes):
    """The edge routes one image at a time through a shorter path: every field must equal what the
    vectorised policy gives that image inside a batch, and so must the final answer."""
    g = np.random.default_rng(n_classes * 10 + k)
    subsets = [list(range(0, n_classes, 2)), list(range(1, n_classes, 2)), [0, 1]]  # with an overlap
    router = Router(RoutingPolicy(tau=0.55, k=k, temperature=0.7, confidence=confidence),
                    membership_matrix(subsets, n_classes))
    logits = (g.standard_normal((300, n_classes)) * 3).astype(np.float32)
    logits[:20] = np.round(logits[:20])  # exact ties between classes
    batch = router.route(logits)
    pred, conf = g.integers(-1, n_classes, 300), g.random(300).astype(np.float32)
    answered = g.random(300) < 0.9
    for fallback in ("other", "other-or-less-confident"):
        policy = RoutingPolicy(tau=0.55, k=k, temperature=0.7, confidence=confidence, fallback=fallback)
        final, fell = finalize(batch, pred, conf, policy, answered=answered)
        for i in range(len(logits)):
            one = router.route(logits[i:i + 1])
            for field in ("offload", "expert", "confidence", "local_pred"):
                a, b = getattr(one, field), getattr(batch, field)[i:i + 1]
                assert a.dtype == b.dtype and np.array_equal(a, b), (i, field)
            f1, b1 = finalize(one, pred[i:i + 1], conf[i:i + 1], policy, answered=answered[i:i + 1])
            assert f1.tolist() == [final[i]] and b1.tolist() == [fell[i]], (i, fallback)
    assert batch.offload.any() and not batch.offload.all()


def test_ties_go_to_the_lowest_expert_id():
    logits = np.log(np.array([[0.3, 0.3, 0.2, 0.2]]))
    membership = membership_matrix([[2, 3], [0], [1]], 4)
    d = route(logits, RoutingPolicy(tau=1.1, k=2), membership)
    assert d.expert.tolist() == [1]  # experts 1 and 2 each hold 0.3 of the top-2 mass
    d = route(logits, RoutingPolicy(tau=1.1, k=4), membership)
    assert d.expert.tolist() == [0]  # expert 0 holds 0.4


def test_finalize_falls_back_on_other_on_less_confident_and_on_no_answer():
    logits = np.log(np.array([[0.5, 0.3, 0.2], [0.4, 0.35, 0.25], [0.9, 0.05, 0.05], [0.34, 0.33, 0.33]]))
    membership = membership_matrix([[0, 1, 2]], 3)
    policy = RoutingPolicy(tau=0.6, k=2)
    d = route(logits, policy, membership)
    assert d.offload.tolist() == [True, True, False, True]
    expert_pred = np.array([1, OTHER, 2, 2])
    expert_conf = np.array([0.9, 0.9, 0.9, 0.2])
    final, fell = finalize(d, expert_pred, expert_conf, policy)
    assert final.tolist() == [1, 0, 0, 2] and fell.tolist() == [False, True, False, False]
    strict = RoutingPolicy(tau=0.6, k=2, fallback="other-or-less-confident")
    final, fell = finalize(d, expert_pred, expert_conf, strict)
    assert final.tolist() == [1, 0, 0, 0] and fell.tolist() == [False, True, False, True]
    final, fell = finalize(d, expert_pred, expert_conf, policy, answered=np.array([False, True, True, True]))
    assert final.tolist() == [0, 0, 0, 2] and fell.tolist() == [True, True, False, False]


def test_confidence_scores_are_in_unit_range_and_ordered():
    probs = np.array([[1.0, 0.0, 0.0], [1 / 3, 1 / 3, 1 / 3], [0.6, 0.3, 0.1]])
    for kind in ("max-prob", "margin", "entropy"):
        c = confidence_scores(probs, kind)
        assert c[0] == pytest.approx(1.0) and c[1] < c[2] < c[0] and (c >= -1e-6).all()


def test_the_confidence_registry_is_what_every_side_reads():
    """One registry (contract.confidence.RULES): system.json accepts its names and no other, --confidence offers
    its scored rules, the policy scores with each and refuses a fitted rule without its parameters."""
    from typing import get_args

    from askexpert.cli import build_parser
    from askexpert.contract.confidence import CONFIDENCE_RULES, RULES, rule
    from askexpert.contract.schema import RoutingSpec

    assert get_args(RoutingSpec.model_fields["confidence"].annotation) == tuple(RULES)
    assert CONFIDENCE_RULES == ("max-prob", "margin", "entropy")
    assert [n for n in RULES if RULES[n].fitted] == ["learned"]
    edge = build_parser().parse_args(["edge", "system", "--confidence", "entropy"])
    assert edge.confidence == "entropy"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["edge", "system", "--confidence", "learned"])  # a fitted rule comes in its bundle
    probs = np.array([[0.6, 0.3, 0.1]])
    for name in CONFIDENCE_RULES:
        assert confidence_scores(probs, name)[0] == pytest.approx(RULES[name].score(probs, probs[:, :2])[0])
    with pytest.raises(ValueError, match="unknown confidence 'nope': use max-prob, margin, entropy"):
        rule("nope")
    with pytest.raises(ValueError, match="fitted rule"):
        RoutingPolicy(tau=0.5, confidence="learned")
    with pytest.raises(ValueError, match="needs its fitted rule"):
        confidence_scores(probs, "learned")


def test_tau_for_offload_hits_the_rate():
    conf = np.random.default_rng(0).random(1000).astype(np.float32)
    for rate in (0.0, 0.1, 0.3, 0.77, 1.0):
        tau = tau_for_offload(conf, rate)
        assert float((conf < tau).mean()) == pytest.approx(rate, abs=1e-3)


def test_tau_for_accuracy_is_the_least_offloading_that_reaches_the_target():
    g = np.random.default_rng(1)
    conf = g.random(300).astype(np.float32)
    local = g.random(300) < conf  # the surer, the more often right
    remote = g.random(300) < 0.9
    target = 80.0
    tau, acc = tau_for_accuracy(conf, local, remote, target)
    off = conf < tau
    achieved = 100 * float(np.where(off, remote, local).mean())
    assert achieved == pytest.approx(acc) and achieved >= target
    # brute force: no tau offloading fewer samples reaches the target
    order = conf.argsort()
    for m in range(int(off.sum())):
        mask = np.zeros(300, dtype=bool)
        mask[order[:m]] = True
        assert 100 * float(np.where(mask, remote, local).mean()) < target


def test_temperature_scaling_recovers_a_known_temperature():
    g = np.random.default_rng(2)
    z = g.standard_normal((20000, 10)) * 4
    p = np.exp(z / 2.5)
    p /= p.sum(1, keepdims=True)
    labels = (p.cumsum(1) > g.random((20000, 1))).argmax(1)  # one draw from each row's softmax(z / 2.5)
    assert fit_temperature(z, labels) == pytest.approx(2.5, rel=0.05)


def test_temperature_is_the_nll_minimum():
    """The fitted T beats its neighbours on the negative log-likelihood (a true optimum, not an iterate)."""
    g = np.random.default_rng(3)
    z = g.standard_normal((3000, 10)) * 3
    labels = np.where(g.random(3000) < 0.7, z.argmax(1), g.integers(0, 10, 3000))

    def nll(t: float) -> float:
        s = z / t
        s = s - s.max(1, keepdims=True)
        return float((np.log(np.exp(s).sum(1)) - s[np.arange(3000), labels]).mean())

    t = fit_temperature(z, labels)
    assert nll(t) <= min(nll(t * 1.01), nll(t / 1.01))


def test_system_metrics_by_hand():
    # 4 samples, 3 classes; experts {0,1} and {2}; the first two are offloaded
    logits = np.log(np.array([[0.5, 0.4, 0.1], [0.2, 0.3, 0.5], [0.9, 0.05, 0.05], [0.05, 0.9, 0.05]]))
    labels = np.array([1, 2, 0, 0])
    membership = membership_matrix([[0, 1], [2]], 3)
    answers = ExpertAnswers(pred=np.array([[1, 0, 0, 0], [OTHER, 2, 2, 2]]), conf=np.full((2, 4), 0.9))
    m = system_metrics(logits, labels, membership, answers, RoutingPolicy(tau=0.6, k=1))
    assert m.offload_rate == 50.0 and m.expert_load == [1, 1]
    assert m.accuracy == 75.0 and m.generalist_accuracy == 50.0  # sample 0 and 1 fixed by experts
    assert m.offloaded_accuracy_system == 100.0 and m.offloaded_accuracy_generalist == 50.0
    assert m.routing_hit_rate == 100.0


def test_expert_answers_from_logits_map_to_global_ids():
    logits = [np.array([[2.0, 0.0, 0.0], [0.0, 0.0, 3.0]]), np.array([[0.0, 1.0], [1.0, 0.0]])]
    answers = ExpertAnswers.from_logits(logits, [[4, 7], [2]])
    assert answers.pred.tolist() == [[4, OTHER], [OTHER, 2]]

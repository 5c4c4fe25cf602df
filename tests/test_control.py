"""Holding an operating point: the cost model's mixture, the budget controller and the label-free offload
tracker, driven by a fake clock and scripted latencies (no sleeping, no server: the same numbers on every run)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from askexpert.contract.schema import CurvePoint, OperatingCurve
from askexpert.costs.plan import CostParts, LatencyMix, choose, window_breach
from askexpert.costs.profiles import device, network
from askexpert.errors import ConfigError
from askexpert.runtime.control import BudgetController, Observation, OffloadTracker, control_report
from askexpert.runtime.settings import Connection, Control, Inputs, Security


def curve(k: int = 3) -> list[CurvePoint]:
    """A synthetic operating curve: offload 0, 0.5, ..., 10% then every 2%; accuracy rising to a peak at 50%
    offload (the experts help the unsure images, then the sure ones lose a little)."""
    rates = sorted({*(i / 2 for i in range(21)), *range(10, 101, 2)})
    return [CurvePoint(tau=r / 100, k=k, offload_rate=r, accuracy=90 + 3 * min(r, 50) / 50 - 0.01 * max(r - 50, 0),
                       offloaded_accuracy=None if r == 0 else 80.0, expert_share=[0.5, 0.5]) for r in rates]


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def drive(controller, phases, seed: int = 0, clock: Clock | None = None):
    """Feed the controller images: in each phase (images, offload ms), an image is offloaded when its
    confidence (uniform, so the share offloaded is the point's) falls below the controller's tau. Returns,
    per image, (phase, offload rate of the point in force, tau)."""
    rng = np.random.default_rng(seed)
    out = []
    for p, (n, offload_ms) in enumerate(phases):
        for _ in range(n):
            tau = controller.tau
            conf = float(rng.random())
            edge = float(10 + rng.normal(0, 0.5))
            off = None
            if conf < tau:
                off = math.inf if offload_ms is None else float(offload_ms + rng.exponential(1.0))
            total = edge + (0 if off is None or math.isinf(off) else off)
            controller.observe(Observation(edge, conf, off, 1000.0 if off is not None else 0.0))
            if clock is not None:
                clock.t += (total or 10) / 1000
            out.append((p, getattr(controller, "point", None), tau))
    return out


def test_the_window_breach_is_the_binomial_tail():
    """The chance that a window's p95 breaks a threshold: at least W - floor(0.95 (W - 1)) slow images of W."""
    for w in (20, 100):
        need = w - math.floor(0.95 * (w - 1))
        for q in (0.0, 0.01, 0.05, 0.2, 1.0):
            exact = sum(math.comb(w, s) * q ** s * (1 - q) ** (w - s) for s in range(need, w + 1))
            assert float(window_breach(q, w)) == pytest.approx(exact, abs=1e-12)
    # and it is what np.percentile does: 6 slow of 100 break a p95, 5 do not
    assert np.percentile([10.0] * 95 + [60.0] * 5, 95) < 20 < np.percentile([10.0] * 94 + [60.0] * 6, 95)


def test_the_latency_mixture_has_exact_quantiles():
    """Kept images cost the edge's time, offloaded ones the edge's + the offload's + the link's."""
    mix = LatencyMix([10.0] * 8, [[20.0] * 4, [40.0] * 4], [0.5, 0.5], rate=0.2, link_ms=5.0)
    # 80% at 10 ms, 10% at 35 ms, 10% at 55 ms
    assert mix.quantile(0.5) == 10.0 and mix.quantile(0.85) == 35.0 and mix.quantile(0.95) == 55.0
    assert mix.exceed(10.0) == pytest.approx(0.2) and mix.exceed(35.0) == pytest.approx(0.1)
    assert mix.mean == pytest.approx(0.8 * 10 + 0.1 * 35 + 0.1 * 55)
    assert LatencyMix([10.0], [[math.inf]], [1.0], rate=1.0).exceed(1e9) == 1.0  # a failed offload is slow


def parts(offload_ms: float) -> CostParts:
    return CostParts(device="test", link="test", load=0, edge_ms=(10.0,) * 20, offload_ms=((offload_ms,) * 20,) * 2,
                     link_ms=5.0, up_bytes=784, down_bytes=250, edge_profile=device("raspberry-pi-4"),
                     radio=network("wifi"))


def test_choosing_from_a_budget_takes_the_most_accurate_point_that_fits_and_refuses_naming_the_nearest():
    c = OperatingCurve(points=curve(), up_bytes=784, down_bytes=250)
    # offloaded images take 10 + 20 + 5 = 35 ms: a 30 ms p95 allows at most 5% offload
    choice = choose(c, parts(20.0), p95_ms=30.0)
    assert choice.point.offload_rate == 5 and choice.prediction.p95_ms == 10.0
    # a budget every point meets: the peak of accuracy
    assert choose(c, parts(20.0), p95_ms=100.0).point.offload_rate == 50
    # energy: a Pi 4's 5.4 W for 10 ms is 54 mJ; each offload adds 2.3 W idle x 25 ms and the radio
    e = choose(c, parts(20.0), edge_mj=60.0)
    assert e.prediction.edge_mj <= 60.0 and 0 < e.point.offload_rate < 50
    with pytest.raises(ConfigError, match=r"the least any point needs is 10\.0 ms.*raise --p95-latency to at least 10"):
        choose(c, parts(20.0), p95_ms=5.0)
    with pytest.raises(ConfigError, match="--edge-energy to at least"):
        choose(c, parts(20.0), edge_mj=1.0)


def test_the_slo_controller_converges_follows_the_link_and_recovers_without_oscillating():
    """wifi-like offloads (15 ms: every point is within a 40 ms SLO) -> lte-like ones (60 ms: only a few
    per cent may be offloaded) -> wifi again."""
    clock = Clock()
    points = curve()
    c = BudgetController(points, start_tau=0.30, slo_p95_ms=40.0, clock=clock)
    seen = drive(c, [(1500, 15.0), (2500, 60.0), (2500, 15.0)], clock=clock)
    rates = [p.offload_rate for _, p, _ in seen]
    # converged: the peak of accuracy while offloads are fast, a few per cent while they are slow, the peak again
    assert rates[1499] == 50 and rates[-1] == 50
    assert 1.0 <= rates[3999] <= 2.5
    # no oscillation: each phase's last 1000 images run at one point
    for end in (1500, 4000, 6500):
        assert len(set(rates[end - 1000:end])) == 1, f"tau still moving before image {end}"
    # it reacts: within 300 images of the change it offloads at most 5%
    assert max(rates[1500 + 300:4000]) <= 5.0
    # bounded: every tau is one of the curve's, every move at most 15 points of offload (or one curve step)
    taus = {p.tau for p in points}
    assert all(ch.tau in taus for ch in c.changes)
    gaps = [abs(a.val_offload_rate - b.val_offload_rate) for a, b in zip(c.changes, c.changes[1:], strict=False)]
    assert max(gaps) <= 15.0
    assert all(ch.why for ch in c.changes) and c.changes[-1].why.startswith("up")
    # the windows' report: p95 of each 100 images and the share within the SLO
    assert len(c.changes) < 40  # a handful of moves a phase, not one an image


def test_failed_offloads_count_as_slow():
    """A timeout or a 503 (an infinite offload time) drives the controller down like a slow link."""
    c = BudgetController(curve(), start_tau=0.5, slo_p95_ms=40.0, clock=Clock())
    drive(c, [(600, None)])
    assert c.point.offload_rate <= 2.5 and "failed" in c.changes[-1].why


def test_the_energy_controller_keeps_the_edge_within_its_budget():
    """54 mJ of generalist an image, plus 2.3 W x the wait and the radio for each offload: a 60 mJ budget
    allows some offloads while they take 15 ms, fewer when they take 60 ms."""
    c = BudgetController(curve(), start_tau=0.3, energy_mj=60.0, edge=device("raspberry-pi-4"), radio=network("wifi"),
                         clock=Clock())
    seen = drive(c, [(1500, 15.0), (1500, 60.0)])
    fast, slow = seen[1499][1], seen[-1][1]
    assert 0 < slow.offload_rate < fast.offload_rate
    for p in (fast, slow):
        wait = 15.0 if p is fast else 60.0
        assert 5.4 * 10.0 + p.offload_rate / 100 * (2.3 * wait + 8 * 1000 * 6.45e-7 * 1000) <= 60.0 + 0.5


def test_the_offload_tracker_holds_the_share_as_the_confidences_shift():
    """Confidences drift lower (noisier inputs): a fixed tau offloads far more, the tracker keeps 30%."""
    rng = np.random.default_rng(1)
    clean, noisy = rng.beta(6, 1, 3000), rng.beta(2, 1, 6000)
    stream = np.concatenate([clean, noisy])
    fixed_tau = float(np.quantile(clean, 0.3))
    tracker = OffloadTracker(0.3, fixed_tau, clock=Clock())
    offloaded = []
    for conf in stream:
        offloaded.append(conf < tracker.tau)
        tracker.observe(Observation(10.0, float(conf)))
    after = np.array(offloaded[3000 + 600:])  # the drift at image 3000; its window refills in 500 images
    windows = after[: len(after) // 100 * 100].reshape(-1, 100).mean(1) * 100
    assert abs(after.mean() * 100 - 30) <= 3
    assert np.mean(np.abs(windows - 30) <= 10) >= 0.95  # 100-image windows are binomial: +/- 10 points
    assert float(np.mean(noisy < fixed_tau)) > 0.5  # the fixed tau drifts past half
    assert len(tracker.changes) > 10 and "tracking 30.0% offload" in tracker.changes[-1].why


def test_the_controllers_refuse_what_they_cannot_do():
    with pytest.raises(ConfigError, match="one budget"):
        BudgetController(curve(), 0.3, slo_p95_ms=40.0, energy_mj=60.0)
    with pytest.raises(ConfigError, match="no operating curve"):
        BudgetController([], 0.3, slo_p95_ms=40.0)
    with pytest.raises(ConfigError, match="--edge-profile"):
        BudgetController(curve(), 0.3, energy_mj=60.0)
    with pytest.raises(ConfigError, match="0..1"):
        OffloadTracker(30, 0.3)


def test_the_report_counts_windows_within_the_target():
    class T:
        def __init__(self, total, off):
            self.total_ms, self.route = total, type("R", (), {"offloaded": off})()

    traces = [T(10.0, False)] * 95 + [T(60.0, True)] * 5 + [T(10.0, False)] * 90 + [T(60.0, True)] * 10 + [T(1, 0)] * 50
    r = control_report("slo-p95", 40.0, [], traces)
    assert (r.windows, r.windows_within, r.offload_by_window) == (2, 1, [5.0, 10.0])
    r = control_report("target-offload", 0.08, [], traces)
    assert r.windows_within == 2


def accuracy_stream(keeper, phases, seed: int = 0, expert_skill: float = 1.0):
    """Feed ``keeper`` images whose calibrated confidence is uniform on [0.3, 1): in a phase ``(n, (a, b))`` the
    generalist is right with probability sigmoid(a + b logit(confidence)) ((0, 1): calibrated; a < 0, b < 1:
    overconfident, as under drift); an expert answers every offload (a routine one or a probe), right with
    probability ``expert_skill``, and bears the generalist out when both are right. Returns per image (kept,
    generalist right, tau in force, confidence)."""
    rng = np.random.default_rng(seed)
    out = []
    index = 0
    for n, (a, b) in phases:
        for _ in range(n):
            tau = keeper.tau
            conf = float(rng.uniform(0.3, 1.0))
            right = bool(rng.random() < 1 / (1 + math.exp(-(a + b * math.log(conf / (1 - conf))))))
            offload = conf < tau
            probe = bool(keeper.probes(index, np.array([not offload]))[0])
            sent = offload or probe
            backs = float(right and bool(rng.random() < expert_skill)) if sent else None
            keeper.observe(Observation(10.0, conf, 5.0 if sent else None, 0.0, conf, backs))
            out.append((not sent, right, tau, conf))
            index += 1
    return out


def test_probes_are_drawn_per_image_whatever_the_batching():
    from askexpert.runtime.control import AccuracyKeeper, uniform_draws

    one = np.concatenate([uniform_draws(7, i, 1) for i in range(2000)])
    assert np.array_equal(one, np.concatenate([uniform_draws(7, 0, 1500), uniform_draws(7, 1500, 500)]))
    assert not np.array_equal(one, uniform_draws(8, 0, 2000)) and one.min() >= 0.0 and one.max() < 1.0
    assert abs(one.mean() - 0.5) < 0.03 and abs((one < 0.1).mean() - 0.1) < 0.02
    keeper = AccuracyKeeper(0.9, 0.5, probe=0.1, seed=7)
    kept = np.arange(2000) % 3 > 0
    probes = keeper.probes(0, kept)
    assert not probes[~kept].any() and np.array_equal(probes, kept & (one < 0.1))


def test_the_backing_fit_recovers_a_known_calibration():
    from askexpert.runtime.control import fit_backing

    rng = np.random.default_rng(0)
    p = rng.uniform(0.3, 0.99, 20000)
    z = np.log(p / (1 - p))
    y = rng.random(len(p)) < 1 / (1 + np.exp(-(-0.5 + 0.8 * z)))
    a, b = fit_backing(p, y)
    assert a == pytest.approx(-0.5, abs=0.1) and b == pytest.approx(0.8, abs=0.1)
    assert fit_backing(p[:0], y[:0]) == pytest.approx((0.0, 1.0))  # no answers: the prior


def test_accuracy_is_held_on_a_stream_of_known_accuracy_and_followed_through_a_drift():
    """A calibrated generalist, then (from image 4,000) an overconfident one (right 69% of the time at 80%
    confidence, 89% at 95%), and an expert that is always right, with a prior of one pseudo-image (the
    default, 1,000, was chosen on a benchmark where the experts are as overconfident as the generalist, and
    trusts them less). Before the drift and from image 5,000 on, the keeper's estimate of the kept answers'
    accuracy (500-image windows, each by the fit of its time) is within 4 points of the truth, where the
    generalist's own confidence overstates it by more than 5 after the drift; tau rises (more offloads) and
    the kept answers stay within 4 points of the target. (The margins hold on every seed tried, 0-5: a
    500-image window's kept accuracy alone scatters by ~2 points.)"""
    from askexpert.runtime.control import AccuracyKeeper

    keeper = AccuracyKeeper(0.85, 0.6, probe=0.1, seed=0, prior=1.0)
    out = accuracy_stream(keeper, [(4000, (0.0, 1.0)), (6000, (-0.3, 0.8))])
    for lo, hi in ((1000, 4000), (5000, 10000)):
        estimated, right, conf = 0.0, [], []
        for w in range(lo, hi, 500):
            kept = [(r, c) for k, r, _, c in out[w:w + 500] if k]
            estimated += keeper.estimate(np.array([c for _, c in kept]), keeper.fit_at(w + 500)) * len(kept)
            right += [r for r, _ in kept]
            conf += [c for _, c in kept]
        true = float(np.mean(right))
        assert abs(estimated / len(right) - true) < 0.04 and abs(true - 0.85) < 0.04, (lo, estimated, true)
        if lo == 5000:
            assert np.mean(conf) - true > 0.05  # the drift shows in the experts' answers, not in the confidence
    taus = np.array([t for _, _, t, _ in out])
    assert np.median(taus[3000:4000]) + 0.05 < np.median(taus[8000:])


def test_the_accuracy_keeper_reports_its_estimate_and_yields_to_a_budget():
    """An SLO the offloads break caps tau below what the accuracy target asks; the report gives, per
    500-image window, the estimate beside the true kept accuracy."""
    from askexpert.runtime.control import AccuracyKeeper

    slow = BudgetController(curve(), 0.3, slo_p95_ms=100.0, clock=Clock())
    keeper = AccuracyKeeper(0.97, 0.3, probe=0.1, budget=slow)
    rng = np.random.default_rng(0)
    for i in range(1500):
        conf = float(rng.uniform(0.3, 1.0))
        sent = conf < keeper.tau or bool(keeper.probes(i, np.array([conf >= keeper.tau]))[0])
        keeper.observe(Observation(10.0, conf, 400.0 if sent else None, 0.0, conf,
                                   float(rng.random() < conf) if sent else None))
    assert keeper.tau <= slow.tau and "capped by the SLO p95 100 ms" in keeper.why
    with pytest.raises(ConfigError, match="target-accuracy"):
        AccuracyKeeper(90, 0.5)
    with pytest.raises(ConfigError, match="--probe"):
        AccuracyKeeper(0.9, 0.5, probe=1.0)


def test_the_edge_settings_choose_one_controller_and_refuse_what_conflicts():
    """--target-accuracy alone (no curve needed) or capped by one budget; two targets, a fixed --tau beside a
    target, or a budget without a curve are refused, each naming the fix."""
    from askexpert.routing import RoutingPolicy
    from askexpert.runtime.control import AccuracyKeeper
    from askexpert.runtime.session import EdgeSettings, EdgeSystem, controller_for

    bundle = EdgeSystem(None, RoutingPolicy(tau=0.3, k=3), None, None, "id", "bundle b",
                        OperatingCurve(points=curve(), up_bytes=784, down_bytes=250))
    run_dir = EdgeSystem(None, RoutingPolicy(tau=0.3, k=3), None, None, None, "run r")

    def settings(**kw) -> Control:
        return EdgeSettings(system="b").with_(**kw).control

    mode, target, keeper = controller_for(settings(target_accuracy=0.9, probe=0.1), run_dir)
    assert (mode, target) == ("target-accuracy", 0.9) and isinstance(keeper, AccuracyKeeper)
    assert keeper.probe == 0.1 and keeper.budget is None and keeper.tau == 0.3
    mode, _, keeper = controller_for(settings(target_accuracy=0.9, slo_p95_ms=40.0), bundle)
    assert mode == "target-accuracy" and keeper.budget is not None and keeper.budget.slo == 40.0
    with pytest.raises(ConfigError, match="--target-offload and --target-accuracy each move tau") as err:
        controller_for(settings(target_accuracy=0.9, target_offload=0.3), bundle)
    assert "--target-accuracy" in err.value.fix
    with pytest.raises(ConfigError, match="--slo-p95 and --energy-budget each move tau"):
        controller_for(settings(slo_p95_ms=40.0, energy_budget_mj=5.0), bundle)
    with pytest.raises(ConfigError, match="--tau fixes the threshold and --target-accuracy moves it"):
        controller_for(settings(target_accuracy=0.9, tau=0.5), bundle)
    with pytest.raises(ConfigError, match="--slo-p95 moves tau along the bundle's operating curve") as err:
        controller_for(settings(target_accuracy=0.9, slo_p95_ms=40.0), run_dir)
    assert "build-system" in err.value.fix


def test_the_settings_as_a_summary_writes_them_name_the_system_by_its_directory_and_hide_the_token(tmp_path):
    from askexpert.routing import RoutingPolicy
    from askexpert.runtime.session import EdgeSettings, GeneralistRun

    run = GeneralistRun(tmp_path / "generalist", RoutingPolicy(tau=0.3, k=3), None)
    described = EdgeSettings(system=run, connection=Connection(server="http://127.0.0.1:1"),
                             security=Security(token="secret")).described()
    assert described["system"] == str(tmp_path / "generalist") and described["token"] == "(set)"
    assert "secret" not in str(described)
    assert EdgeSettings(system=tmp_path / "b", connection=Connection(server=None)).described()["token"] == "None"
    # the summary's keys are the flat names it always had, one a setting
    assert {"server", "server_protocol", "inputs", "limit", "slo_p95_ms", "trace", "threads"} <= set(described)


def test_settings_change_by_name_each_in_its_group_and_an_unknown_name_is_refused(tmp_path):
    """``with_`` routes a field to its group and leaves the others as they were (the same objects); a name no
    group holds is refused, listing the names there are."""
    from askexpert.runtime.session import EdgeSettings

    base = EdgeSettings(tmp_path / "b", Connection(server="http://a", retries=3), inputs=Inputs(limit=5))
    changed = base.with_(server="http://b", limit=None, slo_p95_ms=40.0, threads=2)
    assert changed.connection == Connection(server="http://b", retries=3)  # retries kept
    assert changed.inputs.limit is None and changed.control.slo_p95_ms == 40.0 and changed.threads == 2
    assert changed.security is base.security and changed.outputs is base.outputs
    assert base.connection.server == "http://a"  # the original is untouched (frozen groups)
    with pytest.raises(TypeError, match="no edge setting 'sever'.*server"):
        base.with_(sever="http://c")


def test_a_published_id_is_refused_on_run_directories_with_the_bundle_named_as_the_fix(tmp_path):
    """--expect-system-id pins a bundle: on a generalist's calibrated run (the edge) or an expert run (the
    server) it is refused before any model loads, naming the bundle as the fix."""
    from askexpert.errors import ConfigError
    from askexpert.routing import RoutingPolicy
    from askexpert.runtime.session import EdgeSettings, GeneralistRun, edge_system
    from askexpert.serving.pool import open_source

    run = GeneralistRun(tmp_path / "generalist", RoutingPolicy(tau=0.3, k=3), None)
    with pytest.raises(ConfigError, match="is a generalist's run directory") as err:
        edge_system(EdgeSettings(system=run, connection=Connection(server=None),
                                 security=Security(expect_system_id="0" * 64)))
    assert err.value.fix.startswith("run the bundle")
    with pytest.raises(ConfigError, match="is an expert run directory") as err:
        open_source(tmp_path / "experts", expect_system_id="0" * 64)
    assert err.value.fix.startswith("serve the bundle")

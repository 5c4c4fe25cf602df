"""``askexpert plan``: the modes and the recommendation (by construction), the server device models, and the
command on a real bundle."""

from __future__ import annotations

import json
import math

import pytest

from askexpert.contract.schema import CurvePoint, OperatingCurve
from askexpert.costs.modes import COLLABORATIVE, EDGE_ONLY, FULL_OFFLOAD, Goals, ModeParts, options, recommend
from askexpert.costs.profiles import device, network
from askexpert.errors import ConfigError


def curve(general_accuracy: float | None = 82.0) -> OperatingCurve:
    """Nothing offloaded: 70%; 30% offloaded: 80%; everything offloaded to the experts: 81%."""
    pts = [CurvePoint(tau=1.0, k=3, offload_rate=0.0, accuracy=70.0, offloaded_accuracy=None, expert_share=[1.0]),
           CurvePoint(tau=0.6, k=3, offload_rate=30.0, accuracy=80.0, offloaded_accuracy=60.0, expert_share=[1.0]),
           CurvePoint(tau=0.0, k=3, offload_rate=100.0, accuracy=81.0, offloaded_accuracy=81.0, expert_share=[1.0])]
    return OperatingCurve(points=pts, up_bytes=784, down_bytes=200, general_accuracy=general_accuracy)


def parts(*, edge_ms: float, link_ms: float, up_bytes: int, radio: str = "wifi", server_mj: float = 1.0,
          general_mj: float = 1.0) -> ModeParts:
    return ModeParts("rpi4", "h100", "test", "raw", edge_ms, expert_ms=0.5, expert_mj=server_mj, general_ms=0.5,
                     general_mj=general_mj, overhead_ms=1.0, link_ms=(link_ms,), up_bytes=up_bytes, down_bytes=200,
                     edge_power=device("raspberry-pi-4"), radio=network(radio))


def test_each_mode_priced_by_hand():
    """A slow edge (100 ms at 5.4 W), a 5 ms link: every figure from the parts by hand."""
    p = parts(edge_ms=100.0, link_ms=5.0, up_bytes=784)
    opts = {(o.mode, o.offload_rate): o for o in options(curve(), p)}
    edge = opts[(EDGE_ONLY, 0.0)]
    assert edge.accuracy == 70.0 and edge.p95_ms == 100.0 and edge.near_edge_mj == 0.0
    assert edge.edge_mj == pytest.approx(5.4 * 100.0)  # W x ms = mJ
    full = opts[(FULL_OFFLOAD, 100.0)]
    wait = 5.0 + 1.0 + 0.5  # link + server software + the general model
    radio = 6.45e-7 * 8 * (784 + 200) * 1000
    assert full.accuracy == 82.0 and full.p95_ms == pytest.approx(wait)
    assert full.edge_mj == pytest.approx(2.3 * wait + radio) and full.near_edge_mj == 1.0
    collab = opts[(COLLABORATIVE, 30.0)]
    assert collab.accuracy == 80.0 and collab.p95_ms == pytest.approx(100.0 + wait)  # 30% > 5% offloaded
    radio_30 = 6.45e-7 * 8 * int(0.3 * (784 + 200)) * 1000  # the expected bytes, as energy.py counts them
    assert collab.edge_mj == pytest.approx(540.0 + 0.3 * 2.3 * wait + radio_30)
    assert collab.near_edge_mj == pytest.approx(0.3) and collab.total_mj == pytest.approx(collab.edge_mj + 0.3)


def test_full_offload_recommended_where_it_wins_by_construction():
    """A slow, power-hungry edge and a cheap link: full offload is the most accurate and the cheapest."""
    rec = recommend(options(curve(), parts(edge_ms=100.0, link_ms=5.0, up_bytes=784)), Goals(min_accuracy=75.0))
    assert rec.mode == FULL_OFFLOAD
    assert rec.reasons[0].startswith("full offload, not collaboration")
    assert rec.best[EDGE_ONLY] is None and rec.best[COLLABORATIVE] is not None


def test_collaborative_recommended_where_it_wins_by_construction():
    """A fast edge and a costly link (big images over a cellular radio): collaboration at 30% offload meets
    the floor that edge only misses, at a fraction of full offload's radio energy."""
    p = parts(edge_ms=2.0, link_ms=80.0, up_bytes=150_000, radio="cellular")
    rec = recommend(options(curve(), p), Goals(min_accuracy=78.0))
    assert rec.mode == COLLABORATIVE and rec.chosen.offload_rate == 30.0
    assert rec.best[FULL_OFFLOAD].total_mj > rec.chosen.total_mj
    assert rec.reasons[0].startswith("collaborate")


def test_edge_only_and_none_and_the_near_edge_reading():
    p = parts(edge_ms=2.0, link_ms=80.0, up_bytes=150_000, radio="cellular")
    assert recommend(options(curve(), p), Goals(min_accuracy=65.0)).mode == EDGE_ONLY
    rec = recommend(options(curve(), p), Goals(min_accuracy=90.0))
    assert rec.mode is None and rec.reasons[0].startswith("no mode meets the goals")
    assert any("accuracy 82.00% < 90%" in r for r in rec.reasons)
    # the near-edge reading alone: full offload's server energy (5 mJ) against 30% of an expert call (0.3 mJ)
    p = parts(edge_ms=100.0, link_ms=5.0, up_bytes=784, server_mj=1.0, general_mj=5.0)
    assert recommend(options(curve(), p), Goals(min_accuracy=75.0, energy="near-edge")).mode == COLLABORATIVE
    assert recommend(options(curve(), p), Goals(min_accuracy=75.0, energy="total")).mode == FULL_OFFLOAD


def test_unknown_full_offload_accuracy_never_meets_a_floor():
    rec = recommend(options(curve(None), parts(edge_ms=100.0, link_ms=5.0, up_bytes=784)), Goals(min_accuracy=75.0))
    assert rec.best[FULL_OFFLOAD] is None and any("accuracy unknown" in r for r in rec.reasons)


def test_bad_goals_are_refused():
    with pytest.raises(ConfigError, match="energy reading"):
        Goals(energy="server")
    with pytest.raises(ConfigError, match="minimise"):
        Goals(minimise="accuracy")


def test_server_devices_fit_their_sources():
    """The H100's batch model reproduces its own measured rows within 30% (three models, two batch sizes: the
    fit's in-sample spread, BENCHMARKS.md's table); a batch costs less an image than one image alone; the Orin's
    table is fitted with its CNNs and charges n batch-1 calls."""
    from askexpert.costs.device_model import reference_features
    from askexpert.costs.server_device import server_device

    h100 = server_device("h100")
    for check in h100.checks():
        if check.predicted_ms is not None:
            assert check.predicted_ms == pytest.approx(check.row.ms, rel=0.3), check
        if check.predicted_mj_per_image is not None:
            assert check.predicted_mj_per_image == pytest.approx(check.row.mj_per_image, rel=0.3), check
    f = reference_features()["deit_small"]
    assert h100.image_ms(f, 64) < h100.image_ms(f, 1) and h100.image_mj(f, 64) < h100.image_mj(f, 1)
    orin = server_device("jetson-agx-orin")
    assert orin.batch_ms(f, 4) == pytest.approx(4 * orin.batch_ms(f, 1))
    assert orin.batch_mj(f, 1) == pytest.approx(60.0 * orin.batch_ms(f, 1))
    assert "no published transformer" in " ".join(orin.caveats)
    assert server_device("host") is None


def test_bad_server_devices_are_refused(monkeypatch):
    from askexpert.costs import profiles, server_device

    with pytest.raises(ConfigError, match="no server device 'tpu'") as err:
        server_device.server_device("tpu")
    assert "h100" in err.value.fix and "host" in err.value.fix
    table = {**profiles._load(), "server_devices": {"bare": {"kind": "published", "description": "x",
                                                             "published": {"ms": {}}}}}
    monkeypatch.setattr(profiles, "_load", lambda: table)
    monkeypatch.setattr(server_device, "_load", lambda: table)
    server_device.server_device.cache_clear()
    try:
        with pytest.raises(ConfigError, match="no sourced per-model table") as err:
            server_device.server_device("bare")
        assert "published" in err.value.fix
    finally:
        server_device.server_device.cache_clear()


def test_a_device_without_a_figure_for_an_op_class_is_refused():
    """A table of CNNs alone, fitted without a prior, has no figure for a ViT's attention: pricing one is refused
    in one line naming the fix, where a prediction would leave that work out."""
    from askexpert.costs.device_model import fit, reference_features, require_covered

    feats = reference_features()
    cnns = fit("cnn-only", feats, {"resnet18": 30.0, "alexnet": 40.0, "vgg16": 170.0, "googlenet": 45.0})
    require_covered(cnns, feats["resnet50"], "resnet50")  # convolutions: covered
    with pytest.raises(ConfigError, match="no figure for deit's attention") as err:
        require_covered(cnns, feats["deit_small"], "deit")
    assert "costs/profiles.yaml" in err.value.fix


def test_plan_command_on_a_real_bundle(tiny_system, capsys):
    """The command on the tiny system's bundle: the three modes from its curve (edge only at its nothing-offloaded
    point, full offload at the general model's validation accuracy), JSON that reads back, and a bad link refused
    in one line naming the fix."""
    from askexpert.cli import main
    from askexpert.contract.bundle import open_system

    bundle = tiny_system["bundle"]
    c = open_system(bundle).manifest.curve
    assert c.general_accuracy is not None and 0 < c.general_accuracy <= 100
    assert main(["plan", str(bundle), "--edge-device", "rpi4", "--server-device", "h100", "--link", "lte",
                 "--min-accuracy", "1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["recommended"] in (EDGE_ONLY, FULL_OFFLOAD, COLLABORATIVE)
    assert out["best"][FULL_OFFLOAD]["accuracy"] == c.general_accuracy
    nothing = min(c.points, key=lambda p: p.offload_rate)
    assert out["best"][EDGE_ONLY]["accuracy"] == nothing.accuracy and out["up_bytes"] == c.up_bytes
    assert not math.isnan(out["edge_ms"]) and out["link_ms_median"] > 0
    assert main(["plan", str(bundle), "--link", "trace:nowhere"]) == 2
    assert "fix:" in capsys.readouterr().err
    assert main(["plan", str(bundle), "--server-device", "tpu"]) == 2
    assert "choose one of" in capsys.readouterr().err

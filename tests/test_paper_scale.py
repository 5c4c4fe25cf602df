"""The paper-scale cost bench's machinery on small models: tau for a share, the photo crops, links
applied to measured traces as the client accounts them, and the whole bench on the host (a real cost
bundle, a real server) with its report, plots and the bundle it measured."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from askexpert.contract.bundle import open_system
from askexpert.routing.thresholds import tau_for_offload
from askexpert.runtime.edge import Route, SampleTrace
from askexpert.runtime.link import PRESETS
from askexpert.system.plan import photo_crops
from askexpert_lab.bench.cost_bundle import COST_ONLY, CostSystem
from askexpert_lab.bench.scale import ScaleProfile, on_link, run_paper_scale
from askexpert_lab.bench.scale_report import ratios

pytestmark = pytest.mark.timeout(600)
SMALL = CostSystem(generalist="vit-edge-32", expert="vit-edge-32", classes=6, experts=2)


def test_tau_for_offloads_the_share_asked_for():
    conf = np.random.default_rng(0).random(200).astype(np.float32)  # confidences are float32, as the edge's
    for rate in (0.1, 0.3, 0.5):
        assert np.sum(conf < tau_for_offload(conf, rate)) == round(rate * 200)
    assert np.sum(conf < tau_for_offload(conf, 0.0)) == 0 and np.sum(conf < tau_for_offload(conf, 1.0)) == 200


def test_photo_crops_are_seeded_natural_images():
    a, b = photo_crops(6, 64, seed=3), photo_crops(6, 64, seed=3)
    assert a.shape == (6, 3, 64, 64) and a.dtype == np.uint8 and np.array_equal(a, b)
    assert a.std() > 20 and not np.array_equal(a[0], a[1])


def test_a_link_adds_the_delay_the_client_accounts_for_the_bytes_moved():
    sent = SampleTrace(0, None, 1, 1, 0.2, Route.EXPERT, "0", False, edge_ms=10.0, network_ms=2.0, expert_ms=5.0,
                       up_bytes=150_528, down_bytes=250).finish()
    kept = SampleTrace(1, None, 1, 1, 0.9, Route.LOCAL, None, False, edge_ms=10.0).finish()
    for link in ("wifi", "lte", "5g"):
        moved, local = on_link([sent, kept], link)
        assert moved.link_ms == pytest.approx(PRESETS[link].delay_s(150_528, 250) * 1000)
        assert moved.total_ms == pytest.approx(17.0 + moved.link_ms) and local.total_ms == 10.0 and local.link_ms == 0


def test_the_bench_on_the_host_writes_its_tables_and_plots(tmp_path):
    profile = ScaleProfile(devices=("host",), links=("wifi", "lte"), rates=(0.25, 0.5), headline_rate=0.25,
                           images=8, sweep_images=4, encodings=("png",), k=2)
    result = run_paper_scale(output_dir=tmp_path, results_dir=tmp_path / "results", profile=profile, system=SMALL)
    report = Path(result.report).read_text()
    assert "**Accuracy is not measured at this scale**" in report and "paper 0.55x" in report
    assert (tmp_path / "results" / "paper-scale-host.png").stat().st_size > 0
    for link in profile.links:
        assert result.find("host", "full-offload", link).offload_rate == 100
        collab = result.find("host", "collaborative", link, 0.25)
        assert collab.offload_rate == 25.0 and collab.images == 8
        assert collab.breakdown_ms_offloaded["link_ms"] == pytest.approx(
            PRESETS[link].delay_s(collab.up_bytes_per_offload, 0) * 1000, rel=0.2)  # down bytes: a few hundred
        q = ratios(result, "host", link, 0.25)
        assert q["latency_vs_edge_execution"] > 0 and q["energy_vs_full_offload"] > 0
    assert result.find("host", "collaborative", "wifi", 0.5).images == 4
    assert result.find("host", "collaborative", "wifi", 0.25, "png").up_bytes_per_offload > 0
    assert result.find("host", "edge-only").energy.server_mj_per_image == 0
    saved = json.loads((tmp_path / "results" / "paper-scale.json").read_text())
    assert saved["system"]["weights"].startswith("untrained") and len(saved["rows"]) == len(result.rows)
    # the cost bundle it measured: an ordinary, verified bundle that says what it is
    m = open_system(tmp_path / "paper-scale" / "bundle", verify=True).manifest
    assert m.data.name == COST_ONLY and "untrained" in m.name and "accuracy not measured" in m.name
    assert m.routing.operating_point.val_offload_rate == 25.0 and len(m.experts) == 2 and m.general is not None
    assert [e.classes for e in m.experts] == [[0, 1, 2], [3, 4, 5]]

"""`askexpert bench`: every baseline on a tiny run, the report with every table and plot, resumption."""

from __future__ import annotations

import json

import pytest
from conftest import TRAIN_THREADS

from askexpert_lab.bench.report import BASELINES, goals
from askexpert_lab.bench.results import BenchResult
from askexpert_lab.bench.suite import Profile, run_bench

TINY = Profile("tiny", "demo-generalist", "demo-general", "demo-experts", None,
               ("data.train_subset=1500", "data.val_subset=400", "data.test_subset=400", "train.epochs=1",
                "model.kwargs.depth=1", f"train.threads={TRAIN_THREADS}"),
               test_images=150, sweep_images=80, rates=(0.2, 0.4), ks=(1, 3), links=("wifi", "lte"),
               clients=(1, 4), concurrency_seconds=1.5)


pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def bench(tmp_path_factory, tiny_system):
    """The bench on the session's tiny system (its generalist, general model, static and progressive
    experts): the bench's own training is the pipeline's, tested with tiny_system."""
    out = tmp_path_factory.mktemp("bench")
    models = {"generalist": tiny_system["generalist"], "general": tiny_system["general"],
              "progressive": tiny_system["progressive"], "static": tiny_system["experts"],
              "partition": json.loads(tiny_system["partition"].read_text())["experts"]}
    return out, run_bench(TINY, output_dir=out / "runs", results_dir=out / "results", models=models)


def test_every_baseline_runs_on_the_same_images(bench):
    _, result = bench
    cells = result.cells
    for key, _ in BASELINES:
        row = cells[f"baseline-{key}"]
        assert row.summary.samples == 150 and row.summary.degraded == 0, key
        assert row.energy.edge_energy_kind == "modelled" and row.energy.server_energy_kind == "modelled"
    edge_only = cells["baseline-edge-only"]
    assert edge_only.summary.offload_rate == 0 and edge_only.energy.server_mj_per_image == 0
    assert cells["baseline-full-offload-general"].summary.offload_rate == 100
    assert cells["baseline-full-offload-general"].energy.edge_compute_mj_per_image == 0  # the edge only sends
    assert cells["baseline-full-offload-expert"].summary.offload_rate == 100
    edge_exec = cells["baseline-edge-execution"]
    assert edge_exec.energy.server_mj_per_image == 0  # experts ran on the edge
    medium = cells["baseline-edge-general"]  # the other reading: the medium model on the edge for every image
    assert medium.summary.offload_rate == 0 and medium.energy.server_mj_per_image == 0
    assert medium.energy.edge_compute_mj_per_image > 0
    # the same general model on every image, once on the edge and once on the server: the same answers
    assert medium.summary.accuracy == cells["baseline-full-offload-general"].summary.accuracy
    assert result.placement["mode"] == "host" and result.placement["label"] == "host CPU (no edge emulation)"
    collab = cells["baseline-collaborative-progressive"]
    assert 15 < collab.summary.offload_rate < 50 and collab.energy.server_mj_per_image > 0
    # edge execution and collaborative make the same routing decisions on the same images, and count the
    # experts' "other" answers alike (edge execution used to report 0 fallbacks whatever happened)
    assert edge_exec.summary.offload_rate == collab.summary.offload_rate
    assert edge_exec.summary.expert_fallbacks == collab.summary.expert_fallbacks
    assert edge_exec.summary.accuracy == collab.summary.accuracy
    lte = cells["link-lte-full-offload-general"].summary.latency_ms.mean
    assert lte > cells["link-wifi-full-offload-general"].summary.latency_ms.mean + 30  # LTE's 40 ms RTT
    # one client in a closed loop never shares a batch; four share at most four (one request each in flight)
    assert cells["clients-1"].mean_batch == 1.0 and cells["clients-1"].requests > 0
    assert 1.0 <= cells["clients-4"].mean_batch <= 4.0 and cells["clients-4"].requests > 0
    # the sweeps run on a stratified subset: every class is there
    assert all(cells[f"tau-{r}-k{k}"].summary.samples == 80 for r in TINY.rates for k in TINY.ks)


def test_report_has_every_table_and_plot(bench):
    out, result = bench
    report = (out / "results" / f"{result.date}-{result.host}-tiny" / "report.md")
    text = report.read_text()
    for heading in ("## Systems on the same test images and link", "## Goals", "## Sweep: tau and k",
                    "## Sweep: links", "## Sweep: edge clients sharing one server", "## Plots"):
        assert heading in text
    for png in ("accuracy_vs_latency", "accuracy_vs_edge_energy", "offload_vs_tau", "server_energy_vs_clients"):
        path = report.parent / f"{png}.png"
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
        assert f"({png}.png)" in text
    assert "modelled" in text and "chipwired" in text
    saved = json.loads((out / "results" / f"{result.date}-{result.host}-tiny.json").read_text())
    assert set(saved["cells"]) == set(result.cells) and len(goals(BenchResult.from_dict(saved))) == 6
    assert "host CPU (no edge emulation)" in text and "edge execution (the medium general model" in text
    assert "near-edge energy (the server alone" in text  # the paper's energy claim read both ways


def test_an_interrupted_bench_resumes_where_it_stopped(bench):
    out, result = bench
    cells = out / "runs" / "bench-tiny" / "cells"
    (cells / "tau-0.4-k3.json").unlink()  # as if the run had stopped before this measurement
    measured = [f for f in cells.glob("*.json") if f.name != "models.json"]  # models.json: where the models are
    kept = {f: f.stat().st_mtime_ns for f in [*(out / "runs").rglob("*.safetensors"), *measured]}
    again = run_bench(TINY, output_dir=out / "runs", results_dir=out / "results")
    # the models and the other measurements were reused: not one of their files was written again
    assert {f: f.stat().st_mtime_ns for f in kept} == kept and len(kept) > 20
    assert (cells / "tau-0.4-k3.json").is_file()
    for name, row in result.cells.items():
        if name != "tau-0.4-k3":
            assert again.cells[name] == row


def test_a_profile_trains_its_progressive_and_static_experts_from_packaged_configs():
    """What run_bench trains when no models are given (the bench's own tests bench the session's tiny system):
    every profile's pipeline names progressive and static experts, from configs that ship with askexpert, with
    the profile's overrides on every step."""
    from askexpert.config import PACKAGED_CONFIGS
    from askexpert_lab.bench.suite import PROFILES

    shipped = {p.stem for p in PACKAGED_CONFIGS.glob("*.yaml")}
    for profile in (*PROFILES.values(), TINY):
        spec = profile.pipeline()
        assert [s.label for s in spec.experts] == ["progressive", "static"] and spec.common == profile.overrides
        assert {spec.generalist, spec.general, *(s.config for s in spec.experts)} <= shipped, profile.name
        static = spec.experts[1]
        assert static.config == profile.static or "experts.strategy=static" in static.overrides

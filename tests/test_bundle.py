"""The deployable bundle and the torch-free edge: contents and hashes, refusals, the import rules, a
fresh venv without torch answering from a bundle, offline and live answers image by image, per-image
costs at batch > 1."""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from askexpert.cli import main
from askexpert.contract.bundle import open_system
from askexpert.contract.schema import SCHEMA_VERSION, SYSTEM_FILE
from askexpert.costs.energy import CostModel
from askexpert.costs.profiles import device, network
from askexpert.errors import CheckpointError
from askexpert.routing import RoutingPolicy, finalize, membership_matrix, route
from askexpert.runtime.clients import HttpExpertClient, InProcessExpertClient
from askexpert.runtime.edge import EdgeRunner, ExpertTarget, Route, summarize
from askexpert.runtime.onnx_model import OnnxGeneralist
from askexpert.runtime.settings import Connection, Control, Inputs
from askexpert.serving.pool import ExpertPool
from askexpert_lab.testbed.server import ServerProcess

SRC = Path(__file__).resolve().parents[1] / "src" / "askexpert"
LAB = Path(__file__).resolve().parents[1] / "lab" / "src" / "askexpert_lab"
HEAVY = ("torch", "torchvision", "timm", "safetensors", "fastapi", "uvicorn", "matplotlib", "onnx")


def test_bundle_holds_every_file_with_its_hash_and_the_calibration(tiny_system):
    bundle = open_system(tiny_system["bundle"])
    m = bundle.manifest
    assert m.schema_version == SCHEMA_VERSION and len(m.experts) == 3 and m.general is not None
    assert {"generalist.onnx", "generalist/model.safetensors", "generalist/model.json",
            "experts/expert-0/model.safetensors", "general/model.safetensors"} <= set(m.files)
    assert all(e.temperature > 0 for e in m.experts) and m.routing.temperature > 0
    op = m.routing.operating_point
    assert op.target == "offload" and op.value == 0.3 and abs(op.val_offload_rate - 30) < 1
    assert m.data.val_images == 600 and m.data.test_images == 600 and m.data.config["split_seed"] == 0
    assert sorted(c for e in m.experts for c in e.classes) == list(range(10))
    # the operating curve: every k offered over a grid of tau, on validation, with the bytes of an offload
    curve = m.curve
    assert curve.ks == [1, 2, 3] and curve.up_bytes == 28 * 28 and 150 < curve.down_bytes < 400
    for k in curve.ks:
        points = curve.for_k(k)
        rates = [p.offload_rate for p in points]
        assert rates == sorted(rates) and rates[0] == 0 and rates[-1] == 100 and len(points) > 40
        assert all(abs(sum(p.expert_share) - 1) < 1e-9 for p in points if p.offload_rate > 0)
    # the bundle's own point is on its curve, with the same figures
    here = next(p for p in curve.for_k(m.routing.k) if p.tau == m.routing.tau)
    assert here.offload_rate == pytest.approx(op.val_offload_rate) and here.accuracy == pytest.approx(op.val_accuracy)


def test_a_damaged_or_foreign_bundle_is_refused(tiny_system, tmp_path):
    copy = tmp_path / "b"
    shutil.copytree(tiny_system["bundle"], copy)
    weights = copy / "experts" / "expert-1" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(CheckpointError, match="does not match its sha256.*fix: copy the bundle again"):
        open_system(copy)
    weights.unlink()
    with pytest.raises(CheckpointError, match="lacks experts/expert-1/model.safetensors"):
        open_system(copy)
    manifest = json.loads((tiny_system["bundle"] / SYSTEM_FILE).read_text())
    (copy / SYSTEM_FILE).write_text(json.dumps({**manifest, "schema_version": 99}))
    with pytest.raises(CheckpointError, match="schema version 99.*reads versions 1, 2, 3, 4, 5 .it writes 5"):
        open_system(copy)
    (copy / SYSTEM_FILE).write_text(json.dumps({**manifest, "routing": {**manifest["routing"], "k": 0}}))
    with pytest.raises(CheckpointError, match="routing.k"):
        open_system(copy)
    with pytest.raises(CheckpointError, match="not a system bundle"):
        open_system(tmp_path)


def test_build_system_cli_writes_an_archive_that_serves(tiny_system, tmp_path, capsys):
    out = tmp_path / "sys"
    assert main(["build-system", "--server", "experts",
                 str(tiny_system["generalist"]), str(tiny_system["experts"]), "--out", str(out),
                 "--accuracy", "40", "--k", "2", "--fallback", "other-or-less-confident", "--archive",
                 "--no-general"]) == 0
    assert "operating point" in capsys.readouterr().out
    bundle = open_system(tmp_path / "sys.tar.gz")  # the archive unpacks to the same, verified, system
    m = bundle.manifest
    assert m.routing.k == 2 and m.routing.fallback == "other-or-less-confident" and m.general is None
    assert m.routing.operating_point.target == "accuracy" and m.routing.operating_point.val_accuracy >= 40
    assert main(["build-system", "--server", "experts",
                 str(tiny_system["generalist"]), str(tiny_system["experts"]), "--out",
                 str(out)]) == 2  # an existing bundle is not overwritten silently
    assert "--overwrite" in capsys.readouterr().err


@pytest.mark.timeout(300)
def test_an_edge_refuses_a_server_holding_another_system(tiny_system, tmp_path, capsys):
    """A bundle's edge routes by its own partition: against a server holding another system it would
    send images to the wrong experts, so it stops at once, naming both systems and the fix."""
    other = tmp_path / "other"
    assert main(["build-system", "--server", "experts",
                 str(tiny_system["generalist"]), str(tiny_system["experts"]), "--out", str(other),
                 "--offload", "0.5"]) == 0
    capsys.readouterr()
    with ServerProcess(tiny_system["bundle"], threads=1) as url:
        assert main(["edge", str(other), "--server", url, "--input", str(_test_npz(tiny_system, tmp_path / "t.npz", 8)),
                     "--predictions", str(tmp_path / "p.csv")]) == 2
    err = capsys.readouterr().err
    assert "serves another system" in err and "askexpert serve BUNDLE" in err
    assert open_system(other).system_id[:12] in err


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_import_rules():
    """Run time never climbs back into build time: serving and the runtime import nothing from training,
    routing and the contract import no torch (tests/test_architecture.py checks the layers)."""
    for package in ("serving", "runtime", "routing"):
        for f in (SRC / package).glob("*.py"):
            bad = {n for n in _imports(f) if n.startswith(("askexpert.training", "askexpert_lab.bench"))}
            assert not bad, f"{f.relative_to(SRC)} imports {bad}"
    for f in [*(SRC / "routing").glob("*.py"), *(SRC / "contract").glob("*.py"),
              SRC / "runtime" / "edge.py", SRC / "runtime" / "onnx_model.py", SRC / "runtime" / "session.py",
              SRC / "runtime" / "clients.py", SRC / "runtime" / "inputs.py",
              SRC / "costs" / "energy.py", SRC / "imageio.py", SRC / "splits.py", SRC / "paths.py",
              SRC / "runtime" / "pacing.py", LAB / "bench" / "local_experts.py", SRC / "runtime" / "records.py",
              SRC / "security.py", SRC / "corruptions.py", SRC / "runtime" / "control.py",
              SRC / "runtime" / "link.py", SRC / "costs" / "plan.py",
              *(LAB / "testbed").glob("*.py")]:  # costs.references exports a reference model with torch, once
        heavy = {n for n in _imports(f) if n.split(".")[0] in HEAVY}
        assert not heavy, f"{f} imports {heavy}"
    # and at run time: importing the edge's modules loads no heavy package
    code = ("import sys; import askexpert.cli, askexpert.runtime.session, askexpert.runtime.onnx_model, "
            "askexpert.routing, askexpert.costs.energy, askexpert_lab.testbed.placement, askexpert_lab.testbed.worker, "
            "askexpert_lab.bench.local_experts, askexpert.runtime.control, askexpert.costs.plan, "
            "askexpert.corruptions, askexpert_lab.testbed.measure, askexpert_lab.testbed.competing; "
            f"print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r} "
            "or m.startswith('askexpert.training')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def _test_npz(tiny_system, path: Path, n: int) -> Path:
    from askexpert.config import DataConfig
    from askexpert.data import load_dataset

    cfg = open_system(tiny_system["bundle"]).manifest.data.config
    test = load_dataset(DataConfig(**cfg)).test
    np.savez(path, images=test.images[:n].numpy(), labels=test.labels[:n].numpy())
    return path


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_fresh_venv_without_torch_answers_from_the_bundle(tiny_system, bundle_server, tmp_path, floor):
    """`pip install askexpert` (the edge) into a new venv: no torch arrives, and `askexpert edge BUNDLE`
    answers test images against a running server with ONNX Runtime, NumPy and httpx."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    install = subprocess.run([str(py), "-m", "pip", "install", "--quiet", str(SRC.parents[1])],
                             capture_output=True, text=True)
    assert install.returncode == 0, install.stderr[-2000:]
    listed = subprocess.run([str(py), "-m", "pip", "list", "--format=json"], capture_output=True, text=True,
                            check=True).stdout
    installed = {p["name"].lower() for p in json.loads(listed)}
    assert "onnxruntime" in installed and not installed & {"torch", "torchvision", "timm", "fastapi"}
    images = _test_npz(tiny_system, tmp_path / "test.npz", 120)
    run = subprocess.run([str(venv / "bin" / "askexpert"), "edge", str(tiny_system["bundle"]), "--server",
                          bundle_server, "--input", str(images), "--batch-size", "4", "--summary",
                          str(tmp_path / "s.json")], capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["samples"] == 120 and summary["degraded"] == 0 and summary["offload_rate"] > 5
    assert summary["backend"] == "onnx"
    floor("tiny system: the torch-free edge, accuracy on 120 images", summary["accuracy"], 30)  # chance 10%
    # a command that needs the full install says so instead of a traceback
    train = subprocess.run([str(venv / "bin" / "askexpert"), "train", "generalist", "--epochs", "1"],
                           capture_output=True, text=True, cwd=tmp_path)
    assert train.returncode == 2 and "askexpert[all]" in train.stderr


def _offline_answers(tiny_system, policy: RoutingPolicy):
    """What the offline evaluation says the system answers on the bundle's test images."""
    from askexpert.models import open_checkpoint
    from askexpert.models.runs import open_expert_run
    from askexpert.system.calibrate import load_experts, outputs_of

    gen = outputs_of(open_checkpoint(tiny_system["generalist"]), "the generalist")
    experts = load_experts(open_expert_run(tiny_system["experts"]), "static", gen)
    d = route(gen.test_logits, policy, membership_matrix(experts.subsets, 10))
    final, fell_back = finalize(d, *experts.test.for_route(d.expert), policy)
    return d, final, fell_back, gen.test_labels


@pytest.mark.timeout(300)
@pytest.mark.parametrize("fallback", ["other", "other-or-less-confident"])
def test_offline_and_live_answers_agree_image_by_image(tiny_system, bundle_server, tmp_path, fallback):
    """The server answers with the experts' calibrated temperatures (from the bundle), so the live system
    over HTTP gives, image by image, what the offline evaluation computes from saved logits."""
    bundle = open_system(tiny_system["bundle"])
    r = bundle.manifest.routing
    policy = RoutingPolicy(tau=r.tau, k=r.k, temperature=r.temperature, fallback=fallback)
    d, final, fell_back, labels = _offline_answers(tiny_system, policy)
    images = np.load(_test_npz(tiny_system, tmp_path / "t.npz", 600))["images"]
    experts = [ExpertTarget(e.id, list(e.classes)) for e in bundle.manifest.experts]
    with HttpExpertClient(bundle_server) as client:
        runner = EdgeRunner(OnnxGeneralist(bundle.generalist_onnx, threads=1), policy, client, experts)
        traces = list(runner.run((images[i:i + 8], labels[i:i + 8]) for i in range(0, len(images), 8)))
    live = np.array([t.pred for t in traces])
    assert np.array_equal(np.array([t.route.offloaded for t in traces]), d.offload)
    assert np.array_equal(live, final), f"{int((live != final).sum())} of {len(live)} answers differ"
    assert [t.route is Route.EXPERT_FALLBACK for t in traces] == fell_back.tolist()
    if fallback == "other-or-less-confident":
        assert fell_back.sum() > 0  # the rule did act on some images


@pytest.mark.timeout(300)
def test_a_learned_deferral_bundle_answers_live_as_offline(tiny_system, bundle_server, tmp_path, capsys):
    """build-system --deferral learned: the rule fitted on validation travels in system.json (schema 3), tau
    is chosen on its score, and the edge, one image at a time over HTTP, answers what the offline evaluation
    computes; the edge refuses another k for it, and runs the bundle end to end against its own server."""
    out = tmp_path / "learned"
    assert main(["build-system", "--server", "experts",
                 str(tiny_system["generalist"]), str(tiny_system["experts"]), "--out", str(out),
                 "--deferral", "learned", "--no-general"]) == 0
    assert "learned deferral" in capsys.readouterr().out
    bundle = open_system(out)
    m, r = bundle.manifest, bundle.manifest.routing
    assert m.schema_version == SCHEMA_VERSION and r.confidence == "learned" and r.deferral.fitted_on == 600
    assert m.curve.ks == [r.k] == [3] and abs(r.operating_point.val_offload_rate - 30) < 1
    policy = RoutingPolicy.from_spec(r)
    d, final, _, labels = _offline_answers(tiny_system, policy)
    images = np.load(_test_npz(tiny_system, tmp_path / "t.npz", 600))["images"]
    experts = [ExpertTarget(e.id, list(e.classes)) for e in m.experts]
    with HttpExpertClient(bundle_server) as client:  # the same experts at the same temperatures
        runner = EdgeRunner(OnnxGeneralist(bundle.generalist_onnx, threads=1), policy, client, experts)
        traces = list(runner.run((images[i:i + 1], labels[i:i + 1]) for i in range(len(images))))
    assert np.array_equal(np.array([t.route.offloaded for t in traces]), d.offload)
    assert np.array_equal(np.array([t.pred for t in traces]), final)
    assert 0.2 < d.offload.mean() < 0.4
    from askexpert.errors import ConfigError
    from askexpert.runtime.session import EdgeSettings, run_edge

    with ServerProcess(out, threads=1) as url:
        report = run_edge(EdgeSettings(system=out, threads=1, connection=Connection(server=url),
                                       inputs=Inputs(limit=60)))
        assert report.summary.degraded == 0 and report.policy.confidence == "learned"
        with pytest.raises(ConfigError, match="fitted at k 3, not k 2.*--confidence max-prob"):
            run_edge(EdgeSettings(system=out, threads=1, connection=Connection(server=url), inputs=Inputs(limit=10),
                                  control=Control(k=2)))
    # a rule on features this code does not compute (another askexpert's) is refused, naming the fixes
    raw = json.loads((out / SYSTEM_FILE).read_text())
    raw["routing"]["deferral"]["features"][0] = "p1 from elsewhere"
    (out / SYSTEM_FILE).write_text(json.dumps(raw))
    with pytest.raises(ConfigError, match="other features than this version computes.*build the bundle again"):
        run_edge(EdgeSettings(system=out, threads=1, connection=Connection(server=None), inputs=Inputs(limit=1)))


@pytest.mark.timeout(300)
def test_edge_execution_counts_its_fallbacks(tiny_system):
    """Experts run on the edge (edge execution) report their fallbacks like the offloaded system does."""
    bundle = open_system(tiny_system["bundle"])
    r = bundle.manifest.routing
    policy = RoutingPolicy(tau=r.tau, k=r.k, temperature=r.temperature, fallback="other-or-less-confident")
    d, final, fell_back, labels = _offline_answers(tiny_system, policy)
    from askexpert.config import DataConfig
    from askexpert.data import load_dataset

    images = load_dataset(DataConfig(**bundle.manifest.data.config)).test.images.numpy()
    pool = ExpertPool(tiny_system["bundle"], device="cpu", include_general=False)
    experts = [ExpertTarget(e.id, list(e.classes)) for e in bundle.manifest.experts]
    runner = EdgeRunner(OnnxGeneralist(bundle.generalist_onnx, threads=1), policy, InProcessExpertClient(pool),
                        experts, experts_on_edge=True)
    traces = list(runner.run((images[i:i + 16], labels[i:i + 16]) for i in range(0, len(images), 16)))
    summary = summarize(traces)
    assert summary.expert_fallbacks == int(fell_back.sum()) > 0
    assert all(t.expert_on_edge for t in traces if t.route.offloaded)


@pytest.mark.timeout(300)
def test_per_image_costs_at_batch_four_add_up_to_the_measured_batch(tiny_system, bundle_server, tmp_path):
    bundle = open_system(tiny_system["bundle"])
    data = np.load(_test_npz(tiny_system, tmp_path / "t.npz", 200))
    images, labels = data["images"], data["labels"]
    r = bundle.manifest.routing
    policy = RoutingPolicy(tau=r.tau, k=r.k, temperature=r.temperature)
    experts = [ExpertTarget(e.id, list(e.classes)) for e in bundle.manifest.experts]
    with HttpExpertClient(bundle_server) as client:
        runner = EdgeRunner(OnnxGeneralist(bundle.generalist_onnx, threads=1), policy, client, experts)
        batches = [runner.process(images[i:i + 4], labels[i:i + 4], i) for i in range(0, len(images), 4)]
    checked = 0
    for batch in batches:
        assert sum(t.edge_share_ms for t in batch) == pytest.approx(batch[0].edge_ms)  # the generalist's batch
        for expert in {t.expert for t in batch if t.route.offloaded}:
            asked = [t for t in batch if t.expert == expert and t.route.offloaded]
            # one client: each request ran as one server batch, so its images' shares add up to its compute
            assert sum(t.expert_share_ms for t in asked) == pytest.approx(asked[0].expert_ms)
            checked += len(asked) > 1
    assert checked > 0  # some requests carried several images
    traces = [t for batch in batches for t in batch]
    energy = CostModel(device("raspberry-pi-4"), device("h100-batch1"), network("wifi")).energy(traces)
    edge_j = 5.4 * sum(batch[0].edge_ms for batch in batches) / 1000
    assert energy.edge_compute_mj_per_image == pytest.approx(1000 * edge_j / len(traces))
    server_ms = sum(t.expert_share_ms for t in traces)
    assert energy.server_mj_per_image == pytest.approx(143.0 * server_ms / len(traces))


def test_an_archive_that_climbs_out_of_its_folder_is_refused(tmp_path):
    """A crafted bundle archive (a member named ../...) is refused before anything is written outside,
    on every Python (the standard library's data filter where it exists, the same checks by hand before)."""
    import io
    import tarfile

    archive = tmp_path / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        data = b"{}"
        info = tarfile.TarInfo("../escaped/system.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    with pytest.raises(CheckpointError, match="bundle archive"):
        open_system(archive)
    assert not (tmp_path / "escaped").exists() and not list(Path("/tmp").glob("escaped/system.json"))

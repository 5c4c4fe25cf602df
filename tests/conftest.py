"""Shared fixtures: the real Fashion-MNIST files, writers of the exact on-disk dataset formats, the tiny trained
system and its servers, and :func:`provided` (what the test install provides fails when missing, never skips)."""

from __future__ import annotations

import functools
import gzip
import http.server
import json
import os
import pickle
import shutil
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest

from askexpert.data import fashion_mnist

DEV_INSTALL = "scripts/bootstrap.sh (or pip install -e '.[dev]'), which make test runs first"


def provided(module: str, install: str = DEV_INSTALL):
    """Import ``module``, which the test install provides: missing, the test fails and names the install.
    Never a skip: a skip stays only where the machine cannot have the thing (root, a cgroup controller, a
    GPU, an energy counter, x86-64 glibc), and pytest's -ra names each one in the run's log."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as err:
        pytest.fail(f"{module} is not installed ({err}); the test install provides it: {install}", pytrace=False)


def metric(server, line_start: str) -> float:
    """The sum of the server's own Prometheus samples whose line starts with ``line_start`` (its /metrics;
    ``server`` an ``httpx.Client`` on it, carrying any token, or its URL)."""
    import httpx

    text = (server.get("/metrics") if isinstance(server, httpx.Client) else httpx.get(f"{server}/metrics")).text
    return sum(float(x.split()[-1]) for x in text.splitlines() if x.startswith(line_start))


# a token in the developer's environment would make every test server demand it: tests pass tokens explicitly
os.environ.pop("ASKEXPERT_TOKEN", None)

WORKER = os.environ.get("PYTEST_XDIST_WORKER")  # make test runs the suite in one worker a core (pytest-xdist)
TRAIN_THREADS = 1 if WORKER else 2  # what a test's training asks for: a worker's one core, or both alone
if WORKER:  # each worker's torch, and the servers and runs it starts, on one thread: two workers do not
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # oversubscribe the cores
    import torch

    torch.set_num_threads(1)


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups (its hook turns them into node ids)
def pytest_collection_modifyitems(config, items) -> None:
    """How `make test`'s workers (pytest-xdist, ``--dist loadgroup``) share the suite: a test that uses a
    module-scoped fixture (a trained run, a server) is grouped with its module, so the fixture is built once;
    the tests that time themselves against this host (marked ``alone``, or using ``host_reference_ms``) form
    one group, run last, each while no other test runs (:func:`pytest_runtest_protocol`); every other test
    goes where a worker is free. The slow tests come first (those that need the tiny system after those that do
    not, but one of them at the very start, so one worker builds it while the other takes the long smoke
    profiles) and the short ones fill in at the end (a sequential run only changes its order)."""
    for item in items:
        defs = getattr(item, "_fixtureinfo", None)
        scopes = {d.scope for fixture in (defs.name2fixturedefs.values() if defs else ()) for d in fixture}
        if "host_reference_ms" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.alone)
        if item.get_closest_marker("alone"):
            item.add_marker(pytest.mark.xdist_group("alone"))
        elif "module" in scopes:
            item.add_marker(pytest.mark.xdist_group(item.module.__name__))
    def order(item) -> tuple[bool, bool, bool]:
        tiny = "tiny_system" in getattr(item, "fixturenames", ())
        return item.get_closest_marker("alone") is not None, item.get_closest_marker("slow") is None, tiny

    items.sort(key=order)  # stable within each part
    first = next((i for i, item in enumerate(items) if order(item) == (False, False, True)), None)
    if first is not None:  # the first slow test that needs the tiny system: one worker starts by building it
        items.insert(0, items.pop(first))


GROUPS_LOST = ("pytest 9.2 no longer lets pytest-xdist 3.8 write a group into a node id "
               "(pytest-dev/pytest-xdist#1386); fix: pip install 'pytest<9.2' (pyproject.toml's dev extra pins it)")


def pytest_configure(config) -> None:
    """make test's grouping needs a pytest that lets pytest-xdist mark groups in node ids (below)."""
    if getattr(config.option, "dist", "no") == "loadgroup" and not hasattr(config, "workerinput"):
        import xdist
        from packaging.version import Version

        if Version(pytest.__version__) >= Version("9.2") and Version(xdist.__version__) <= Version("3.8.0"):
            pytest.exit(f"pytest {pytest.__version__} with pytest-xdist {xdist.__version__}: --dist loadgroup would "
                        f"not group the tests, so every worker would build every module's fixture. {GROUPS_LOST}",
                        returncode=3)


LOST_GROUPS = pytest.StashKey[set]()


def pytest_collection_finish(session) -> None:
    """A worker notes the grouped tests whose group did not reach the scheduler (pytest-xdist marks a group in the
    test's node id, which pytest 9.2 no longer lets it change: pytest-dev/pytest-xdist#1386); each of them then fails
    before its fixtures are built (below), rather than every worker silently building every module's fixture."""
    if getattr(session.config, "workerinput", None) and session.config.getvalue("loadgroup"):
        session.config.stash[LOST_GROUPS] = {item.nodeid for item in session.items
                                             if item.get_closest_marker("xdist_group") and "@" not in item.nodeid}


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item) -> None:
    if item.nodeid in item.config.stash.get(LOST_GROUPS, set()):
        pytest.fail(f"pytest {pytest.__version__} dropped this test's xdist group from its node id, so the workers "
                    f"would each build its module's fixture. {GROUPS_LOST}", pytrace=False)


def pytest_xdist_make_scheduler(config, log):
    """xdist's group scheduling, handing the groups out in the order above (xdist's own puts the largest
    groups first, whatever they cost)."""
    from xdist.scheduler import LoadGroupScheduling

    class InOrder(LoadGroupScheduling):
        def _assign_work_unit(self, node) -> None:
            if not getattr(self, "_in_order", False):
                first: dict[str, int] = {}
                for i, nodeid in enumerate(self.collection):
                    first.setdefault(self._split_scope(nodeid), i)
                for scope in sorted(self.workqueue, key=first.__getitem__):
                    self.workqueue.move_to_end(scope)
                self._in_order = True
            super()._assign_work_unit(node)

    return InOrder(config, log) if config.getoption("dist") == "loadgroup" else None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """Under make test's workers, every test holds a shared lock for its setup, run and teardown, and an
    ``alone`` test the exclusive one: it waits for the other workers' current tests, and a turnstile keeps
    them from starting new ones meanwhile. A sequential run takes no lock."""
    workerinput = getattr(item.config, "workerinput", None)
    if workerinput is None:
        yield
        return
    import fcntl

    # beside the workers' own temporary folders (xdist puts them in the run's): pytest deletes it with them
    folder = item.config._tmp_path_factory.getbasetemp().parent / f"suite-locks-{workerinput['testrunuid']}"
    folder.mkdir(exist_ok=True)
    alone = item.get_closest_marker("alone") is not None
    with open(folder / "turnstile", "a") as turnstile, open(folder / "tests", "a") as tests:
        fcntl.flock(turnstile, fcntl.LOCK_EX)
        try:
            fcntl.flock(tests, fcntl.LOCK_EX if alone else fcntl.LOCK_SH)
        finally:
            fcntl.flock(turnstile, fcntl.LOCK_UN)
        try:
            yield
        finally:
            fcntl.flock(tests, fcntl.LOCK_UN)


def pytest_report_header(config) -> str:
    """Which arithmetic the suite's training runs use: the suite must pass on both (README, 'Development')."""
    import torch

    from askexpert.training.engine import PRECISION_ENV, cpu_has_native_bf16, training_precision

    native = "has" if cpu_has_native_bf16() else "has no"
    return (f"training precision: {training_precision(torch.device('cpu'), True)} "
            f"({PRECISION_ENV}={os.environ.get(PRECISION_ENV, 'auto')}; this CPU {native} native bfloat16)")


@pytest.fixture(scope="session")
def floor():
    """``floor(what, value, minimum)``: assert that a trained model clears a floor well above chance, and,
    where ``$ASKEXPERT_FLOOR_LOG`` names a file, append what was measured to it (one JSON line, with the
    training precision), which is how the margins in docs/testing.md were measured on both precision paths."""

    import torch

    from askexpert.config import SEED_ENV
    from askexpert.training.engine import training_precision

    log = os.environ.get("ASKEXPERT_FLOOR_LOG")
    precision = training_precision(torch.device("cpu"), True)

    def check(what: str, value: float, minimum: float) -> None:
        if log:
            with open(log, "a") as f:
                f.write(json.dumps({"what": what, "value": round(float(value), 2), "floor": minimum,
                                    "precision": precision, "seed": int(os.environ.get(SEED_ENV) or 0)})
                        + "\n")
        assert value > minimum, f"{what}: {value:.2f} is not above its floor {minimum}"

    return check


@pytest.fixture(scope="session")
def fmnist_dir() -> Path:
    """The directory of the real Fashion-MNIST files (Debian's package, $ASKEXPERT_DATA or the cache)."""
    return fashion_mnist.locate(None, allow_download=False)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Downloads and cache lookups go to a per-test directory, never to the user's cache."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write ``array`` (uint8) as an IDX file, gzipped when ``path`` ends in .gz."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    payload = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)


def write_fmnist_subset(directory: Path, source: Path, n_train: int = 600, n_test: int = 200) -> Path:
    """Copy the first images of the real Fashion-MNIST into ``directory`` in the IDX format."""
    directory.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
        images, labels = fashion_mnist.load_split(source, split)
        img_stem, lbl_stem = fashion_mnist.FILES[split]
        write_idx(directory / f"{img_stem}.gz", images[:n, 0].numpy())
        write_idx(directory / f"{lbl_stem}.gz", labels[:n].numpy().astype(np.uint8))
    return directory


def _pickle(path: Path, obj: dict) -> None:
    # Python 2 era pickles (protocol 2) with str keys, as in the published archives.
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def write_cifar100(root: Path, n_train: int = 200, n_test: int = 100, seed: int = 0) -> Path:
    """A small dataset in the exact ``cifar-100-python`` layout: train, test, meta pickles."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    for name, n in (("train", n_train), ("test", n_test)):
        fine = rng.permutation(np.arange(n) % 100)  # every class present once n >= 100
        _pickle(folder / name, {
            "filenames": [f"img_{i}.png" for i in range(n)],
            "batch_label": f"{name}ing batch 1 of 1",
            "fine_labels": fine.tolist(),
            "coarse_labels": (fine // 5).tolist(),
            "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        })
    _pickle(folder / "meta", {
        "fine_label_names": [f"fine_{i:02d}" for i in range(100)],
        "coarse_label_names": [f"coarse_{i:02d}" for i in range(20)],
    })
    return folder


def write_cifar10(root: Path, per_batch: int = 50, seed: int = 0) -> Path:
    """A small dataset in the exact ``cifar-10-batches-py`` layout."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        _pickle(folder / name, {
            "batch_label": name,
            "labels": rng.integers(0, 10, per_batch).tolist(),
            "data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
            "filenames": [f"{name}_{i}.png" for i in range(per_batch)],
        })
    _pickle(folder / "batches.meta", {
        "label_names": ["airplane", "automobile", "bird", "cat", "deer",
                        "dog", "frog", "horse", "ship", "truck"],
        "num_cases_per_batch": per_batch, "num_vis": 3072,
    })
    return folder


def make_tar_gz(folder: Path, archive: Path) -> Path:
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=folder.name)
    return archive


@pytest.fixture
def http_server():
    """Serve a directory over real HTTP on a loopback port; yields a function dir -> base URL."""
    servers = []

    def serve(directory: Path) -> str:
        handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(directory))
        handler.log_message = lambda *a, **k: None
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/"

    yield serve
    for server in servers:
        server.shutdown()
        server.server_close()


TINY_COMMON = ("data.train_subset=2000", "data.val_subset=600", "data.test_subset=600", "model.kwargs.depth=1",
               "train.epochs=3", "train.lr=0.003")


def _tiny_spec():
    from askexpert.system.pipeline import ExpertsStep, PipelineSpec

    return PipelineSpec(None, None, (ExpertsStep("static", None, ("name=experts", "experts.strategy=static",
                                                                  "experts.passes=1")),
                                     ExpertsStep("progressive", None, ("name=experts-progressive",
                                                                       "experts.strategy=progressive",
                                                                       "experts.passes=1"))),
                        common=TINY_COMMON, generalist_overrides=("name=generalist", "model.name=vit-edge-28"),
                        general_overrides=("name=general", "model.name=vit-expert-28", "experts.strategy=general"))


def _content_key(recipe: str) -> str:
    """What the tiny system is made from: the recipe, every file of askexpert's source and configs, the
    training precision and seed, torch's version. Any change of them makes another key (a rebuild)."""
    import hashlib

    import torch

    from askexpert.config import SEED_ENV
    from askexpert.training.engine import training_precision

    h = hashlib.sha256(recipe.encode())
    src = Path(__file__).resolve().parents[1] / "src" / "askexpert"
    for path in sorted(p for p in src.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        h.update(str(path.relative_to(src)).encode() + b"\0" + path.read_bytes())
    h.update(f"{training_precision(torch.device('cpu'), True)} {os.environ.get(SEED_ENV)} {torch.__version__}".encode())
    return h.hexdigest()[:20]


def _intact(root: Path) -> bool:
    """Whether every file recorded when ``root`` was built is there with its sha256. Logits caches are not
    recorded: a test may rewrite one for another dataset config, and each is checked against its own key (its
    weights' sha256, data config and split) where it is read; files added since do not matter."""
    from askexpert.contract.bundle import sha256_file

    manifest = root / "tiny-system.json"
    if not manifest.is_file():
        return False
    recorded = json.loads(manifest.read_text())["files"]
    return all((root / f).is_file() and sha256_file(root / f) == digest for f, digest in recorded.items())


@pytest.fixture(scope="session")
def tiny_system(tmp_path_factory, fmnist_dir):
    """A real, quickly trained system on 2,000 Fashion-MNIST images (the one pipeline): a one-block
    generalist, a one-block general model (3 epochs each), a 3-expert confusion partition, static and
    progressive experts (one pass each; about 40 s on 2 cores in bf16, 45 in float32), and the static
    experts' deployable bundle. Shared by every test that needs trained models.

    Built once a session and kept content-addressed (``ASKEXPERT_TEST_CACHE``, default
    ``$XDG_CACHE_HOME/askexpert/test-systems``, ``~/.cache`` without it), under a file lock (make test's
    workers build it once): the next session on this machine reuses it when its key (the recipe,
    askexpert's source, precision, seed, torch) is the same and every file it was built with is intact, and
    builds it again otherwise. A fresh machine (CI) always builds it."""
    from filelock import FileLock

    from askexpert.contract.bundle import sha256_file
    from askexpert.paths import user_cache_dir
    from askexpert.system.build import Operating, build_system
    from askexpert.system.pipeline import train_system

    spec = _tiny_spec()
    cache = Path(os.environ.get("ASKEXPERT_TEST_CACHE") or user_cache_dir() / "test-systems")
    out = cache / _content_key(repr(spec) + " bundle offload=0.3 k=3")
    cache.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out) + ".lock"):  # the suite's workers (make test: two) build it once, the others wait
        if not _intact(out):
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir(parents=True)
            trained = train_system(spec, out)
            build_system(trained.generalist, trained.experts["static"], out / "bundle", Operating(offload=0.3, k=3))
            files = {str(p.relative_to(out)): sha256_file(p) for p in sorted(out.rglob("*"))
                     if p.is_file() and "logits" not in p.relative_to(out).parts}  # logits: keyed on their own
            (out / "tiny-system.json").write_text(json.dumps({"recipe": repr(spec), "files": files}, indent=1))
        trained = train_system(spec, out)  # every step finished: read back, nothing trained
    return {"generalist": trained.generalist, "general": trained.general, "experts": trained.experts["static"],
            "progressive": trained.experts["progressive"],
            "partition": trained.partition, "bundle": out / "bundle"}


@pytest.fixture(scope="session")
def bundle_server_process(tiny_system):
    """One real server (a child process on a loopback port) over the tiny system's bundle, shared by the
    tests that only send it requests: each start costs seconds (torch, the models, TorchScript)."""
    from askexpert_lab.testbed.server import ServerProcess

    server = ServerProcess(tiny_system["bundle"], threads=1)
    with server:
        yield server


@pytest.fixture(scope="session")
def bundle_server(bundle_server_process):
    """The shared server's URL."""
    return bundle_server_process.url


@pytest.fixture(scope="session")
def experts_server(tiny_system):
    """The same over the tiny system's expert run directory (no system id)."""
    from askexpert_lab.testbed.server import ServerProcess

    with ServerProcess(tiny_system["experts"], threads=1) as url:
        yield url

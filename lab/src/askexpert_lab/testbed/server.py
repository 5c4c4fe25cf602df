"""Run ``askexpert serve`` as a child process on a free loopback port, and stop it cleanly."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from askexpert.errors import AskExpertError
from askexpert.security import tls_context

# the ports a local Ray cluster takes by default once it starts (GCS, dashboard, client server, the dashboard
# agent's HTTP port, Serve's HTTP port): a port picked free before Ray starts may be taken by it after
RAY_DEFAULT_PORTS = frozenset({6379, 8000, 8265, 10001, 52365})


def free_port(host: str = "127.0.0.1") -> int:
    """A port free on ``host`` now, never one of Ray's defaults (a Ray backend would race for it)."""
    while True:
        with socket.socket() as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
        if port not in RAY_DEFAULT_PORTS:
            return port


class ServerProcess:
    """``with ServerProcess(bundle_or_run) as url:`` starts the expert server and waits until it answers."""

    ready_path = "/v1/health"

    def __init__(self, source: Path, *, port: int | None = None, host: str = "127.0.0.1", threads: int | None = 1,
                 extra_args: list[str] | None = None, startup_timeout_s: float = 120.0,
                 log_path: Path | None = None, cpus: list[int] | None = None, token: str | None = None,
                 scheme: str = "http", ca_file: Path | None = None) -> None:
        """``cpus`` pins the server (every thread it starts) to those cores: the near-edge side of a
        one-host testbed (:mod:`askexpert_lab.testbed.placement`). ``token``, ``scheme`` and ``ca_file``:
        how to reach a server started with a token (pass ``--token-file`` in ``extra_args``) or TLS."""
        self.source, self.host = Path(source), host
        self.port = port or free_port(host)
        self.threads, self.extra_args = threads, extra_args or []
        self.startup_timeout_s = startup_timeout_s
        self.log_path = log_path
        self.cpus = cpus
        self.proc: subprocess.Popen | None = None
        self.scheme, self.token, self.ca_file = scheme, token, ca_file

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "askexpert.cli", "serve", str(self.source), "--host", self.host,
                "--port", str(self.port), *self.extra_args]

    def start(self) -> str:
        args = self.command()
        env = dict(os.environ)
        if self.threads:
            args += ["--threads", str(self.threads)]
            env["OMP_NUM_THREADS"] = str(self.threads)
        log = open(self.log_path, "w") if self.log_path else subprocess.DEVNULL  # noqa: SIM115 (kept open)
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT if self.log_path else subprocess.PIPE,
                                     env=env, start_new_session=self.own_group)
        if self.cpus:  # before the interpreter starts its threads: they inherit the mask
            os.sched_setaffinity(self.proc.pid, set(self.cpus))
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                last = (err.strip().splitlines() or ["(see the server log)"])[-1]
                raise AskExpertError(f"the expert server exited with status {self.proc.returncode}: {last}",
                                     fix=f"run it by hand to see why: askexpert serve {self.source}")
            try:
                if self.is_ready():
                    return self.url
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.stop()
        raise AskExpertError(f"the expert server did not answer within {self.startup_timeout_s:.0f} s",
                             fix=f"run it by hand to see why: askexpert serve {self.source}")

    def is_ready(self) -> bool:
        return httpx.get(f"{self.url}{self.ready_path}", timeout=1.0, verify=tls_context(self.ca_file),
                         headers={"Authorization": f"Bearer {self.token}"} if self.token else None).status_code == 200

    own_group = False  # a server whose children must go with it (Triton's) runs in a process group of its own

    def stop(self, kill: bool = False) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        sig = signal.SIGKILL if kill else signal.SIGTERM
        if self.own_group:
            os.killpg(self.proc.pid, sig)
        else:
            self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=30)  # a Ray Serve backend takes its cluster down first
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def triton_python() -> str | None:
    """An interpreter that can run ``serve --backend triton`` (PyTriton installed): ``ASKEXPERT_TRITON_PYTHON``,
    this one, or the repository's ``.venv-triton`` (scripts/bootstrap.sh makes it); None: none here."""
    import importlib.util

    given = os.environ.get("ASKEXPERT_TRITON_PYTHON")
    if given:
        return given
    if importlib.util.find_spec("pytriton") is not None:
        return sys.executable
    # this file is lab/src/askexpert_lab/testbed/server.py: parents[4] is the repository
    local = Path(__file__).resolve().parents[4] / ".venv-triton" / "bin" / "python"
    return str(local) if local.is_file() else None


class TritonProcess(ServerProcess):
    """``askexpert serve --backend triton REPO`` (a real Triton through PyTriton) as a child process group:
    ready when Triton's ``/v2/health/ready`` says so; stopping it stops tritonserver too."""

    ready_path = "/v2/health/ready"
    own_group = True

    def __init__(self, repo: Path, *, python: str, **kw) -> None:
        from askexpert.contract.triton_repo import read_manifest

        kw.setdefault("port", free_port_run(3))
        super().__init__(repo, **kw)
        self.python = python
        self.models = [m.name for m in read_manifest(repo)[1]]  # read once, not at every readiness poll

    def is_ready(self) -> bool:
        """Triton is up and every model of the repository is loaded (Triton says ready before it loads them)."""
        return super().is_ready() and all(
            httpx.get(f"{self.url}/v2/models/{name}/ready", timeout=1.0).status_code == 200 for name in self.models)

    def command(self) -> list[str]:
        return [self.python, "-m", "askexpert.cli", "serve", "--backend", "triton", str(self.source),
                "--host", self.host, "--port", str(self.port), *self.extra_args]


def free_port_run(n: int, host: str = "127.0.0.1") -> int:
    """The first of ``n`` consecutive ports free on ``host`` now (Triton's HTTP, gRPC and metrics ports)."""
    while True:
        first = free_port(host)
        try:
            for port in range(first + 1, first + n):
                with socket.socket() as s:
                    s.bind((host, port))
        except OSError:
            continue
        return first


def server_pacing(bundle, server_device_name: str, known: Path) -> tuple[list[str], dict | None]:
    """``askexpert serve``'s flags that pace a bundle's server to a near-edge device (the images in ``known``
    answered ahead), and each served model's graph features by expert id, what its energy is priced from
    (``[]`` and None for ``host``)."""
    if server_device_name == "host":
        return [], None
    from askexpert.contract.labels import GENERAL
    from askexpert.costs.device_model import graph_features
    from askexpert.models.onnx_export import cached_onnx

    m = bundle.manifest
    features = {e.id: graph_features(cached_onnx(bundle.path(e.checkpoint))) for e in m.experts}
    if m.general is not None:
        features[GENERAL] = graph_features(cached_onnx(bundle.path(m.general.checkpoint)))
    return ["--server-device", server_device_name, "--known-images", str(known)], features

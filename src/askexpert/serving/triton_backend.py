"""``askexpert serve --backend triton``: a real Triton Inference Server serving an exported repository's experts
(:mod:`askexpert.contract.triton_repo`), through PyTriton, whose wheel bundles ``tritonserver`` with its Python
backend (x86-64 glibc Linux; ``pip install 'askexpert[triton]'`` in an environment of its own, as PyTriton
pins NumPy below 2). Torch-free: each model is its ONNX file in ONNX Runtime, inside the function PyTriton
binds; Triton does the HTTP and gRPC serving (the Open Inference Protocol) and the dynamic batching, configured
from the repository (max batch size, queue delay, instances).

Each model carries the bundle's system id in its configuration's parameters (``GET /v2/models/{name}/config``),
as the repository's ``config.pbtxt`` does for a Triton started by hand, so the edge's pin holds either way.

Triton's Python-backend stub links the system's ``libpython``; where this interpreter is another build of the
same version (pyenv against Debian's), the stub fails with ``'_thread.RLock' object has no attribute
'_recursion_count'``: :func:`stub_library_path` puts this interpreter's own library directory first.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import platform
import signal
import sysconfig
from collections.abc import Callable
from pathlib import Path

import numpy as np

from askexpert.contract.oip import INPUT, OUTPUT, SYSTEM_PARAMETER
from askexpert.contract.triton_repo import RepoModel, read_manifest
from askexpert.errors import ConfigError

log = logging.getLogger("askexpert.triton")


def require_pytriton() -> None:
    """Refuse, naming the fix, where PyTriton (and the Triton it bundles) cannot run."""
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        raise ConfigError(f"--backend triton runs PyTriton's bundled Triton, built for x86-64 Linux; this is "
                          f"{platform.system()} {platform.machine()}",
                          fix="run Triton yourself on askexpert export triton's repository (docker image "
                          "nvcr.io/nvidia/tritonserver), or serve with --backend uvicorn")
    if importlib.util.find_spec("pytriton") is None:
        raise ConfigError("--backend triton needs PyTriton, which is not installed in this environment",
                          fix="python -m venv .venv-triton && .venv-triton/bin/pip install -e '.[triton]' (PyTriton "
                          "pins numpy < 2: give it an environment of its own), then .venv-triton/bin/askexpert serve "
                          "--backend triton REPO")


def stub_library_path(env: dict[str, str] | None = None) -> str:
    """``LD_LIBRARY_PATH`` with this interpreter's library directory first (module docstring)."""
    env = os.environ if env is None else env
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    rest = [p for p in env.get("LD_LIBRARY_PATH", "").split(":") if p and p != libdir]
    return ":".join([libdir, *rest]) if libdir else ":".join(rest)


def _infer_fn(session, name: str) -> Callable:
    from pytriton.decorators import batch

    @batch
    def infer(**inputs: np.ndarray) -> dict[str, np.ndarray]:
        images = inputs[INPUT]
        return {OUTPUT: session.run([OUTPUT], {INPUT: np.ascontiguousarray(images, dtype=np.uint8)})[0]}

    infer.__name__ = f"infer_{name.replace('-', '_')}"
    return infer


def _session(path: Path, threads: int | None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def _bind(triton, model: RepoModel, repo: Path, system_id: str, threads: int | None) -> None:
    from pytriton.model_config import DynamicBatcher, ModelConfig, QueuePolicy, Tensor, TimeoutAction

    sessions = [_session(model.onnx(repo), threads) for _ in range(model.instances)]
    triton.bind(model_name=model.name, infer_func=[_infer_fn(s, model.name) for s in sessions],
                inputs=[Tensor(name=INPUT, dtype=np.uint8, shape=model.input_shape)],
                outputs=[Tensor(name=OUTPUT, dtype=np.float32, shape=(model.outputs,))],
                config=ModelConfig(max_batch_size=model.max_batch_size,
                                   batcher=DynamicBatcher(
                                       max_queue_delay_microseconds=model.max_queue_delay_us,
                                       default_queue_policy=QueuePolicy(max_queue_size=model.max_queue_size,
                                                                        timeout_action=TimeoutAction.REJECT)
                                       if model.max_queue_size else None)))
    _pin(triton, model.name, system_id)


def _pin(triton, name: str, system_id: str) -> None:
    """The system id into the bound model's configuration parameters (PyTriton passes its backend parameters
    on as the model configuration's; it has no public way to add one)."""
    try:
        bound = next(m for m in triton._model_manager.models if m.model_name == name)
        bound._get_triton_model_config().backend_parameters[SYSTEM_PARAMETER] = system_id
    except (AttributeError, StopIteration) as err:
        raise ConfigError(f"this PyTriton cannot carry the bundle's system id in model {name}'s configuration "
                          f"({type(err).__name__}: {err})", fix="install the PyTriton askexpert[triton] names "
                          "(nvidia-pytriton 0.7), or run Triton yourself on the exported repository") from err


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def serve_triton(repo: Path, *, host: str = "127.0.0.1", port: int = 8000, grpc_port: int | None = None,
                 metrics_port: int | None = None, threads: int | None = None,
                 on_ready: Callable[[list[str]], None] | None = None) -> None:
    """Serve ``repo``'s models on Triton until it stops (Ctrl-C or SIGTERM)."""
    require_pytriton()
    from pytriton.triton import Triton, TritonConfig

    system_id, models = read_manifest(repo)
    os.environ["LD_LIBRARY_PATH"] = stub_library_path()  # tritonserver and its stubs inherit it
    config = TritonConfig(http_address=host, http_port=port, grpc_address=host,
                          grpc_port=grpc_port if grpc_port is not None else port + 1,
                          metrics_port=metrics_port if metrics_port is not None else port + 2,
                          allow_gpu_metrics=False, exit_timeout_secs=5, log_verbose=0)
    signal.signal(signal.SIGTERM, _interrupt)  # SIGTERM stops tritonserver too, as Ctrl-C does
    triton = Triton(config=config)  # not started yet: models bound now are loaded with their pin
    try:
        for model in models:
            _bind(triton, model, Path(repo), system_id, threads)
        triton.run()  # tritonserver up, every model loaded
        if on_ready is not None:
            on_ready([m.name for m in models])
        triton.serve()
    finally:
        triton.stop()

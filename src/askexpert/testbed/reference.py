"""The reference workload that ties a device's published speed to this host's edge core.

A speed profile gives a model's published batch-1 latency on the device (``resnet18``: torchvision's
architecture, fp32, 224x224). Its ONNX graph (weights drawn at random with a fixed seed: latency
depends on the architecture, not the weights) is exported once with torch and cached under the
user cache directory, so the edge process times it with ONNX Runtime alone.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np

from askexpert.errors import AskExpertError
from askexpert.paths import user_cache_dir
from askexpert.runtime.pacing import paced

REFERENCES = {"resnet18": (3, 224)}  # name -> (channels, size) of its input


def reference_path(name: str) -> Path:
    return user_cache_dir() / "reference" / f"{name}-fp32-b1.onnx"


def ensure_reference(name: str) -> Path:
    """The reference model's ONNX file, exported now (needs torch and torchvision) if not cached."""
    if name not in REFERENCES:
        raise AskExpertError(f"no reference workload {name!r}", fix=f"use one of: {', '.join(REFERENCES)}")
    path = reference_path(name)
    if path.is_file():
        return path
    try:
        import torch
        import torchvision
    except ImportError as err:
        raise AskExpertError(f"the reference workload {name} is not cached at {path} and exporting it needs torch "
                             f"({err})", fix="run once on a full install: pip install 'askexpert[all]' && "
                             "askexpert edge SYSTEM --device DEVICE (it caches the file), or copy the file there"
                             ) from err
    channels, size = REFERENCES[name]
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None).eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with torch.no_grad():
        torch.onnx.export(model, (torch.randn(1, channels, size, size),), str(tmp), input_names=["x"],
                          output_names=["y"], dynamo=False)
    tmp.replace(path)
    return path


class ReferenceWorkload:
    """The reference model in ONNX Runtime on one thread, timed batch 1."""

    def __init__(self, path: Path) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        inp = self.session.get_inputs()[0]
        self.name = inp.name
        self.x = np.random.default_rng(0).standard_normal([d if isinstance(d, int) else 1 for d in inp.shape],
                                                          dtype=np.float32)

    def run_once(self) -> tuple[float, float]:
        """Wall-clock and CPU milliseconds of one batch-1 inference."""
        t0, c0 = time.perf_counter(), time.process_time()
        paced(lambda: self.session.run(None, {self.name: self.x}))
        return (time.perf_counter() - t0) * 1000, (time.process_time() - c0) * 1000

    def time_ms(self, runs: int = 7, warmup: int = 2) -> float:
        """Median wall-clock milliseconds of one batch-1 inference."""
        return self.times_ms(runs, warmup)[0]

    def times_ms(self, runs: int = 7, warmup: int = 2) -> tuple[float, float]:
        """Median wall-clock and median CPU milliseconds of one batch-1 inference."""
        for _ in range(warmup):
            self.run_once()
        walls, cpus = zip(*(self.run_once() for _ in range(runs)), strict=True)
        return statistics.median(walls), statistics.median(cpus)

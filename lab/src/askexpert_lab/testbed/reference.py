"""A published model run on this host: :class:`ReferenceWorkload` times a reference graph
(:mod:`askexpert.costs.references` builds and caches them) on one ONNX Runtime thread, paced by an emulated
edge's pacer where one is given (the testbed's calibration and check)."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np

from askexpert.runtime.pacing import NO_PACING, Pacer


class ReferenceWorkload:
    """The reference model in ONNX Runtime on one thread, timed batch 1."""

    def __init__(self, path: Path) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        inp = self.session.get_inputs()[0]
        self.name = inp.name
        self.x = np.random.default_rng(0).standard_normal([d if isinstance(d, int) else 1 for d in inp.shape],
                                                          dtype=np.float32)

    def run_once(self, pacer: Pacer = NO_PACING) -> tuple[float, float]:
        """Wall-clock and CPU milliseconds of one batch-1 inference (paced by ``pacer``: an emulated edge's)."""
        t0, c0 = time.perf_counter(), time.process_time()
        pacer.paced(lambda: self.session.run(None, {self.name: self.x}), self.path)
        return (time.perf_counter() - t0) * 1000, (time.process_time() - c0) * 1000

    def time_ms(self, runs: int = 7, warmup: int = 2, pacer: Pacer = NO_PACING) -> float:
        """Median wall-clock milliseconds of one batch-1 inference."""
        return self.times_ms(runs, warmup, pacer)[0]

    def times_ms(self, runs: int = 7, warmup: int = 2, pacer: Pacer = NO_PACING) -> tuple[float, float]:
        """Median wall-clock and median CPU milliseconds of one batch-1 inference."""
        for _ in range(warmup):
            self.run_once(pacer)
        walls, cpus = zip(*(self.run_once(pacer) for _ in range(runs)), strict=True)
        return statistics.median(walls), statistics.median(cpus)

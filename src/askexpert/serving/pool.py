"""The experts a server holds, and how a batch of images becomes their answers. Knows nothing of HTTP.

An :class:`ExpertPool` loads every expert of a system bundle (``askexpert build-system``; each expert
answers with the softmax temperature calibrated at build time) or of an expert run directory
(``partition.json`` + ``expert-<e>/``, plain softmax), and the general model (served as expert
``general``, the everything-offloaded baseline) when the bundle holds it or the run names it.
On a GPU the models run in half precision and, for the common
batch sizes, as captured CUDA graphs (inputs padded up to the next captured size). On the CPU they
run as traced and frozen TorchScript graphs: faster, and, above all, the forward pass no longer
needs Python's GIL for every module call, so the server's event loop cannot stall the model
(BENCHMARKS.md measures both effects). Everywhere they are warmed up before the first request.
"""

from __future__ import annotations

import logging
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from askexpert.contract.bundle import System, is_bundle, open_system
from askexpert.contract.labels import GENERAL, OTHER
from askexpert.contract.protocol import ExpertInfo, ImageResult, image_results
from askexpert.contract.reroute import Reroute
from askexpert.data import to_model_input
from askexpert.devices import resolve_device
from askexpert.errors import CheckpointError, ConfigError
from askexpert.models import Checkpoint, ModelSpec, StoredCheckpoint, count_parameters, load_checkpoint
from askexpert.models.runs import ExpertRun, open_expert_run
from askexpert.security import refuse_pin_without_bundle

GRAPH_SIZES = (1, 2, 4, 8, 16, 32, 64)  # batch sizes captured as CUDA graphs
log = logging.getLogger(__name__)


def _traced(model: torch.nn.Module, example: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """A frozen TorchScript trace of ``model`` that agrees with it on a probe batch, or None."""
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            traced = torch.jit.freeze(torch.jit.trace(model, example).eval())
            probe = torch.randn(3, *example.shape[1:], dtype=example.dtype, device=example.device)
            if (traced(probe) - model(probe)).abs().max().item() > 1e-3:
                return None
            return traced
    except Exception as err:  # a model TorchScript cannot trace: serve it eagerly
        log.warning("serving %s eagerly: tracing failed (%s)", type(model).__name__, err)
        return None


@dataclass
class ExpertOutput:
    """Answers for a batch: probabilities over the expert's outputs and what they mean."""

    probs: torch.Tensor  # [N, outputs] float32 on the CPU
    output_ids: list[int]  # global class id of each output, -1 for "other"
    device_s: float | None = None  # a paced pool: the server device's time for the batch (the host's if longer)

    def result_dicts(self, topk: int) -> list[dict]:
        """Per image: the fields of :class:`ImageResult`, as plain values (the server's fast path; built by
        the contract's :func:`~askexpert.contract.protocol.image_results`)."""
        return image_results(self.probs.numpy(), self.output_ids, topk)

    def finite(self) -> bool:
        """Whether every probability is a finite number (a model that produced NaN or inf is broken)."""
        return bool(np.isfinite(self.probs.numpy()).all())

    def results(self, topk: int) -> list[ImageResult]:
        return [ImageResult(**d) for d in self.result_dicts(topk)]

    def slice(self, start: int, stop: int) -> ExpertOutput:
        return ExpertOutput(self.probs[start:stop], self.output_ids)


class _GraphRunner:
    """CUDA-graph replay of a model at fixed batch sizes; other sizes are padded to the next one."""

    def __init__(self, model: torch.nn.Module, shape: tuple[int, int, int], dtype: torch.dtype,
                 device: torch.device, sizes: list[int]) -> None:
        self.sizes = sorted(sizes)
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]] = {}
        pool = None
        stream = torch.cuda.Stream(device)
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream), torch.no_grad():
            for size in reversed(self.sizes):  # the largest first, so the rest share its memory pool
                static_in = torch.zeros(size, *shape, dtype=dtype, device=device)
                for _ in range(3):
                    model(static_in)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=pool, stream=stream):
                    static_out = model(static_in)
                pool = graph.pool()
                self.graphs[size] = (graph, static_in, static_out)
        torch.cuda.current_stream(device).wait_stream(stream)

    def fits(self, n: int) -> bool:
        return n <= self.sizes[-1]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        size = next(s for s in self.sizes if s >= n)
        graph, static_in, static_out = self.graphs[size]
        static_in[:n].copy_(x)
        graph.replay()
        return static_out[:n].clone()


@dataclass
class ServedModel:
    key: str
    checkpoint: Checkpoint
    output_ids: list[int]
    class_names: list[str]
    temperature: float = 1.0
    graphs: _GraphRunner | None = None
    traced: Callable[[torch.Tensor], torch.Tensor] | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def spec(self) -> ModelSpec:
        return self.checkpoint.meta.model

    def info(self) -> ExpertInfo:
        spec = self.spec
        return ExpertInfo(
            id=self.key, classes=[c for c in self.output_ids if c != OTHER], class_names=self.class_names,
            has_other=OTHER in self.output_ids, model=spec.name, timm_name=spec.timm_name,
            parameters=count_parameters(self.checkpoint.model),
            input_shape=[spec.input.channels, spec.input.size, spec.input.size], temperature=self.temperature,
        )


def open_source(source: Path | System | ExpertRun, *, expect_system_id: str | None = None,
                verify: bool = True) -> System | ExpertRun:
    """What a server serves, opened once: a system (its bundle), or for experiments an expert run directory."""
    if isinstance(source, ExpertRun):
        return source
    if is_bundle(source):
        return open_system(source, verify=verify, expect_id=expect_system_id)
    refuse_pin_without_bundle(expect_system_id, source, "an expert run directory", "serve")
    return open_expert_run(source)


def _catalogue(source: System | ExpertRun) -> tuple[list[str], bool]:
    """The expert ids a source holds, and whether it holds a general model."""
    if isinstance(source, System):
        return [e.id for e in source.manifest.experts], source.manifest.general is not None
    return [str(e) for e in range(len(source.partition.experts))], source.init is not None


def _select(source: Path, ids: list[str], has_general: bool, include_general: bool,
            only: list[str] | None) -> list[str]:
    """Of a source's expert ``ids`` (and its general model), those to serve: ``only`` (checked to exist)
    or all; the general model when included."""
    available = ids + ([GENERAL] if has_general else [])
    unknown = sorted(set(only or ()) - set(available))
    if unknown:
        raise ConfigError(f"{source} has no expert {', '.join(unknown)} (it has {', '.join(available)})",
                          fix="name experts it has in --experts")
    keep = [key for key in ids if only is None or key in only]
    if has_general and include_general and (only is None or GENERAL in only):
        keep.append(GENERAL)
    return keep


def served_ids(source: Path | System | ExpertRun, *, include_general: bool = True, only: list[str] | None = None,
               expect_system_id: str | None = None, verify: bool = False) -> list[str]:
    """The ids of the experts an :class:`ExpertPool` of ``source`` would serve, without loading a model
    (``verify``: check every file of a bundle against its sha256 first)."""
    opened = open_source(source, expect_system_id=expect_system_id, verify=verify)
    return _select(opened.root, *_catalogue(opened), include_general, only)


class ExpertPool:
    """Every expert of a bundle or an expert run, loaded once, answering batches of ``uint8`` images."""

    def __init__(self, source: Path | System | ExpertRun, *, device: str = "auto", include_general: bool = True,
                 cuda_graphs: bool | None = None, trace: bool = True, expect_system_id: str | None = None,
                 only: list[str] | None = None, verify: bool = True) -> None:
        """``expect_system_id``: serve the bundle only if its ``system.json`` has this (published) sha256.
        ``only``: load just these experts (several servers sharing a system's experts; ``general`` is the
        general model). ``verify``: check every file of a bundle against its sha256 (off only where the
        bundle was just checked)."""
        self.device = resolve_device(device)
        self.pacer = None  # the lab's ServerPacer (askexpert_lab.server_pacing): each batch lasts a device's time
        cuda = self.device.type == "cuda"
        self.half = cuda
        self.dtype = torch.float16 if self.half else torch.float32
        use_graphs = cuda if cuda_graphs is None else cuda_graphs and cuda
        self.models: dict[str, ServedModel] = {}
        opened = open_source(source, expect_system_id=expect_system_id, verify=verify)
        self.source = opened.root
        keep = _select(self.source, *_catalogue(opened), include_general, only)
        self.reroute: Reroute | None = None  # the bundle's re-routing rule (contract.reroute); none for a run
        if isinstance(opened, System):
            self.system_id: str | None = opened.system_id
            m = opened.manifest
            self.reroute = m.routing.reroute.rule() if m.routing.reroute is not None else None
            partition = m.partition
            for e in m.experts:
                if e.id in keep:
                    self.models[e.id] = ServedModel(e.id, self._load(opened.path(e.checkpoint)),
                                                    list(e.classes) + ([OTHER] if e.has_other else []),
                                                    e.class_names, temperature=e.temperature)
            if GENERAL in keep:
                self.models[GENERAL] = ServedModel(GENERAL, self._load(opened.path(m.general.checkpoint)),
                                                   list(range(len(m.classes))), m.classes,
                                                   temperature=m.general.temperature)
        else:
            self.system_id, partition = None, opened.partition
            for e, subset in enumerate(partition.experts):
                if str(e) in keep:
                    self.models[str(e)] = ServedModel(str(e), self._load(opened.checkpoints[e]),
                                                      list(subset) + [OTHER], partition.names(e))
            if GENERAL in keep:
                ckpt = self._load(opened.init)
                self.models[GENERAL] = ServedModel(GENERAL, ckpt, list(range(len(ckpt.meta.class_names))),
                                                   ckpt.meta.class_names)
        self.class_names = partition.class_names
        self.subsets = [list(s) for s in partition.experts]
        for served in self.models.values():
            shape = (served.spec.input.channels, served.spec.input.size, served.spec.input.size)
            if use_graphs:
                served.graphs = _GraphRunner(served.checkpoint.model, shape, self.dtype, self.device, list(GRAPH_SIZES))
            if trace:
                example = torch.zeros(2, *shape, dtype=self.dtype, device=self.device)
                served.traced = _traced(served.checkpoint.model, example)
        self.warm_up()

    def _load(self, path: Path | StoredCheckpoint) -> Checkpoint:
        try:
            ckpt = load_checkpoint(path, device=self.device)
        except CheckpointError as err:
            raise CheckpointError(f"cannot serve {path}: {err.message}", fix=err.fix) from err
        if self.half:
            ckpt.model.half()
        return ckpt

    def ids(self) -> list[str]:
        return list(self.models)

    def get(self, key: str) -> ServedModel:
        served = self.models.get(key)
        if served is None:
            raise KeyError(key)
        return served

    def warm_up(self, sizes: tuple[int, ...] = (1, 8)) -> None:
        for served in self.models.values():
            c, s = served.spec.input.channels, served.spec.input.size
            for n in sizes:
                self.infer(served.key, np.zeros((n, c, s, s), dtype=np.uint8))

    def infer(self, key: str, images: np.ndarray | torch.Tensor) -> ExpertOutput:
        """Probabilities of expert ``key`` for a ``uint8 [N, C, H, W]`` batch (lasting the server device's time
        for it where the pool is paced: :mod:`askexpert_lab.server_pacing`)."""
        if self.pacer is None:
            return self._infer(key, images)
        probs, seconds = self.pacer.run(key, np.asarray(images), lambda x: self._infer(key, x).probs.numpy())
        return ExpertOutput(torch.from_numpy(probs), self.get(key).output_ids, device_s=seconds)

    @torch.no_grad()
    def _infer(self, key: str, images: np.ndarray | torch.Tensor) -> ExpertOutput:
        served = self.get(key)
        if isinstance(images, np.ndarray) and not images.flags.writeable:  # a request body's buffer
            images = images.copy()
        x = torch.as_tensor(images).to(self.device, non_blocking=True)
        x = to_model_input(x, served.spec.input).to(self.dtype)
        with served.lock:  # one batch at a time per model (CUDA graphs reuse their buffers)
            if served.graphs is not None and served.graphs.fits(len(x)):
                logits = served.graphs(x)
            else:
                logits = (served.traced or served.checkpoint.model)(x)
        return ExpertOutput(torch.softmax(logits.float() / served.temperature, 1).cpu(), served.output_ids)

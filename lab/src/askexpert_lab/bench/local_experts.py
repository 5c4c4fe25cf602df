"""A bundle's experts (and general model) exported to ONNX and run on the edge device itself: the
"edge execution" baselines, with no server and no torch on the edge.

Each model answers as the server would (:class:`~askexpert.runtime.clients.ExpertReply`): softmax of
its logits over its calibrated temperature, the top output mapped to a global class id (-1 for
"other"). :func:`export_edge_models` writes the ONNX files (needs torch, once, on the build side).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from askexpert.contract.bundle import System
from askexpert.contract.labels import GENERAL, OTHER
from askexpert.contract.protocol import ExpertInfo, image_results
from askexpert.routing import softmax
from askexpert.runtime.clients import ExpertReply
from askexpert.runtime.onnx_model import OnnxGeneralist


@dataclass(frozen=True)
class LocalModelSpec:
    """One ONNX model on the edge: its file, what its outputs mean, its temperature."""

    key: str
    onnx: Path
    output_ids: tuple[int, ...]
    temperature: float = 1.0


def export_edge_models(bundle: System, out_dir: Path) -> list[LocalModelSpec]:
    """Export every expert of an opened bundle and its general model to ONNX under ``out_dir`` (reused
    when present)."""
    from askexpert.models.onnx_export import export_onnx

    m = bundle.manifest
    out_dir = Path(out_dir) / bundle.system_id
    specs = [LocalModelSpec(e.id, out_dir / f"expert-{e.id}.onnx", (*e.classes, OTHER), e.temperature)
             for e in m.experts]
    if m.general is not None:
        specs.append(LocalModelSpec(GENERAL, out_dir / "general.onnx", tuple(range(len(m.classes))),
                                    m.general.temperature))
    sources = {e.id: bundle.path(e.checkpoint) for e in m.experts}
    if m.general is not None:
        sources[GENERAL] = bundle.path(m.general.checkpoint)
    for spec in specs:
        if not spec.onnx.is_file():
            export_onnx(sources[spec.key], spec.onnx)
    return specs


class LocalExperts:
    """The experts on the edge's own CPU, answering like the server (an ``ExpertClient``)."""

    def __init__(self, specs: list[LocalModelSpec], *, threads: int | None = 1, topk: int = 3) -> None:
        self.specs = {s.key: s for s in specs}
        self.models = {s.key: OnnxGeneralist(s.onnx, threads=threads) for s in specs}  # paced by run_on_edge
        self.topk = topk

    def model(self, key: str) -> OnnxGeneralist:
        return self.models[key]

    def experts(self) -> list[ExpertInfo]:
        out = []
        for key, spec in self.specs.items():
            if key == GENERAL:
                continue
            m = self.models[key]
            classes = [c for c in spec.output_ids if c != OTHER]
            out.append(ExpertInfo(id=key, classes=classes, class_names=m.class_names[:len(classes)],
                                  has_other=OTHER in spec.output_ids, model=spec.onnx.stem, timm_name="",
                                  parameters=0, input_shape=[m.input.channels, m.input.size, m.input.size],
                                  temperature=spec.temperature))
        return out

    def infer(self, expert_id: str, images: np.ndarray, ranking: list[str] | None = None) -> ExpertReply:
        """The routed expert's answers. ``ranking`` (a re-routing bundle's) is not followed: edge execution is
        the paper's baseline, the routed expert run on the edge, one model an offload."""
        spec = self.specs[expert_id]
        t0 = time.perf_counter()
        probs = softmax(self.models[expert_id].logits(images), spec.temperature)  # float32, as the server
        top = probs.argmax(axis=1)
        ms = (time.perf_counter() - t0) * 1000
        ranked = [dict(zip(r["topk"], r["probs"], strict=True)) for r in image_results(probs, spec.output_ids,
                                                                                        self.topk)]
        return ExpertReply(pred=np.asarray(spec.output_ids, dtype=np.int64)[top], ranked=ranked,
                           confidence=probs[np.arange(len(top)), top], queue_ms=0.0,
                           compute_ms=ms, batch_size=len(images), round_trip_ms=ms, encode_ms=0.0, link_ms=0.0,
                           up_bytes=0, down_bytes=0)

"""Export a checkpoint to ONNX for the edge: uint8 images in, logits out, checked against torch.

``export_onnx`` writes a self-contained graph that does the normalisation itself, so an edge device
needs only ONNX Runtime and NumPy. The file carries the checkpoint's class names and input spec in
its metadata, and the export is checked against the torch model before it is kept.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from askexpert.contract.onnx import METADATA_KEY, metadata_value
from askexpert.data import InputSpec, to_model_input
from askexpert.errors import CheckpointError
from askexpert.models.checkpoint import StoredCheckpoint, load_checkpoint


class _WithPreprocessing(torch.nn.Module):
    """uint8 images in, logits out: the normalisation of ``spec`` baked into the graph."""

    def __init__(self, model: torch.nn.Module, spec: InputSpec) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(spec.mean).view(1, -1, 1, 1) * 255)
        self.register_buffer("std", torch.tensor(spec.std).view(1, -1, 1, 1) * 255)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model((images.float() - self.mean) / self.std)


def export_onnx(checkpoint: Path | StoredCheckpoint, out: Path, *, opset: int = 18, check_atol: float = 1e-3) -> dict:
    """Export a checkpoint to ONNX (uint8 input, dynamic batch) and verify it against torch."""
    import onnx
    import onnxruntime as ort

    ckpt = load_checkpoint(checkpoint)
    spec = ckpt.meta.model.input
    wrapped = _WithPreprocessing(ckpt.model, spec).eval()
    example = torch.randint(0, 256, (2, spec.channels, spec.size, spec.size), dtype=torch.uint8)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.onnx.export(wrapped, (example,), dynamo=True, input_names=["images"], output_names=["logits"],
                                dynamic_shapes=({0: batch},), opset_version=opset, verbose=False)
    model_proto = program.model_proto
    entry = model_proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, metadata_value(
        ckpt.meta.class_names, spec, kind=ckpt.meta.kind, source=str(ckpt.path),
        weights_sha256=ckpt.meta.weights_sha256, model=ckpt.meta.model.name)
    onnx.save(model_proto, str(out))
    seconds = time.perf_counter() - t0
    # the exported graph must agree with torch on fresh images
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    probe = torch.randint(0, 256, (5, spec.channels, spec.size, spec.size), dtype=torch.uint8)
    with torch.no_grad():
        expected = ckpt.model(to_model_input(probe, spec)).numpy()
    got = session.run(None, {"images": probe.numpy()})[0]
    max_diff = float(np.abs(expected - got).max())
    if max_diff > check_atol:
        out.unlink()
        raise CheckpointError(f"ONNX export of {checkpoint} disagrees with torch (max |diff| {max_diff:.2e})",
                              fix="report this model; meanwhile run the edge on the run directory (torch)")
    return {"path": str(out), "max_abs_diff": max_diff, "export_seconds": seconds, "opset": opset}




def cached_onnx(checkpoint: Path | StoredCheckpoint) -> Path:
    """The checkpoint's ONNX graph, exported once and kept in the user cache by its weights' sha256 (what the
    device models read: ``askexpert plan`` and a server paced to a device share it)."""
    import hashlib

    from askexpert.models.checkpoint import open_checkpoint
    from askexpert.paths import user_cache_dir

    stored = open_checkpoint(checkpoint)
    digest = hashlib.sha256(Path(f"{stored.stem}.safetensors").read_bytes()).hexdigest()[:24]
    out = user_cache_dir() / "graphs" / f"{digest}.onnx"
    if not out.is_file():
        tmp = out.with_name(f".{out.stem}.{time.time_ns()}.onnx")
        export_onnx(stored, tmp)
        tmp.replace(out)
    return out

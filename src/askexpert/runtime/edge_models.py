"""The generalist on the edge device: in torch, or in ONNX Runtime from an exported file.

``export_onnx`` writes a self-contained ONNX graph that takes the raw ``uint8 [N, C, H, W]`` images
and does the normalisation itself, so an edge device needs only ONNX Runtime and NumPy. The file
carries the checkpoint's class names and input spec in its metadata, and the export is checked
against the torch model before it is written.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from askexpert.data import InputSpec, to_model_input
from askexpert.errors import CheckpointError
from askexpert.models import load_checkpoint
from askexpert.models.checkpoint import checkpoint_stem

METADATA_KEY = "askexpert"


class TorchGeneralist:
    """A checkpoint run in torch on the CPU (eval mode, no autograd)."""

    backend = "torch"

    def __init__(self, checkpoint: Path, *, threads: int | None = None) -> None:
        if threads:
            torch.set_num_threads(threads)
        ckpt = load_checkpoint(checkpoint)
        self.model, self.meta = ckpt.model.eval(), ckpt.meta
        self.class_names = ckpt.meta.class_names
        self.input: InputSpec = ckpt.meta.model.input

    @torch.no_grad()
    def logits(self, images: np.ndarray) -> torch.Tensor:
        return self.model(to_model_input(torch.from_numpy(images), self.input)).float()


class _WithPreprocessing(torch.nn.Module):
    """uint8 images in, logits out: the normalisation of ``spec`` baked into the graph."""

    def __init__(self, model: torch.nn.Module, spec: InputSpec) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(spec.mean).view(1, -1, 1, 1) * 255)
        self.register_buffer("std", torch.tensor(spec.std).view(1, -1, 1, 1) * 255)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model((images.float() - self.mean) / self.std)


def export_onnx(checkpoint: Path, out: Path, *, opset: int = 18, check_atol: float = 1e-3) -> dict:
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
    meta = {"class_names": ckpt.meta.class_names, "input": spec.model_dump(), "kind": ckpt.meta.kind,
            "source": str(checkpoint_stem(checkpoint)), "weights_sha256": ckpt.meta.weights_sha256,
            "model": ckpt.meta.model.name}
    entry = model_proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(meta)
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
                              fix="report this model; meanwhile run the edge with --backend torch")
    return {"path": str(out), "max_abs_diff": max_diff, "export_seconds": seconds, "opset": opset}


class OnnxGeneralist:
    """An exported generalist run by ONNX Runtime on the CPU."""

    backend = "onnx"

    def __init__(self, path: Path, *, threads: int | None = None) -> None:
        import onnxruntime as ort

        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"no ONNX model at {path}", fix="create it with: askexpert export-onnx CHECKPOINT")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as err:  # onnxruntime raises its own Fail / InvalidGraph types
            raise CheckpointError(f"cannot load ONNX model {path}: {err}", fix="export it again") from err
        props = self.session.get_modelmeta().custom_metadata_map
        if METADATA_KEY not in props:
            raise CheckpointError(f"{path} was not exported by askexpert (no class names)",
                                  fix="export it with: askexpert export-onnx CHECKPOINT")
        meta = json.loads(props[METADATA_KEY])
        self.class_names = meta["class_names"]
        self.input = InputSpec(**meta["input"])

    def logits(self, images: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(self.session.run(None, {"images": np.ascontiguousarray(images)})[0])

"""The generalist on the edge device, in ONNX Runtime: NumPy in, NumPy out, no torch.

The graph (written by :func:`askexpert.models.onnx_export.export_onnx`) takes raw ``uint8 [N, C, H, W]``
images and normalises them itself; its metadata carries the class names and the input spec.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from askexpert.contract.onnx import read_metadata
from askexpert.errors import CheckpointError
from askexpert.runtime.pacing import NO_PACING, Pacer


class OnnxGeneralist:
    """An exported generalist run by ONNX Runtime on the CPU."""

    backend = "onnx"

    def __init__(self, path: Path, *, threads: int | None = None, pacer: Pacer = NO_PACING) -> None:
        import onnxruntime as ort

        path = self.path = Path(path)
        self.pacer = pacer  # an emulated edge's pace (runtime.pacing); the real one runs at its own speed
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
        meta = read_metadata(props)
        if meta is None:
            raise CheckpointError(f"{path} was not exported by askexpert (no class names)",
                                  fix="export it with: askexpert export-onnx CHECKPOINT")
        self.class_names, self.input = meta

    def logits(self, images: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(images)
        return self.pacer.paced(lambda: self.session.run(None, {"images": x})[0], self.path, len(x))

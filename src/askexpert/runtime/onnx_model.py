"""The generalist on the edge device, in ONNX Runtime: NumPy in, NumPy out, no torch.

The graph (written by :func:`askexpert.models.onnx_export.export_onnx`) takes raw ``uint8 [N, C, H, W]``
images and normalises them itself; its metadata carries the class names and the input spec.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from askexpert.errors import CheckpointError
from askexpert.runtime.pacing import paced
from askexpert.system.schema import InputSpec

METADATA_KEY = "askexpert"


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
        self.class_names: list[str] = meta["class_names"]
        self.input = InputSpec(**meta["input"])

    def logits(self, images: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(images)
        return paced(lambda: self.session.run(None, {"images": x})[0])

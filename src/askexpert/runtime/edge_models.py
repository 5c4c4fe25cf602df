"""The generalist in torch on the edge host's CPU (a run directory's checkpoint, no export needed).

The deployable edge runs the ONNX graph instead (:mod:`askexpert.runtime.onnx_model`, no torch).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from askexpert.data import InputSpec, to_model_input
from askexpert.models import load_checkpoint


class TorchGeneralist:
    """A checkpoint run in torch on the CPU (eval mode, no autograd): NumPy in, NumPy out."""

    backend = "torch"

    def __init__(self, checkpoint: Path, *, threads: int | None = None) -> None:
        if threads:
            torch.set_num_threads(threads)
        ckpt = load_checkpoint(checkpoint)
        self.model, self.meta = ckpt.model.eval(), ckpt.meta
        self.class_names = ckpt.meta.class_names
        self.input: InputSpec = ckpt.meta.model.input

    @torch.no_grad()
    def logits(self, images: np.ndarray) -> np.ndarray:
        return self.model(to_model_input(torch.from_numpy(np.asarray(images)), self.input)).float().numpy()

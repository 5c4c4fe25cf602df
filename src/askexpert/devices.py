"""Which torch device a name means ("auto": CUDA where present, else the CPU). Shared by training and serving."""

from __future__ import annotations

import torch


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)

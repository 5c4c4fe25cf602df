"""Which torch device a name means ("auto": CUDA where present, else the CPU). Shared by training and serving."""

from __future__ import annotations

import platform

import torch


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def on_gpu(name: str = "auto") -> bool:
    """Whether a torch device name runs on a GPU (where ``askexpert serve --device auto`` puts the experts)."""
    return resolve_device(name).type == "cuda"


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``; else what ``platform`` says)."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def where(name: str = "auto") -> str:
    """Where a torch device name runs, in words, for the labels of the energy it is priced at:
    ``this host's CPU (AMD EPYC)`` or ``this host's GPU (NVIDIA H100 80GB HBM3)``."""
    resolved = resolve_device(name)
    if resolved.type == "cuda":
        return f"this host's GPU ({torch.cuda.get_device_name(resolved)})"
    return f"this host's CPU ({cpu_model()})"

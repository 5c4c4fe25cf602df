"""What machine a benchmark ran on: every result file (benchmarks/ and ``askexpert bench``) names its hardware."""

from __future__ import annotations

import datetime as _dt
import os
import platform

import torch

from askexpert.devices import cpu_model
from askexpert.training.engine import cpu_has_native_bf16


def machine_info() -> dict:
    info = {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d"),
        "host": platform.node(),
        "cpu": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "cpu_native_bf16": cpu_has_native_bf16(),
    }
    return info


def describe(info: dict) -> str:
    gpu = f", GPU {info['gpu']}" if info["gpu"] else ", no GPU"
    return f"{info['cpu']} ({info['cpu_cores']} cores, torch {info['torch_threads']} threads){gpu}"

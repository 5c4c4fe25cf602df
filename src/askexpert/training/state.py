"""Resumable training state (model + optimizer after a finished epoch), without pickle.

Tensors go into ``state.safetensors`` (model weights under ``model.``, optimizer tensors under
``optim.<param>.<name>``); everything else (epoch, history, optimizer hyper-parameters) into
``state.json``. Data order, augmentation and dropout are seeded per epoch, so resuming at an epoch
boundary reproduces the uninterrupted run.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import safetensors.torch
import torch

from askexpert.errors import CheckpointError


def save_state(run_dir: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, *,
               epoch: int, step: int, history: list[dict]) -> None:
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    opt = optimizer.state_dict()
    scalars: dict[str, dict] = {}
    for pid, entry in opt["state"].items():
        for name, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{pid}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(pid), {})[name] = value
    tmp = run_dir / ".state.safetensors.tmp"
    safetensors.torch.save_file(tensors, str(tmp))
    os.replace(tmp, run_dir / "state.safetensors")
    meta = {"epoch": epoch, "step": step, "history": history,
            "param_groups": opt["param_groups"], "optim_scalars": scalars}
    tmp_json = run_dir / ".state.json.tmp"
    tmp_json.write_text(json.dumps(meta, indent=1))
    os.replace(tmp_json, run_dir / "state.json")


def load_state(run_dir: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """Restore model and optimizer from ``run_dir``; returns the JSON part (epoch, step, history)."""
    try:
        meta = json.loads((run_dir / "state.json").read_text())
        tensors = safetensors.torch.load_file(str(run_dir / "state.safetensors"))
    except Exception as err:
        raise CheckpointError(f"cannot read the training state in {run_dir} ({err})",
                              fix="start the run again with --overwrite") from err
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, pid, name = key.split(".", 2)
            state.setdefault(int(pid), {})[name] = value
    for pid, entry in meta["optim_scalars"].items():
        state.setdefault(int(pid), {}).update(entry)
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    return meta


def has_state(run_dir: Path) -> bool:
    return (run_dir / "state.json").is_file() and (run_dir / "state.safetensors").is_file()

"""Logits of a saved model on a split, cached next to the checkpoint.

``<run>/logits/<stem>-<split>.safetensors`` holds the logits and labels; its metadata records the
sha256 of the weights and the dataset config, so a retrained model or another dataset recomputes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import safetensors
import safetensors.torch
import torch

from askexpert.config import DataConfig
from askexpert.data import DatasetSplits, load_dataset
from askexpert.devices import resolve_device
from askexpert.errors import DatasetError
from askexpert.models import StoredCheckpoint, load_checkpoint
from askexpert.training.evaluate import predict_logits


def data_config_of(checkpoint: StoredCheckpoint) -> DataConfig:
    """The dataset config a checkpoint was trained with."""
    return DataConfig(**checkpoint.meta.dataset.config)


def cached_logits(checkpoint: StoredCheckpoint, split: str, *, data_cfg: DataConfig | None = None,
                  splits: DatasetSplits | None = None, device: str = "auto",
                  batch_size: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logits [N, outputs], labels [N])`` of ``checkpoint`` on ``split``.

    The dataset is ``data_cfg`` (default: the checkpoint's own); ``splits``, when given, must be that
    dataset already loaded.
    """
    stem, meta = checkpoint.stem, checkpoint.meta
    data_cfg = data_cfg or data_config_of(checkpoint)
    cache, key = _cache(checkpoint, split, data_cfg)
    if cache.is_file():
        with safetensors.safe_open(str(cache), "pt") as f:
            if f.metadata() == key:
                return f.get_tensor("logits"), f.get_tensor("labels")
    if splits is None:
        splits = load_dataset(data_cfg, image_size=meta.model.input.size, channels=meta.model.input.channels)
    if splits.class_names != (meta.dataset.class_names or splits.class_names):
        raise DatasetError(f"{stem} was trained on other classes than {splits.name} has",
                           fix="evaluate it on the dataset it was trained on")
    ckpt = load_checkpoint(checkpoint, device=resolve_device(device))
    data = splits.split(split)
    logits = predict_logits(ckpt.model, data, meta.model.input, batch_size=batch_size,
                            device=resolve_device(device))
    store_logits(checkpoint, split, data_cfg, logits, data.labels)
    return logits, data.labels


def _cache(checkpoint: StoredCheckpoint, split: str, data_cfg: DataConfig) -> tuple[Path, dict[str, str]]:
    stem = checkpoint.stem
    key = {"weights_sha256": checkpoint.meta.weights_sha256,
           "data": json.dumps(data_cfg.model_dump(mode="json"), sort_keys=True), "split": split}
    return stem.parent / "logits" / f"{stem.name}-{split}.safetensors", key


def store_logits(checkpoint: StoredCheckpoint, split: str, data_cfg: DataConfig, logits: torch.Tensor,
                 labels: torch.Tensor) -> None:
    """Cache logits computed elsewhere (by the training run, on the saved weights) for ``cached_logits``."""
    cache, key = _cache(checkpoint, split, data_cfg)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name(f"{cache.name}.{os.getpid()}.tmp")  # written whole, then renamed: a process reading the
    safetensors.torch.save_file({"logits": logits.contiguous(), "labels": labels.contiguous()}, str(tmp),
                                metadata=key)  # cache meanwhile sees the old file or the new, never half of one
    os.replace(tmp, cache)

"""What the edge runner reads: a split of the generalist's own dataset, an image folder, or files.

Every source yields ``(uint8 [B, C, H, W] images, labels or None)`` at the generalist's input size.
Image files are decoded with Pillow, converted to the model's channels, resized (shorter side)
and centre-cropped. A folder whose sub-folders are named after the model's classes is labelled.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from askexpert.config import DataConfig
from askexpert.data import FileSplit, InputSpec, iter_batches, load_dataset
from askexpert.data.imagefolder import IMAGE_SUFFIXES
from askexpert.data.splits import stratified_subset
from askexpert.errors import DatasetError

Batches = Iterator[tuple[np.ndarray, np.ndarray | None]]


def _from_split(split, batch_size: int, labelled: bool) -> Batches:
    for images, labels in iter_batches(split, batch_size):
        yield images.numpy(), labels.numpy() if labelled else None


def open_input(spec: str | list[str], *, input_spec: InputSpec, class_names: list[str], data: DataConfig | None,
               batch_size: int = 1, limit: int | None = None, seed: int = 0) -> tuple[Batches, int, str]:
    """``(batches, number of images, description)`` for ``split:NAME``, a folder, or image files.

    ``limit`` keeps a stratified (or, unlabelled, leading) subset of that many images.
    """
    items = [spec] if isinstance(spec, str) else list(spec)
    if len(items) == 1 and items[0].startswith("split:"):
        if data is None:
            raise DatasetError("split: inputs need the generalist's dataset config",
                               fix="pass the generalist checkpoint, or image files")
        name = items[0].split(":", 1)[1]
        bundle = load_dataset(data, image_size=input_spec.size, channels=input_spec.channels)
        split = bundle.split(name)
        if limit and limit < len(split):
            split = split.take(stratified_subset(split.labels, limit, seed))
        return _from_split(split, batch_size, True), len(split), f"{bundle.name} {name} split"
    paths: list[Path] = []
    labels: list[int] = []
    labelled = False
    for item in items:
        p = Path(item).expanduser()
        if p.is_dir():
            subdirs = sorted(d.name for d in p.iterdir() if d.is_dir())
            # a folder per class, named as the class ("/" in a class name may be written "-")
            folder_class = {name.replace("/", "-"): c for c, name in enumerate(class_names)}
            folder_class.update({name: c for c, name in enumerate(class_names)})
            if subdirs and set(subdirs) <= set(folder_class):
                labelled = True
                for d in subdirs:
                    files = sorted(f for f in (p / d).iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
                    paths += files
                    labels += [folder_class[d]] * len(files)
            else:
                files = sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
                paths += files
                labels += [-1] * len(files)
        elif p.is_file():
            paths.append(p)
            labels.append(-1)
        else:
            raise DatasetError(f"input {item} does not exist", fix="pass split:test, an image folder or image files")
    if not paths:
        raise DatasetError(f"no images found in {', '.join(items)}",
                           fix=f"use files ending in {', '.join(sorted(IMAGE_SUFFIXES))}")
    labelled = labelled and all(v >= 0 for v in labels)
    split = FileSplit(paths, torch.tensor(labels), input_spec.size, input_spec.channels)
    if limit and limit < len(split):
        split = split.take(np.arange(limit))
    return _from_split(split, batch_size, labelled), len(split), f"{len(split)} image files"

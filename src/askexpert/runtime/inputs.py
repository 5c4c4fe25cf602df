"""What the edge runner reads: image files, an image folder, a ``.npz`` of arrays, or a dataset split.

Every source yields ``(uint8 [B, C, H, W] images, labels or None)`` at the generalist's input size.
Image files are decoded with Pillow (converted to the model's channels, resized on the shorter side
and centre-cropped); a folder whose sub-folders are named after the model's classes is labelled.
A ``.npz`` holds ``images`` (``uint8 [N, C, H, W]``) and optionally ``labels``. None of these needs
torch. ``split:NAME`` reads a split of the generalist's own dataset and needs the full install.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np

from askexpert.contract.schema import InputSpec
from askexpert.errors import DatasetError
from askexpert.imageio import IMAGE_SUFFIXES, read_image
from askexpert.splits import stratified_subset

Batches = Iterator[tuple[np.ndarray, np.ndarray | None]]


class InputSource(NamedTuple):
    """What an input holds: its batches, how many images, a description, and each image's file (in
    stream order) where the images are files."""

    batches: Batches
    count: int
    description: str
    files: list[str] | None = None


def _arrays(images: np.ndarray, labels: np.ndarray | None, batch_size: int) -> Batches:
    for i in range(0, len(images), batch_size):
        yield images[i:i + batch_size], None if labels is None else labels[i:i + batch_size]


def _files(paths: list[Path], labels: np.ndarray | None, spec: InputSpec, batch_size: int) -> Batches:
    for i in range(0, len(paths), batch_size):
        chunk = np.stack([read_image(p, spec.size, spec.channels) for p in paths[i:i + batch_size]])
        yield chunk, None if labels is None else labels[i:i + batch_size]


def _split(name: str, data: dict, spec: InputSpec, limit: int | None, seed: int, batch_size: int):
    try:
        from askexpert.config import DataConfig
        from askexpert.data import iter_batches, load_dataset
    except ImportError as err:  # the slim edge install has no torch
        raise DatasetError(f"split:{name} reads the dataset, which needs the full install ({err})",
                           fix="pass image files, a folder or a .npz; or: pip install 'askexpert[all]'") from err
    splits = load_dataset(DataConfig(**data), image_size=spec.size, channels=spec.channels)
    split = splits.split(name)
    if limit and limit < len(split):
        split = split.take(stratified_subset(split.labels, limit, seed))
    batches = ((images.numpy(), labels.numpy()) for images, labels in iter_batches(split, batch_size))
    return InputSource(batches, len(split), f"{splits.name} {name} split")  # decoded batch by batch, as streamed


def open_input(spec: str | list[str], *, input_spec: InputSpec, class_names: list[str], data: dict | None,
               batch_size: int = 1, limit: int | None = None, seed: int = 0) -> InputSource:
    """The :class:`InputSource` of ``split:NAME``, a ``.npz``, a folder, or image files.

    ``data`` is the generalist's dataset config (for ``split:``). ``limit`` keeps a stratified (or,
    unlabelled, leading) subset of that many images.
    """
    items = [spec] if isinstance(spec, str) else list(spec)
    if len(items) == 1 and items[0].startswith("split:"):
        if not data:
            raise DatasetError("split: inputs need the generalist's dataset config",
                               fix="pass image files, a folder or a .npz")
        return _split(items[0].split(":", 1)[1], data, input_spec, limit, seed, batch_size)
    if len(items) == 1 and items[0].endswith(".npz"):
        return _npz(Path(items[0]), input_spec, limit, seed, batch_size)
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
            raise DatasetError(f"input {item} does not exist",
                               fix="pass image files, an image folder, a .npz or split:test")
    if not paths:
        raise DatasetError(f"no images found in {', '.join(items)}",
                           fix=f"use files ending in {', '.join(sorted(IMAGE_SUFFIXES))}")
    label_arr = np.array(labels, dtype=np.int64)
    labelled = labelled and bool((label_arr >= 0).all())
    if limit and limit < len(paths):
        keep = stratified_subset(label_arr, limit, seed) if labelled else np.arange(limit)
        paths, label_arr = [paths[i] for i in keep], label_arr[keep]
    return InputSource(_files(paths, label_arr if labelled else None, input_spec, batch_size), len(paths),
                       "image files", [str(p) for p in paths])


def _npz(path: Path, spec: InputSpec, limit: int | None, seed: int, batch_size: int):
    if not path.is_file():
        raise DatasetError(f"input {path} does not exist", fix="pass an existing .npz with an 'images' array")
    try:
        with np.load(path, allow_pickle=False) as f:
            images = f["images"]
            labels = f["labels"].astype(np.int64) if "labels" in f.files else None
    except (OSError, ValueError, KeyError) as err:
        raise DatasetError(f"cannot read images from {path}: {err}",
                           fix="save a uint8 [N, C, H, W] array as 'images' (and 'labels'): np.savez(path, "
                           "images=..., labels=...)") from err
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (spec.channels, spec.size, spec.size):
        raise DatasetError(f"{path}: images are {images.dtype} {list(images.shape)}, the generalist takes uint8 "
                           f"[N, {spec.channels}, {spec.size}, {spec.size}]", fix="resize / convert them first")
    if limit and limit < len(images):
        keep = stratified_subset(labels, limit, seed) if labels is not None else np.arange(limit)
        images, labels = images[keep], None if labels is None else labels[keep]
    return InputSource(_arrays(images, labels, batch_size), len(images), path.name)

"""A user's own images, one sub-folder per class: ``imagefolder:PATH``.

``PATH/train/<class>/*`` with ``PATH/test/<class>/*`` (``val`` is accepted for ``test``) is used as
given. A flat ``PATH/<class>/*`` gets a seeded, stratified test split carved out of it. Images are
decoded on demand and resized to the model's input size.
"""

from __future__ import annotations

from pathlib import Path

import torch

from askexpert.data.base import FileSplit
from askexpert.errors import DatasetError
from askexpert.imageio import IMAGE_SUFFIXES
from askexpert.splits import stratified_split


def _scan(directory: Path, class_names: list[str] | None) -> tuple[list[Path], list[int], list[str]]:
    classes = sorted(d.name for d in directory.iterdir() if d.is_dir() and not d.name.startswith("."))
    if class_names is not None:
        extra = set(classes) - set(class_names)
        if extra:
            raise DatasetError(
                f"{directory} has classes {sorted(extra)} that the training folder lacks",
                fix="use the same class folders under train/ and test/",
            )
        classes = class_names
    paths, labels = [], []
    for label, cls in enumerate(classes):
        files = sorted(p for p in (directory / cls).glob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        paths += files
        labels += [label] * len(files)
    return paths, labels, classes


def load(path: str, *, size: int, channels: int, test_fraction: float, seed: int):
    """``(train FileSplit, test FileSplit, class names)`` for an image folder."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise DatasetError(
            f"image folder {root} does not exist",
            fix="pass imagefolder:PATH with one sub-folder of images per class",
        )
    test_dir = next((root / n for n in ("test", "val") if (root / n).is_dir()), None)
    if (root / "train").is_dir() and test_dir is not None:
        paths, labels, classes = _scan(root / "train", None)
        test_paths, test_labels, _ = _scan(test_dir, classes)
        train = FileSplit(paths, torch.tensor(labels), size, channels)
        test = FileSplit(test_paths, torch.tensor(test_labels), size, channels)
    else:
        paths, labels, classes = _scan(root, None)
        everything = FileSplit(paths, torch.tensor(labels), size, channels)
        keep, held = stratified_split(everything.labels, test_fraction, seed)
        train, test = everything.take(keep), everything.take(held)
    if len(classes) < 2 or len(train) == 0 or len(test) == 0:
        raise DatasetError(
            f"image folder {root} needs at least two class folders with images "
            f"(found {len(classes)} classes, {len(train)} train and {len(test)} test images)",
            fix="lay it out as PATH/<class>/<image> or PATH/{train,test}/<class>/<image>",
        )
    return train, test, classes

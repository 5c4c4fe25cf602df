"""Image splits, and the three of them a dataset loader returns (:class:`DatasetSplits`).

Every split yields batches of ``uint8`` images shaped ``[N, C, H, W]`` plus ``int64`` labels; the
conversion to float, augmentation, resizing and normalisation happen later, on the training device
(see :mod:`askexpert.data.transforms`). Two kinds of split exist:

* :class:`ArraySplit` keeps every image in memory (Fashion-MNIST, CIFAR): batches are slices.
* :class:`FileSplit` decodes image files on demand (image folders), through a ``DataLoader``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from askexpert.errors import DatasetError
from askexpert.imageio import read_image


@dataclass
class ArraySplit:
    """Images held in memory as a ``uint8`` tensor ``[N, C, H, W]``."""

    images: torch.Tensor
    labels: torch.Tensor
    coarse_labels: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise ValueError("images must be a uint8 tensor [N, C, H, W]")
        if len(self.images) != len(self.labels):
            raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels")
        self.labels = self.labels.to(torch.int64)

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, indices) -> ArraySplit:
        idx = torch.as_tensor(np.asarray(indices), dtype=torch.int64)
        coarse = self.coarse_labels[idx] if self.coarse_labels is not None else None
        return ArraySplit(self.images[idx], self.labels[idx], coarse)

    def load(self, indices: torch.Tensor) -> torch.Tensor:
        return self.images[indices]


@dataclass
class FileSplit(torch.utils.data.Dataset):
    """Image files decoded on demand, resized (shorter side) and centre-cropped to ``size``."""

    paths: list[Path]
    labels: torch.Tensor
    size: int
    channels: int = 3
    coarse_labels: torch.Tensor | None = field(default=None)

    def __post_init__(self) -> None:
        if len(self.paths) != len(self.labels):
            raise ValueError(f"{len(self.paths)} files but {len(self.labels)} labels")
        self.labels = torch.as_tensor(self.labels, dtype=torch.int64)

    def __len__(self) -> int:
        return len(self.paths)

    def take(self, indices) -> FileSplit:
        idx = [int(i) for i in np.asarray(indices)]
        coarse = self.coarse_labels[idx] if self.coarse_labels is not None else None
        return FileSplit([self.paths[i] for i in idx], self.labels[idx], self.size, self.channels, coarse)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return torch.from_numpy(read_image(self.paths[i], self.size, self.channels)), int(self.labels[i])

    def load(self, indices: torch.Tensor) -> torch.Tensor:
        return torch.stack([self[int(i)][0] for i in indices])


ImageSplit = ArraySplit | FileSplit


def iter_batches(
    split: ImageSplit,
    batch_size: int,
    *,
    shuffle: bool = False,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
    num_workers: int = 0,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(uint8 images [B, C, H, W], int64 labels [B])`` over a split.

    The order is a permutation drawn from ``generator`` when ``shuffle`` is set, else the split's order.
    """
    n = len(split)
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    stop = n - n % batch_size if drop_last else n
    batches = [order[i : i + batch_size] for i in range(0, stop, batch_size)]
    if isinstance(split, ArraySplit) or num_workers == 0:
        for idx in batches:
            yield split.load(idx), split.labels[idx]
        return
    loader = torch.utils.data.DataLoader(split, batch_sampler=batches, num_workers=num_workers)
    yield from loader


@dataclass
class DatasetSplits:
    """Train / validation / test splits of one dataset, with what a model needs to know about it."""

    name: str
    class_names: list[str]
    train: ImageSplit
    val: ImageSplit
    test: ImageSplit
    channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str
    coarse_names: list[str] | None = None
    default_augment: str = "crop-flip"  # what augment: auto means for this data
    augment_reason: str = ""
    files: object | None = None  # image folders: what the files are (imagefolder.FolderSurvey)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def augment_for(self, policy: str) -> tuple[str, str]:
        """``(augmentation, why)`` for ``train.augment``: ``auto`` resolves to this data's default."""
        if policy == "auto":
            return self.default_augment, self.augment_reason or f"the default for {self.name}"
        return policy, "train.augment"

    def split(self, name: str) -> ImageSplit:
        if name not in ("train", "val", "test"):
            raise DatasetError(f"unknown split '{name}'", fix="use one of: train, val, test")
        return getattr(self, name)

    def record(self, config: dict) -> DatasetRecord:
        """What a checkpoint keeps of the data it was trained on: the splits, what the images are (for an
        image folder, the files as they are on disk and the size and channels they are decoded to,
        ``decoded_as``), the class names and the data config that reloads them."""
        files = self.files
        return DatasetRecord(
            name=self.name, source=self.source, classes=self.num_classes,
            channels=files.channels if files is not None else self.channels,
            image_size=files.side if files is not None else self.image_size,
            files=files.describe() if files is not None else None,
            decoded_as=f"{self.channels}x{self.image_size}x{self.image_size}" if files is not None else None,
            train=len(self.train), val=len(self.val), test=len(self.test),
            coarse_classes=len(self.coarse_names) if self.coarse_names else None,
            augment_auto=f"{self.default_augment}: {self.augment_reason}" if self.augment_reason
            else self.default_augment,
            class_names=self.class_names, config=config)

    def summary(self) -> dict:
        """The splits and what the images are, as plain values (a run's report)."""
        summary = self.record({}).model_dump(exclude={"class_names", "config"})
        if self.files is None:
            del summary["files"], summary["decoded_as"]
        return summary


class DatasetRecord(BaseModel):
    """The data a model was trained on, as its checkpoint records it (unknown keys of older checkpoints kept)."""

    model_config = ConfigDict(extra="allow")

    name: str = ""
    source: str = ""
    classes: int = 0
    channels: int | None = None
    image_size: int | None = None
    files: str | None = None  # an image folder: what its files are (imagefolder.FileSurvey.describe)
    decoded_as: str | None = None
    train: int = 0
    val: int = 0
    test: int = 0
    coarse_classes: int | None = None
    augment_auto: str | None = None
    class_names: list[str] = Field(default_factory=list)
    config: dict = Field(default_factory=dict, description="the data config (DataConfig) that reloads these splits")

"""One registry of datasets. ``load_dataset(cfg)`` returns train / validation / test splits.

The validation split is carved out of the training data (seeded, stratified) and is the only data
used for choices made after training (calibration, thresholds, partitions); the test split is only
ever reported on.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass

from askexpert.config import DataConfig
from askexpert.data import cifar, fashion_mnist, han, imagefolder
from askexpert.data.base import ArraySplit, DatasetSplits, ImageSplit
from askexpert.errors import DatasetError
from askexpert.splits import stratified_split, stratified_subset

IMAGEFOLDER_PREFIX = "imagefolder:"
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _carve(cfg: DataConfig, train_all: ImageSplit, test: ImageSplit) -> tuple[ImageSplit, ...]:
    keep, held = stratified_split(train_all.labels, cfg.val_fraction, cfg.split_seed)
    return _subsets(cfg, train_all.take(keep), train_all.take(held), test)


def _subsets(cfg: DataConfig, train: ImageSplit, val: ImageSplit, test: ImageSplit) -> tuple[ImageSplit, ...]:
    """The stratified subsets a config asks for, of splits that come as they are (no validation carved)."""
    if cfg.train_subset:
        train = train.take(stratified_subset(train.labels, cfg.train_subset, cfg.split_seed + 1))
    if cfg.val_subset:
        val = val.take(stratified_subset(val.labels, cfg.val_subset, cfg.split_seed + 2))
    if cfg.test_subset:
        test = test.take(stratified_subset(test.labels, cfg.test_subset, cfg.split_seed + 3))
    return train, val, test


def _han_split(directory, part: str, split: str) -> ArraySplit:
    import torch

    d = han.load_part(directory, part, split)
    coarse = torch.from_numpy(d["coarse"]) if "coarse" in d else None
    return ArraySplit(torch.from_numpy(d["images"]), torch.from_numpy(d["labels"]), coarse)


def _han(cfg: DataConfig, directory, image_size: int | None, channels: int | None) -> DatasetSplits:
    """The Han character task (``han100``) or its pretraining pool (``han100-pool``): the splits as built,
    each in its own fonts, so no validation split is carved (``data.val_fraction`` does not apply)."""
    manifest = han.read_manifest(directory)
    if cfg.name == han.POOL:
        train, val = _han_split(directory, "pool", "train"), _han_split(directory, "pool", "val")
        test, names, coarse = val, [c["name"] for c in manifest["pool_classes"]], None  # a pool's test is its val
    else:
        train, val, test = (_han_split(directory, "task", s) for s in ("train", "val", "test"))
        names, coarse = [c["name"] for c in manifest["classes"]], manifest["coarse_names"]
    train, val, test = _subsets(cfg, train, val, test)
    flip = bool(cfg.flip)  # a mirrored character is another glyph: never by default
    augment = "crop-flip" if flip else "crop"
    why = "shifts (pad and crop)" + (", mirrored half the time (data.flip)" if flip else
                                     "; never mirrored (a mirrored character is another glyph)")
    return DatasetSplits(cfg.name, names, train, val, test, 1, manifest["spec"]["size"], (manifest["mean"],),
                         (manifest["std"],), str(directory), coarse_names=coarse, default_augment=augment,
                         augment_reason=why)


def _fashion_mnist(cfg: DataConfig, directory, image_size: int | None, channels: int | None) -> DatasetSplits:
    train_all = ArraySplit(*fashion_mnist.load_split(directory, "train"))
    test = ArraySplit(*fashion_mnist.load_split(directory, "test"))
    train, val, test = _carve(cfg, train_all, test)
    # Centred, upright garments: shifts cost a small ViT more than they teach it (BENCHMARKS.md)
    augment = "flip" if cfg.flip is not False else "none"
    return DatasetSplits(cfg.name, list(fashion_mnist.CLASS_NAMES), train, val, test, 1, 28,
                         fashion_mnist.MEAN, fashion_mnist.STD, str(directory), default_augment=augment,
                         augment_reason="mirrored half the time, no shifts: centred, upright garments"
                         if augment == "flip" else "data.flip=false")


def _cifar(cfg: DataConfig, directory, image_size: int | None, channels: int | None) -> DatasetSplits:
    fmt = cifar.FORMATS[cfg.name]
    class_names, coarse_names = cifar.load_meta(directory, fmt)
    train_all = ArraySplit(*cifar.load_split(directory, fmt, "train"))
    test = ArraySplit(*cifar.load_split(directory, fmt, "test"))
    train, val, test = _carve(cfg, train_all, test)
    flip = cfg.flip is not False  # 50,000 natural images: shifts and mirrors, the standard CIFAR recipe
    augment = "crop-flip" if flip else "crop"
    why = "shifts (pad and crop)" + (", mirrored half the time" if flip else ", never mirrored (data.flip)")
    return DatasetSplits(cfg.name, class_names, train, val, test, 3, 32, fmt.mean, fmt.std,
                         str(directory), coarse_names=coarse_names, default_augment=augment, augment_reason=why)


def _imagefolder(cfg: DataConfig, path, image_size: int | None, channels: int | None) -> DatasetSplits:
    train_all, test, classes = imagefolder.load(path, size=image_size or 224, channels=channels or 3,
                                                test_fraction=cfg.test_fraction, seed=cfg.split_seed)
    files = imagefolder.survey(train_all.paths + test.paths)
    train, val, test = _carve(cfg, train_all, test)
    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if (channels or 3) == 3 else ((0.5,), (0.25,))
    augment, why = imagefolder.default_augment(files.side, bool(cfg.flip))
    return DatasetSplits(cfg.name, classes, train, val, test, channels or 3, image_size or 224, mean, std,
                         path, default_augment=augment, augment_reason=why, files=files)


@dataclass(frozen=True)
class DatasetEntry:
    """A dataset askexpert knows: how ``data.name`` names it, what it is, where its files are (downloading
    them when ``data.download`` allows) and how its splits are loaded from there."""

    name: str  # the exact name, or for a prefix entry the prefix followed by what it takes (imagefolder:PATH)
    description: str
    locate: Callable[[DataConfig], object]
    load: Callable[[DataConfig, object, int | None, int | None], DatasetSplits]
    prefix: str | None = None  # names starting with this belong to the entry

    def matches(self, name: str) -> bool:
        return name.startswith(self.prefix) if self.prefix else name == self.name


def _cifar_entry(name: str, description: str) -> DatasetEntry:
    def locate(cfg: DataConfig):
        return cifar.locate(cifar.FORMATS[cfg.name], cfg.root, allow_download=cfg.download)

    return DatasetEntry(name, description, locate, _cifar)


# the one table: lookup (locate_dataset, load_dataset) and listing (askexpert datasets) both read it
REGISTRY: tuple[DatasetEntry, ...] = (
    DatasetEntry("fashion-mnist", "Fashion-MNIST, 70k 28x28 grayscale images, 10 classes (offline: Debian package)",
                 lambda cfg: fashion_mnist.locate(cfg.root, allow_download=cfg.download), _fashion_mnist),
    _cifar_entry("cifar10", "CIFAR-10, 60k 32x32 RGB images, 10 classes"),
    _cifar_entry("cifar100", "CIFAR-100, 60k 32x32 RGB images, 100 classes in 20 superclasses"),
    DatasetEntry(han.TASK, "Han characters rendered from Debian's fonts: 100 classes in 20 radical groups, 500 train / "
                 "50 val / 100 test 32x32 grey images a class, each split in fonts of its own (offline: askexpert "
                 "data build han100)", lambda cfg: han.locate(cfg.root), _han),
    DatasetEntry(han.POOL, "han100's pretraining pool: 1,000 other characters, 100 train / 10 val images each "
                 "(built with han100)", lambda cfg: han.locate(cfg.root), _han),
    DatasetEntry("imagefolder:PATH", "your own images, one folder per class (PATH/{train,test}/<class>/ or "
                 "PATH/<class>/)", lambda cfg: cfg.name[len(IMAGEFOLDER_PREFIX):], _imagefolder,
                 prefix=IMAGEFOLDER_PREFIX),
)
DATASETS = {e.name: e.description for e in REGISTRY}


def dataset_entry(name: str) -> DatasetEntry:
    """The registry's entry for ``data.name``, or the error naming the closest known one."""
    entry = next((e for e in REGISTRY if e.matches(name)), None)
    if entry is not None:
        return entry
    close = difflib.get_close_matches(name, [e.name for e in REGISTRY if not e.prefix], n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    raise DatasetError(f"unknown dataset '{name}'", fix=f"{hint}choose one of: {', '.join(DATASETS)}")


def locate_dataset(cfg: DataConfig):
    """Where the files of ``cfg.name`` are (downloading them when ``cfg.download``), without loading them."""
    return dataset_entry(cfg.name).locate(cfg)


def load_dataset(cfg: DataConfig, *, image_size: int | None = None, channels: int | None = None) -> DatasetSplits:
    """Load the dataset ``cfg.name``. ``image_size``/``channels`` only matter for image folders."""
    entry = dataset_entry(cfg.name)
    return entry.load(cfg, entry.locate(cfg), image_size, channels)

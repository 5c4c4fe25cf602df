"""One registry of datasets. ``load_dataset(cfg)`` returns train / validation / test splits.

The validation split is carved out of the training data (seeded, stratified) and is the only data
used for choices made after training (calibration, thresholds, partitions); the test split is only
ever reported on.
"""

from __future__ import annotations

import difflib

from askexpert.config import DataConfig
from askexpert.data import cifar, fashion_mnist, imagefolder
from askexpert.data.base import ArraySplit, DatasetBundle, ImageSplit
from askexpert.errors import DatasetError
from askexpert.splits import stratified_split, stratified_subset

IMAGEFOLDER_PREFIX = "imagefolder:"
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
DATASETS = {
    "fashion-mnist": "Fashion-MNIST, 70k 28x28 grayscale images, 10 classes (offline: Debian package)",
    "cifar10": "CIFAR-10, 60k 32x32 RGB images, 10 classes",
    "cifar100": "CIFAR-100, 60k 32x32 RGB images, 100 classes in 20 superclasses",
    "imagefolder:PATH": "your own images, one folder per class (PATH/{train,test}/<class>/ or PATH/<class>/)",
}


def _carve(cfg: DataConfig, train_all: ImageSplit, test: ImageSplit) -> tuple[ImageSplit, ...]:
    keep, held = stratified_split(train_all.labels, cfg.val_fraction, cfg.split_seed)
    train, val = train_all.take(keep), train_all.take(held)
    if cfg.train_subset:
        train = train.take(stratified_subset(train.labels, cfg.train_subset, cfg.split_seed + 1))
    if cfg.val_subset:
        val = val.take(stratified_subset(val.labels, cfg.val_subset, cfg.split_seed + 2))
    if cfg.test_subset:
        test = test.take(stratified_subset(test.labels, cfg.test_subset, cfg.split_seed + 3))
    return train, val, test


def locate_dataset(cfg: DataConfig):
    """Where the files of ``cfg.name`` are (downloading them when ``cfg.download``), without loading them."""
    if cfg.name == "fashion-mnist":
        return fashion_mnist.locate(cfg.root, allow_download=cfg.download)
    if cfg.name in cifar.FORMATS:
        return cifar.locate(cifar.FORMATS[cfg.name], cfg.root, allow_download=cfg.download)
    if cfg.name.startswith(IMAGEFOLDER_PREFIX):
        return cfg.name[len(IMAGEFOLDER_PREFIX):]
    raise _unknown(cfg.name)


def _unknown(name: str) -> DatasetError:
    close = difflib.get_close_matches(name, [n for n in DATASETS if ":" not in n], n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    return DatasetError(f"unknown dataset '{name}'",
                        fix=f"{hint}choose one of: fashion-mnist, cifar10, cifar100, imagefolder:PATH")


def load_dataset(cfg: DataConfig, *, image_size: int | None = None, channels: int | None = None) -> DatasetBundle:
    """Load the dataset ``cfg.name``. ``image_size``/``channels`` only matter for image folders."""
    name = cfg.name
    if name == "fashion-mnist":
        directory = fashion_mnist.locate(cfg.root, allow_download=cfg.download)
        train_all = ArraySplit(*fashion_mnist.load_split(directory, "train"))
        test = ArraySplit(*fashion_mnist.load_split(directory, "test"))
        train, val, test = _carve(cfg, train_all, test)
        # Centred, upright garments: shifts cost a small ViT more than they teach it (BENCHMARKS.md)
        augment = "flip" if cfg.flip is not False else "none"
        return DatasetBundle(name, list(fashion_mnist.CLASS_NAMES), train, val, test, 1, 28,
                             fashion_mnist.MEAN, fashion_mnist.STD, str(directory), default_augment=augment,
                             augment_reason="mirrored half the time, no shifts: centred, upright garments"
                             if augment == "flip" else "data.flip=false")
    if name in cifar.FORMATS:
        fmt = cifar.FORMATS[name]
        directory = cifar.locate(fmt, cfg.root, allow_download=cfg.download)
        class_names, coarse_names = cifar.load_meta(directory, fmt)
        train_all = ArraySplit(*cifar.load_split(directory, fmt, "train"))
        test = ArraySplit(*cifar.load_split(directory, fmt, "test"))
        train, val, test = _carve(cfg, train_all, test)
        flip = cfg.flip is not False  # 50,000 natural images: shifts and mirrors, the standard CIFAR recipe
        augment = "crop-flip" if flip else "crop"
        why = "shifts (pad and crop)" + (", mirrored half the time" if flip else ", never mirrored (data.flip)")
        return DatasetBundle(name, class_names, train, val, test, 3, 32, fmt.mean, fmt.std,
                             str(directory), coarse_names=coarse_names, default_augment=augment, augment_reason=why)
    if name.startswith(IMAGEFOLDER_PREFIX):
        path = name[len(IMAGEFOLDER_PREFIX):]
        train_all, test, classes = imagefolder.load(
            path, size=image_size or 224, channels=channels or 3,
            test_fraction=cfg.test_fraction, seed=cfg.split_seed,
        )
        files = imagefolder.survey(train_all.paths + test.paths)
        train, val, test = _carve(cfg, train_all, test)
        mean, std = (IMAGENET_MEAN, IMAGENET_STD) if (channels or 3) == 3 else ((0.5,), (0.25,))
        augment, why = imagefolder.default_augment(files.side, bool(cfg.flip))
        return DatasetBundle(name, classes, train, val, test, channels or 3, image_size or 224, mean, std,
                             path, default_augment=augment, augment_reason=why, files=files)
    raise _unknown(name)

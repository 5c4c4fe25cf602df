"""``han100``: a 100-class task of Han characters rendered from Debian's font packages, CIFAR-100's shape,
with a disjoint 1,000-class pool for pretraining (ImageNet's role). This module reads a finished build
(``manifest.json`` and one ``.npz`` a split); the lab renders it (``askexpert data build han100``,
:mod:`askexpert_lab.han.build`, which says what a build holds and how it is made).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from askexpert.data.locations import download_target, search_roots
from askexpert.errors import DatasetError

TASK, POOL = "han100", "han100-pool"
FORMAT_VERSION = 1
PARTS = {"task": ("train", "val", "test"), "pool": ("train", "val")}


def default_directory(root: Path | None) -> Path:
    return download_target(root) / TASK


def locate(root: Path | None = None) -> Path:
    """The directory of a finished build (``data.root`` or ``$ASKEXPERT_DATA`` or the user cache, + han100)."""
    candidates_ = [r / TASK for r in search_roots(root)]
    for directory in candidates_:
        if (directory / "manifest.json").is_file():
            return directory
    raise DatasetError(f"{TASK} is not built ({', '.join(str(c) for c in candidates_)} holds no manifest.json)",
                       fix=f"askexpert data build {TASK}" + (f" --root {root}" if root is not None else "")
                       + " (about 2 minutes on 2 cores, offline, from Debian's font packages)")


def read_manifest(directory: Path) -> dict:
    manifest = json.loads((directory / "manifest.json").read_text())
    if manifest.get("format") != FORMAT_VERSION:
        raise DatasetError(f"{directory} was built by another version of the builder (format "
                           f"{manifest.get('format')}, this one reads {FORMAT_VERSION})",
                           fix=f"askexpert data build {TASK} --force")
    return manifest


def load_part(directory: Path, part: str, split: str) -> dict[str, np.ndarray]:
    """One split's arrays: ``images`` uint8 [N, 1, S, S], ``labels``, ``coarse`` (the task), ``faces``."""
    path = directory / f"{part}-{split}.npz"
    if not path.is_file():
        raise DatasetError(f"{path} is missing", fix=f"askexpert data build {TASK} --force")
    with np.load(path) as f:
        return {k: f[k] for k in f.files}

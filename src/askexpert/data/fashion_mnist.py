"""Fashion-MNIST (Xiao, Rasul and Vollgraf, 2017): 70,000 grayscale 28x28 images of 10 classes.

The four IDX files (gzipped or not) are read from, in order: ``data.root`` when set, else
``$ASKEXPERT_DATA/fashion-mnist``, the user cache ``~/.cache/askexpert/fashion-mnist``, and Debian's
package ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``). Where none has them and
downloads are allowed, they are fetched from the canonical mirror into the cache.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import torch

from askexpert.data.locations import download, download_target, search_roots
from askexpert.errors import DatasetError

CLASS_NAMES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip
MEAN, STD = (0.2860,), (0.3530,)
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
MIRROR = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
FILES = {  # split -> (images file, labels file); md5 of the canonical .gz files
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
MD5 = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}
_IDX_DTYPES = {0x08: np.uint8}


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped) of unsigned bytes into an array, checking its header."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as err:
        raise DatasetError(
            f"cannot read {path}: {err}", fix="delete the file so that it is fetched again"
        ) from err
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DatasetError(f"{path} is not an IDX file of unsigned bytes", fix="delete it and fetch again")
    ndim = raw[3]
    header = 4 + 4 * ndim
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(dims))
    if len(raw) != expected:
        raise DatasetError(
            f"{path} is truncated or damaged ({len(raw)} bytes, header says {expected})",
            fix="delete it and fetch the dataset again",
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _find(directory: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (directory / name).is_file():
            return directory / name
    return None


def _complete(directory: Path) -> bool:
    return all(_find(directory, stem) for pair in FILES.values() for stem in pair)


def locate(root: Path | None = None, *, allow_download: bool = True) -> Path:
    """Return the directory holding the four Fashion-MNIST files, downloading them if allowed."""
    candidates = [r / "fashion-mnist" for r in search_roots(root)]
    if root is not None:
        candidates.insert(0, Path(root).expanduser())
    else:
        candidates.append(DEBIAN_DIR)
    for directory in candidates:
        if _complete(directory):
            return directory
    if allow_download:
        target = download_target(root) / "fashion-mnist"
        mirror = os.environ.get("ASKEXPERT_FASHION_MNIST_MIRROR", MIRROR)
        try:
            for name, md5 in MD5.items():
                if _find(target, name.removesuffix(".gz")) is None:
                    download(mirror + name, target, name, md5 if mirror == MIRROR else None)
            return target
        except DatasetError as err:
            reason = f"; download failed: {err.message}"
    else:
        reason = " (downloads disabled)"
    where = ", ".join(str(c) for c in candidates)
    raise DatasetError(
        f"Fashion-MNIST not found in {where}{reason}",
        fix="install Debian's package (sudo apt-get install dataset-fashion-mnist), or put the four "
        "IDX files in $ASKEXPERT_DATA/fashion-mnist, or connect to the network so that they are "
        f"downloaded into {download_target(root) / 'fashion-mnist'}",
    )


def load_split(directory: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``uint8 [N, 1, 28, 28]`` and labels ``int64 [N]`` of the train or test split."""
    img_stem, lbl_stem = FILES[split]
    images = read_idx(_find(directory, img_stem))
    labels = read_idx(_find(directory, lbl_stem))
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DatasetError(
            f"Fashion-MNIST {split} files in {directory} disagree: images {images.shape}, labels "
            f"{labels.shape}",
            fix="delete them and fetch the dataset again",
        )
    if labels.max(initial=0) >= len(CLASS_NAMES):
        raise DatasetError(f"Fashion-MNIST {split} labels in {directory} exceed 9", fix="fetch again")
    return torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))

"""CIFAR-10 and CIFAR-100 (Krizhevsky, 2009) in their standard Python formats.

``cifar-10-batches-py/`` (data_batch_1..5, test_batch, batches.meta) and ``cifar-100-python/``
(train, test, meta; fine and coarse labels) are read from ``data.root`` when set, else from
``$ASKEXPERT_DATA`` or the user cache; where they are absent and downloads are allowed, the canonical
archive is fetched (md5-checked) and unpacked into the cache.
"""

from __future__ import annotations

import pickle
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from askexpert.data.locations import download, download_target, search_roots
from askexpert.errors import DatasetError


@dataclass(frozen=True)
class CifarFormat:
    name: str
    folder: str
    url: str
    archive_md5: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    meta_file: str
    label_key: str
    names_key: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


CIFAR10 = CifarFormat(
    name="cifar10",
    folder="cifar-10-batches-py",
    url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    archive_md5="c58f30108f718f92721af3b95e74349a",
    train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
    test_files=("test_batch",),
    meta_file="batches.meta",
    label_key="labels",
    names_key="label_names",
    mean=(0.4914, 0.4822, 0.4465),
    std=(0.2470, 0.2435, 0.2616),
)
CIFAR100 = CifarFormat(
    name="cifar100",
    folder="cifar-100-python",
    url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
    archive_md5="eb9058c3a382ffc7106e4002c42a8d85",
    train_files=("train",),
    test_files=("test",),
    meta_file="meta",
    label_key="fine_labels",
    names_key="fine_label_names",
    mean=(0.5071, 0.4865, 0.4409),
    std=(0.2673, 0.2564, 0.2762),
)
FORMATS = {f.name: f for f in (CIFAR10, CIFAR100)}


def _unpickle(path: Path) -> dict:
    """Load one CIFAR batch file (a Python 2 pickle of a dict), normalising keys to ``str``."""
    try:
        with open(path, "rb") as f:
            obj = pickle.load(f, encoding="latin1")
    except (OSError, pickle.UnpicklingError, EOFError, ValueError) as err:
        raise DatasetError(f"cannot read {path}: {err}", fix="delete the folder and fetch it again") from err
    if not isinstance(obj, dict):
        raise DatasetError(f"{path} is not a CIFAR batch file", fix="delete the folder and fetch it again")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _extract(archive: Path, target: Path) -> None:
    with tarfile.open(archive, "r:gz") as tar:
        try:
            tar.extractall(target, filter="data")
        except TypeError:  # Python releases before the extraction-filter backport
            tar.extractall(target)  # noqa: S202


def _complete(directory: Path, fmt: CifarFormat) -> bool:
    return all((directory / n).is_file() for n in (*fmt.train_files, *fmt.test_files, fmt.meta_file))


def locate(fmt: CifarFormat, root: Path | None = None, *, allow_download: bool = True,
           url: str | None = None, md5: str | None = None) -> Path:
    """Directory holding the unpacked ``fmt.folder``; downloads the archive when allowed."""
    candidates = [r / fmt.folder for r in search_roots(root)]
    for directory in candidates:
        if _complete(directory, fmt):
            return directory
    target = download_target(root)
    if allow_download:
        url = url or fmt.url
        name = url.rsplit("/", 1)[-1]
        try:
            archive = download(url, target, name, md5 if url != fmt.url else fmt.archive_md5)
        except DatasetError as err:
            reason = f"; download failed: {err.message}"
        else:
            _extract(archive, target)
            if _complete(target / fmt.folder, fmt):
                return target / fmt.folder
            reason = f"; {archive} did not contain a complete {fmt.folder}/"
    else:
        reason = " (downloads disabled)"
    raise DatasetError(
        f"{fmt.name} not found in {', '.join(str(c) for c in candidates)}{reason}",
        fix=f"connect to the network so that it is downloaded, or unpack {fmt.url.rsplit('/', 1)[-1]} "
        f"into {target} (or $ASKEXPERT_DATA)",
    )


def load_split(directory: Path, fmt: CifarFormat, split: str):
    """``(images uint8 [N,3,32,32], labels int64 [N], coarse int64 [N] or None)`` of one split."""
    files = fmt.train_files if split == "train" else fmt.test_files
    data, labels, coarse = [], [], []
    for name in files:
        batch = _unpickle(directory / name)
        try:
            data.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            labels.append(np.asarray(batch[fmt.label_key], dtype=np.int64))
            if "coarse_labels" in batch:
                coarse.append(np.asarray(batch["coarse_labels"], dtype=np.int64))
        except (KeyError, ValueError) as err:
            raise DatasetError(
                f"{directory / name} is not in the {fmt.folder} format ({err})",
                fix="delete the folder and fetch it again",
            ) from err
    images, y = np.concatenate(data), np.concatenate(labels)
    if len(images) != len(y):
        raise DatasetError(f"{directory}: {len(images)} images but {len(y)} labels", fix="fetch again")
    coarse_t = torch.from_numpy(np.concatenate(coarse)) if coarse else None
    return torch.from_numpy(images), torch.from_numpy(y), coarse_t


def load_meta(directory: Path, fmt: CifarFormat) -> tuple[list[str], list[str] | None]:
    """Class names, and coarse (superclass) names for CIFAR-100."""
    meta = _unpickle(directory / fmt.meta_file)
    try:
        names = [str(n) for n in meta[fmt.names_key]]
    except KeyError as err:
        raise DatasetError(f"{directory / fmt.meta_file} lacks {err}", fix="fetch the dataset again") from err
    coarse = [str(n) for n in meta["coarse_label_names"]] if "coarse_label_names" in meta else None
    return names, coarse

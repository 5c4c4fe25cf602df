"""Where datasets live on disk, and how they are fetched where a network exists."""

from __future__ import annotations

import os
from pathlib import Path

from askexpert.errors import DatasetError
from askexpert.paths import user_cache_dir


def search_roots(root: Path | None) -> list[Path]:
    """Directories searched for datasets, in order.

    An explicit ``root`` (config ``data.root``) is the only place searched. Otherwise:
    ``$ASKEXPERT_DATA``, then the user cache directory.
    """
    if root is not None:
        return [Path(root).expanduser()]
    roots = []
    if os.environ.get("ASKEXPERT_DATA"):
        roots.append(Path(os.environ["ASKEXPERT_DATA"]).expanduser())
    roots.append(user_cache_dir())
    return roots


def download_target(root: Path | None) -> Path:
    """Directory a download is written to: the explicit root, else the user cache."""
    return Path(root).expanduser() if root is not None else user_cache_dir()


def download(url: str, directory: Path, filename: str, md5: str | None) -> Path:
    """Download ``url`` into ``directory/filename`` (checked against ``md5``) via torchvision."""
    from torchvision.datasets.utils import download_url

    directory.mkdir(parents=True, exist_ok=True)
    try:
        download_url(url, str(directory), filename=filename, md5=md5)
    except Exception as err:  # network errors come in many types (URLError, OSError, HTTPError...)
        partial = directory / filename
        if partial.exists() and md5 is not None:
            partial.unlink()
        raise DatasetError(f"download of {url} failed ({type(err).__name__}: {err})") from err
    path = directory / filename
    if not path.exists():
        raise DatasetError(f"download of {url} produced no file {path}")
    return path

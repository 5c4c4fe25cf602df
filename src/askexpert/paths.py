"""Where askexpert keeps files of its own (torch-free: the edge imports it)."""

from __future__ import annotations

import os
from pathlib import Path


def user_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/askexpert`` (``~/.cache/askexpert`` by default): downloads, reference workloads."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "askexpert"

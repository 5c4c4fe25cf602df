"""Image files to ``uint8 [C, H, W]`` arrays: Pillow and NumPy only (image folders and the edge share it).

Decoded, converted to the model's channels, resized (shorter side, bilinear) and centre-cropped.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from askexpert.errors import DatasetError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}


def read_image(path: Path, size: int, channels: int) -> np.ndarray:
    """One image file as ``uint8 [channels, size, size]``; a damaged file is a :class:`DatasetError`."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            img = img.convert("L" if channels == 1 else "RGB")
            scale = size / min(img.size)
            w, h = max(size, round(img.width * scale)), max(size, round(img.height * scale))
            img = img.resize((w, h), Image.BILINEAR)
            left, top = (w - size) // 2, (h - size) // 2
            img = img.crop((left, top, left + size, top + size))
            arr = np.array(img, dtype=np.uint8)  # a writable copy
    except (OSError, ValueError) as err:
        raise DatasetError(f"cannot decode image {path}: {err}", fix="remove or replace the damaged file") from err
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    return np.ascontiguousarray(arr)

"""A user's own images, one sub-folder per class: ``imagefolder:PATH``.

``PATH/train/<class>/*`` with ``PATH/test/<class>/*`` (``val`` is accepted for ``test``) is used as
given. A flat ``PATH/<class>/*`` gets a seeded, stratified test split carved out of it. Images are
decoded on demand and resized to the model's input size.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
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


GRAY_MODES = {"1", "L", "LA", "I", "I;16", "F"}
SMALL_SIDE = 64  # up to this native size an image folder is not cropped by default, beyond it randomly


@dataclass
class FolderSurvey:
    """What the files of an image folder are, from their headers (a sample of them, not decoded)."""

    files: int
    sampled: int
    channels: int  # 1 when every sampled file is grayscale (or a colour file of grey pixels), else 3
    modes: dict[str, int]
    width: tuple[int, int, int]  # min, median, max
    height: tuple[int, int, int]
    unreadable: list[str]  # sampled files that are no image (decoding them fails, naming the file)

    @property
    def side(self) -> int:
        """The median shorter side: what decides the augmentation."""
        return min(self.width[1], self.height[1])

    def describe(self) -> str:
        (w0, w1, w2), (h0, h1, h2) = self.width, self.height
        size = f"{w1}x{h1}" if (w0, w2, h0, h2) == (w1, w1, h1, h1) else \
            f"{w0}-{w2} x {h0}-{h2} (median {w1}x{h1})"
        kind = "grayscale" if self.channels == 1 else "colour"
        modes = ", ".join(f"{m} {n}" for m, n in sorted(self.modes.items()))
        text = f"{self.files} files, {kind} ({modes} of {self.sampled} read), {size} px"
        if self.unreadable:
            text += (f"; {len(self.unreadable)} unreadable ({', '.join(self.unreadable[:3])}): remove or replace "
                     "them")
        return text


def survey(paths: list[Path], sample: int = 200, seed: int = 0) -> FolderSurvey:
    """Read the headers of up to ``sample`` files (a seeded sample) for their mode and size."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    chosen = [paths[i] for i in sorted(rng.permutation(len(paths))[:sample])] if len(paths) > sample else paths
    modes: Counter = Counter()
    widths, heights, unreadable = [], [], []
    colour_seen = False
    for p in chosen:
        try:
            with Image.open(p) as img:
                mode = img.mode
                if mode == "P":  # a palette: grey only if every palette entry is
                    pal = np.asarray(img.getpalette() or [0, 0, 0]).reshape(-1, 3)
                    mode = "P (grey)" if (pal == pal[:, :1]).all() else "P"
                elif mode == "RGB" and not colour_seen:  # grey pictures saved as colour files? (until one is not)
                    img.draft("RGB", (64, 64))  # JPEG: decode at a reduced size
                    pixels = np.asarray(img)
                    if (pixels == pixels[..., :1]).all():
                        mode = "RGB (grey)"
                    else:
                        colour_seen = True
                modes[mode] += 1
                widths.append(img.width)
                heights.append(img.height)
        except OSError:
            unreadable.append(str(p))
    gray = all(m in GRAY_MODES or m.endswith("(grey)") for m in modes)

    def stats(v: list[int]) -> tuple[int, int, int]:
        return (min(v), int(np.median(v)), max(v)) if v else (0, 0, 0)

    return FolderSurvey(len(paths), len(chosen), 1 if gray else 3, dict(modes), stats(widths), stats(heights),
                        unreadable)


def default_augment(side: int, flip: bool) -> tuple[str, str]:
    """``(policy, why)`` for ``augment: auto`` on a folder of images of native shorter side ``side``.

    Small images get no shifts or crops: on a small set they cost far more accuracy than they teach
    (benchmarks/imagefolder_small.py: 1,400 Fashion-MNIST PNGs, 74.4% without, 68.6% with shifts, 62.0%
    with resized crops and flips; scikit-learn's digits 95.8 / 92.5 / 80.8%, at 15 epochs). Larger
    photos get random resized crops, the usual recipe for fine-tuning a pretrained model. Mirroring
    only where ``data.flip`` says a mirrored image keeps its class (digits and text do not)."""
    if side <= SMALL_SIDE:
        geometry, why = None, f"no shifts or crops for small images ({side} px <= {SMALL_SIDE}: on small sets " \
            "they cost more than they teach)"
    else:
        geometry, why = "rrc", f"random resized crops for {side} px images"
    if flip:
        return (f"{geometry}-flip" if geometry else "flip"), why + ", mirrored half the time (data.flip)"
    return geometry or "none", why + ", never mirrored (set data.flip=true if a mirrored image keeps its class)"


def load(path: str, *, size: int, channels: int, test_fraction: float, seed: int):
    """``(train FileSplit, test FileSplit, class names)`` for an image folder, decoded at ``size`` with
    ``channels`` (the model's input, whatever the files are)."""
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

"""The expert server paced to a near-edge accelerator (``askexpert serve --server-device NAME``): every batch
lasts the device's time for it (:mod:`askexpert.costs.server_device`), as the emulated edge's model calls last
its device model's.

Pacing can only slow a call down, and an accelerator is often faster than this host's CPU. So a server that
knows the images it will be asked about (``--known-images FILE.npz``: the testbed's test set) computes their
answers ahead, at start, and answers a batch of known images from them at the device's time; an image it
does not know is computed here, and where that takes longer than the device would, the batch lasts the
host's time and is counted (``over``, ``over_ms``) so a report says by how much the run was slower than the
device. :class:`ServerPacer` is passed to the pool (no module state); a fake clock and sleep test it.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from askexpert.costs.device_model import GraphFeatures
from askexpert.costs.server_device import ServerDevice
from askexpert.errors import ConfigError


def image_key(image: np.ndarray) -> bytes:
    """A known image's key: the digest of its shape and bytes."""
    h = hashlib.blake2b(digest_size=16)
    h.update(str(image.shape).encode())
    h.update(np.ascontiguousarray(image).tobytes())
    return h.digest()


@dataclass
class PaceStats:
    batches: int = 0
    known_images: int = 0  # answered from the answers computed ahead
    computed_images: int = 0
    over: int = 0  # batches the host took longer for than the device would
    over_ms: float = 0.0

    def describe(self) -> str:
        return (f"{self.batches} batches paced ({self.known_images} images answered ahead, {self.computed_images} "
                f"computed here); {self.over} took longer here than on the device, by {self.over_ms:.1f} ms in all")


@dataclass
class ServerPacer:
    """Paces each expert's batches to ``device``'s time for its graph (``features`` by expert id)."""

    device: ServerDevice
    features: dict[str, GraphFeatures]
    clock: Callable[[], float] = time.perf_counter
    sleep: Callable[[float], None] = time.sleep
    known: dict[str, dict[bytes, np.ndarray]] = field(default_factory=dict)
    stats: PaceStats = field(default_factory=PaceStats)

    def batch_s(self, key: str, n: int) -> float:
        return self.device.batch_ms(self.features[key], n) / 1000

    def learn(self, key: str, images: np.ndarray, probs: np.ndarray) -> None:
        """Keep expert ``key``'s answers (``probs``, one row an image) to ``images`` to serve them ahead."""
        table = self.known.setdefault(key, {})
        for image, row in zip(images, probs, strict=True):
            table[image_key(image)] = row

    def run(self, key: str, images: np.ndarray,
            compute: Callable[[np.ndarray], np.ndarray]) -> tuple[np.ndarray, float]:
        """Expert ``key``'s probabilities for ``images``, the call lasting the device's time for the batch; and
        that time in seconds (the host's where it took longer), what the server reports as the batch's compute
        (a sleep's overshoot is the server's, not the device's)."""
        t0 = self.clock()
        table = self.known.get(key, {})
        rows = [table.get(image_key(img)) for img in images] if table else [None]
        if all(r is not None for r in rows):
            probs = np.stack(rows)
            self.stats.known_images += len(images)
        else:
            probs = compute(images)
            self.stats.computed_images += len(images)
        target = self.batch_s(key, len(images))
        rest = target - (self.clock() - t0)
        self.stats.batches += 1
        if rest > 0:
            self.sleep(rest)
        else:
            self.stats.over += 1
            self.stats.over_ms += -rest * 1000
        return probs, target - min(rest, 0.0)


def read_known_images(path: Path) -> np.ndarray:
    """The ``images`` array of an ``.npz`` file (``uint8 [N, C, H, W]``), or a one-line error naming the fix."""
    try:
        with np.load(path) as data:
            images = data["images"]
    except (OSError, KeyError, ValueError) as err:
        raise ConfigError(f"cannot read known images from {path}: {err}",
                          fix="pass an .npz with an 'images' array, uint8 [N, C, H, W] (e.g. the demo's "
                          "runs/demo/report/test-images.npz)") from err
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ConfigError(f"{path}'s images are {images.dtype} {list(images.shape)}", fix="save uint8 [N, C, H, W]")
    return images


def served_features(pool) -> dict[str, GraphFeatures]:
    """Each served model's op-class features, read from its ONNX graph (exported once, cached by weights)."""
    from askexpert.costs.device_model import graph_features
    from askexpert.models.onnx_export import cached_onnx

    return {key: graph_features(cached_onnx(pool.get(key).checkpoint.stored)) for key in pool.ids()}


def pace_pool(pool, device_name: str, known_images: np.ndarray | None = None, batch: int = 256) -> ServerPacer | None:
    """Pace ``pool``'s batches to server device ``device_name`` (``host``: no pacing, None), its answers to
    ``known_images`` computed ahead for every expert whose input they fit."""
    from askexpert.costs.server_device import server_device

    device = server_device(device_name)
    if device is None:
        return None
    pacer = ServerPacer(device, served_features(pool))
    if known_images is not None:
        for key in pool.ids():
            spec = pool.get(key).spec.input
            if tuple(known_images.shape[1:]) != (spec.channels, spec.size, spec.size):
                raise ConfigError(f"the known images are {list(known_images.shape[1:])}; expert {key} takes "
                                  f"{[spec.channels, spec.size, spec.size]}", fix="pass the images the edge will send")
            for i in range(0, len(known_images), batch):
                chunk = known_images[i:i + batch]
                pacer.learn(key, chunk, pool.infer(key, chunk).probs.numpy())  # not paced yet: pool.pacer unset
    pool.pacer = pacer
    return pacer

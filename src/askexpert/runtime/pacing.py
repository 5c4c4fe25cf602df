"""How the edge's work is paced: an object handed to the model and the client it paces.

The deployed edge runs at its own speed: :data:`NO_PACING` (the default everywhere) calls straight
through. An emulated edge (the lab's :mod:`askexpert_lab.testbed.pacing`: a device model's time for each
model call, other work dilated by the device's scalar slowdown) passes its own :class:`Pacer` to
:class:`~askexpert.runtime.onnx_model.OnnxGeneralist`, the expert clients and
:func:`~askexpert.runtime.session.run_edge`. Nothing here is module state: two edges in one process can
be paced differently.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol, TypeVar

T = TypeVar("T")


class Pacer(Protocol):
    """Paces the edge's work to an emulated device (a no-op on a real one)."""

    def paced(self, call: Callable[[], T], graph: Path | str | None = None, images: int = 1) -> T:
        """``call()``, a model call on ``images`` images of the ONNX ``graph``, lasting the device's time."""
        ...

    def dilated(self, call: Callable[[], T]) -> T:
        """``call()``, the edge's own non-model work (encoding, the HTTP exchange), at the device's speed."""
        ...


class NoPacing:
    """The real edge: every call at the host's own speed."""

    def paced(self, call: Callable[[], T], graph: Path | str | None = None, images: int = 1) -> T:
        return call()

    def dilated(self, call: Callable[[], T]) -> T:
        return call()

    def __repr__(self) -> str:
        return "NO_PACING"


NO_PACING = NoPacing()

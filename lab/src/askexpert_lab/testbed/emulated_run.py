"""What ``askexpert edge --device D`` and ``askexpert build-system --p95-latency/--edge-energy`` do beyond the
library's own steps: the edge session run on an emulated device, and a freshly built bundle pointed at the
operating point a budget allows (removed when none fits, so nothing half-made stays where it was built).
The commands parse their arguments, call these, and print."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from askexpert.contract.bundle import System
from askexpert.costs.plan import Choice, CostParts
from askexpert.runtime.session import EdgeReport, EdgeSettings, freeze_split, run_edge
from askexpert.system.build import archive_bundle
from askexpert_lab.testbed.measure import plan_bundle, validation_images
from askexpert_lab.testbed.placement import EmulatedEdge, Mode, Placement


def run_edge_emulated(settings: EdgeSettings, device: str, mode: Mode = "auto",
                      say: Callable[[str], None] = print) -> tuple[EdgeReport, Placement]:
    """:func:`run_edge` in the emulated ``device``'s own pinned process, paced by its device (the pacer travels
    with the call). A ``split:`` input is frozen to an ``.npz`` first (the emulated edge, like a deployed one,
    reads no dataset), and the edge runs one thread on its core unless the settings name a count."""
    with EmulatedEdge(device, mode=mode) as edge, tempfile.TemporaryDirectory() as tmp:
        say(edge.placement.describe())
        settings = freeze_split(settings, Path(tmp) / "inputs.npz")
        if settings.threads is None:
            settings = settings.with_(threads=edge.threads)
        say(f"streaming {' '.join(settings.inputs.sources)} through the {edge.placement.label} ...")
        report = edge.call(run_edge, s=settings)
    return report, edge.placement


def plan_new_bundle(bundle: System, *, images: int, archive: bool = False,
                    **plan) -> tuple[System, Choice, CostParts, Placement]:
    """Point a bundle just built at the most accurate operating point within the budget
    (:func:`~askexpert_lab.testbed.measure.plan_bundle`'s ``p95_ms`` / ``edge_mj`` on its ``device`` over its
    ``link``), measured on ``images`` of its validation images; the bundle is removed when no point fits or
    anything fails, and archived after when asked."""
    try:
        planned = plan_bundle(bundle, images=validation_images(bundle, images), **plan)
    except BaseException:
        shutil.rmtree(bundle.root, ignore_errors=True)
        raise
    if archive:
        archive_bundle(planned[0].root)
    return planned

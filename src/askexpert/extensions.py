"""Where the product reaches the lab without importing it: Python entry points.

The lab (the ``askexpert-lab`` distribution, package ``askexpert_lab``: testbed, bench, demo, the emulated
devices, the han100 renderer) imports the product, never the reverse. A few product commands keep flags whose
work is the lab's (``askexpert edge --device rpi4`` runs an emulated edge; ``build-system --p95-latency``
measures one; ``serve --server-device h100`` paces the pool) and ``askexpert`` lists the lab's commands: both
find the lab through the entry points it declares (groups :data:`COMMANDS` and :data:`HOOKS`), so an install
without the lab (``pip install askexpert``, the edge) has none of its code and a lab flag says how to get it.
"""

from __future__ import annotations

from importlib.metadata import entry_points

from askexpert.errors import AskExpertError

COMMANDS = "askexpert.commands"  # name -> a module with register(sub): a command the lab adds to `askexpert`
HOOKS = "askexpert.lab"  # name -> a function the product calls for a lab flag
LAB_INSTALL = "pip install askexpert-lab (from a clone: pip install -e lab)"


def lab_commands() -> dict[str, object]:
    """The lab's commands by name (empty without the lab)."""
    return {ep.name: ep.load() for ep in entry_points(group=COMMANDS)}


def lab_hook(name: str, needed_by: str):
    """The lab's function ``name``, or an error naming the install when the lab is not here."""
    found = [ep for ep in entry_points(group=HOOKS) if ep.name == name]
    if not found:
        raise AskExpertError(f"{needed_by} is the lab's work (askexpert-lab), which this install leaves out",
                             fix=LAB_INSTALL)
    return found[0].load()

"""The product and the lab: the lab's commands and hooks reach the product's CLI through entry points; without
the lab, `askexpert` still lists every command and a lab command or flag says how to install it."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import tomllib

from askexpert import extensions
from askexpert.cli import COMMANDS, build_parser, main
from askexpert.errors import AskExpertError

LAB_PYPROJECT = Path(__file__).resolve().parents[1] / "lab" / "pyproject.toml"


def _declared() -> dict[str, dict[str, str]]:
    return tomllib.loads(LAB_PYPROJECT.read_text())["project"]["entry-points"]


def test_the_lab_declares_every_command_and_hook_the_product_asks_for():
    declared = _declared()
    lab_names = {c for c in COMMANDS if isinstance(c, str)}
    assert set(declared[extensions.COMMANDS]) == lab_names == set(extensions.lab_commands())
    asked = set()
    for path in (Path(extensions.__file__).parent).rglob("*.py"):
        text = path.read_text()
        asked |= {part.split('"')[1] for part in text.split("lab_hook(")[1:] if part.startswith('"')}
    assert asked == set(declared[extensions.HOOKS]) == {"run_edge_emulated", "plan_new_bundle", "pace_pool",
                                                         "read_known_images"}
    for target in declared[extensions.HOOKS].values():  # each resolves to a function of the installed lab
        module, name = target.split(":")
        assert callable(getattr(importlib.import_module(module), name))
    for name in asked:
        assert callable(extensions.lab_hook(name, "a test"))


@pytest.fixture
def no_lab(monkeypatch):
    """An install without the lab: no entry point in the lab's groups (what `pip install askexpert` gives)."""
    real = extensions.entry_points

    def without_lab(*, group: str):
        return [] if group in (extensions.COMMANDS, extensions.HOOKS) else real(group=group)
    monkeypatch.setattr(extensions, "entry_points", without_lab)


def _help(capsys) -> str:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    return capsys.readouterr().out


def test_without_the_lab_every_command_is_listed_and_a_lab_command_names_the_install(no_lab, capsys):
    text = _help(capsys)
    for name in ("demo", "testbed", "bench", "data", "load", "serve", "edge", "build-system"):
        assert f"\n    {name} " in text
    assert main(["bench", "--profile", "smoke"]) == 2
    err = capsys.readouterr().err
    assert "'askexpert bench' is the lab's" in err and "fix: pip install askexpert-lab" in err
    with pytest.raises(AskExpertError, match="--device rpi4 .* the lab's work") as caught:
        extensions.lab_hook("run_edge_emulated", "--device rpi4 (an emulated edge)")
    assert "pip install -e lab" in caught.value.fix


def test_with_the_lab_its_commands_are_the_lab_modules(capsys):
    parser = build_parser()
    args = parser.parse_args(["data", "build", "han100", "--tiny"])
    assert args.func.__module__ == "askexpert_lab.cli.data"

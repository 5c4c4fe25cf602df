"""The suite's own rules, read from its files: what the test install provides is imported through
:func:`conftest.provided` (a failure naming the install when missing), never skipped over."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import provided

TESTS = Path(__file__).resolve().parent


def test_a_missing_test_dependency_fails_and_names_the_install():
    with pytest.raises(pytest.fail.Exception, match="no_such_module_for_askexpert.*bootstrap.sh"):
        provided("no_such_module_for_askexpert")
    assert provided("numpy").__name__ == "numpy"


def test_no_test_skips_over_what_the_install_provides():
    """``importorskip`` and a skip decided by ``find_spec`` would pass over a missing dependency in silence."""
    pattern = re.compile(r"importorskip\(|skipif\([^)]*find_spec")
    found = [f"{p.name}:{i}" for p in sorted(TESTS.glob("*.py")) if p.name != Path(__file__).name
             for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert not found, found

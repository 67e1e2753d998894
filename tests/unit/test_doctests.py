"""Every module's docstring examples run (doctest), so the documented calls stay true."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import circuitsteer

MODULES = sorted(
    m.name
    for m in pkgutil.walk_packages(circuitsteer.__path__, "circuitsteer.")
    if m.name != "circuitsteer.__main__"
)


@pytest.mark.parametrize("name", MODULES)
def test_doctests(name):
    mod = importlib.import_module(name)
    result = doctest.testmod(mod, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{name}: {result.failed} of {result.attempted} examples failed"


def test_every_package_is_walked():
    assert "circuitsteer.engine.api" in MODULES and "circuitsteer.tasks.ioi" in MODULES

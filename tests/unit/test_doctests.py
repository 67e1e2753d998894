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
    if not m.name.endswith("__main__")
)


@pytest.mark.parametrize("name", MODULES)
def test_doctests(name):
    mod = importlib.import_module(name)
    result = doctest.testmod(mod, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{name}: {result.failed} of {result.attempted} examples failed"


def test_every_package_is_walked():
    assert "circuitsteer.engine.api" in MODULES and "circuitsteer.tasks.ioi" in MODULES


def test_public_api_is_explicit_and_exports_every_error():
    import inspect

    from circuitsteer import errors

    assert len(set(circuitsteer.__all__)) == len(circuitsteer.__all__)
    missing = [n for n in circuitsteer.__all__ if not hasattr(circuitsteer, n)]
    assert not missing, missing
    # every typed error defined anywhere in the package (errors.py and the subpackages)
    typed = {
        n
        for name in MODULES
        for n, c in inspect.getmembers(importlib.import_module(name), inspect.isclass)
        if issubclass(c, errors.CircuitSteerError) and c.__module__.startswith("circuitsteer")
    }
    assert typed <= set(circuitsteer.__all__), typed - set(circuitsteer.__all__)


def test_cli_uses_only_public_names():
    import ast
    from pathlib import Path

    for path in sorted(Path(circuitsteer.__file__).with_name("cli").glob("*.py")):
        tree = ast.parse(path.read_text())
        inside = [
            (node.module, a.name)
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom)
            and (node.module or "").startswith("circuitsteer")
            and not (node.module or "").startswith("circuitsteer.cli")
            for a in node.names
        ]
        assert not inside, f"{path.name} imports from inside the package: {inside}; use cs.<name>"
        used = {
            node.attr
            for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
            and node.value.id == "cs"
        }  # fmt: skip
        assert used <= set(circuitsteer.__all__), (path.name, used - set(circuitsteer.__all__))

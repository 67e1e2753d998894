"""The README's quick tour runs as written (on the bundled toy-ioi model)."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_quick_tour_runs():
    code = re.search(r"```python\n(.*?)```", README.read_text(), re.S)
    assert code, "README has no python block"
    namespace: dict = {}
    exec(compile(code.group(1), str(README), "exec"), namespace)
    assert namespace["per_head"].logits.shape == (16,)
    assert namespace["circuit"].nodes_by_class("name mover") == ["a9.h9", "a10.h0", "a9.h6"]


def test_readme_audit_block_runs():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    audit = next(b for b in blocks if "find_ioi_circuit" in b)
    namespace: dict = {}
    exec(compile(audit, str(README), "exec"), namespace)
    dla = namespace["dla"]
    assert abs(dla["dla"].sum() - dla.attrs["logit_diff"]) < 1e-3
    assert set(namespace["probes"]) >= {"standard", "prefix_S_s2_fresh"}
    assert "S suppression" in namespace["circuit"].classes

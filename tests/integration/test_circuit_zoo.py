"""Circuit files that name a zoo model are checked against that model's real shape, which the
model registry reads from the zoo folder's config.json without loading weights."""

from __future__ import annotations

import json

import pytest

from circuitsteer.circuit import SCHEMA, Circuit, load_circuit
from circuitsteer.errors import ShapeMismatchError
from circuitsteer.models import ZOO_DIR, known_shape, load_model

FOLDERS = sorted(p.parent.name for p in ZOO_DIR.glob("*/config.json"))


@pytest.mark.parametrize("name", FOLDERS)
def test_known_shape_of_a_zoo_model_is_its_loaded_shape(name):
    assert known_shape(name) == load_model(name).shape


def test_a_file_naming_a99_h0_for_toy_ioi_fails_with_the_real_shape_and_the_fix(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"schema": SCHEMA, "model": "toy-ioi", "nodes": {"a99.h0": {}}}))
    with pytest.raises(ShapeMismatchError) as info:
        load_circuit(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}: a99.h0: layer 99 is outside the model (4 layers x 4 heads")
    assert "toy-ioi" in msg and "Fix: use layers 0..3" in msg
    ok = {"schema": SCHEMA, "model": "toy-ioi", "nodes": {"a3.h3": {}}}
    assert Circuit.from_dict(ok).shape == load_model("toy-ioi").shape


def test_shipped_circuits_of_zoo_models_fit_them():
    for name in FOLDERS:
        if (ZOO_DIR.parent / "_circuits" / name).is_dir():
            c = load_circuit(f"{name}/ioi")
            assert c.shape is not None and c.check_model(load_model(name)) == c.shape

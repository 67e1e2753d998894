"""circuitsteer works wherever pip puts it: build the wheel, install it into a fresh virtual
environment outside the checkout, and load the zoo, the GPT-2 tokenizer and a shipped circuit
there (nothing may read the repository or ../shared at run time)."""

from __future__ import annotations

import os
import site
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

CHECK = r"""
import sys, circuitsteer as cs
from pathlib import Path
here = Path(cs.__file__).resolve()
assert "site-packages" in here.parts and not str(here).startswith(sys.argv[1]), here
m = cs.load_model("toy-ioi")
assert m.to_tokens(["When Mary and John"]).shape[0] == 1
g = cs.load_model("gpt2-small-shape")
assert g.tokenizer.encode(" Mary") == [5335], g.tokenizer.encode(" Mary")  # GPT-2's BPE id
c = cs.load_circuit("gpt2-small/ioi")
assert len(c.nodes) > 20 and "gpt2-small/ioi" in cs.shipped_circuits()
print("ok", here.parent)
"""


@pytest.mark.slow
def test_wheel_installs_and_runs_outside_the_checkout(tmp_path):
    dist = tmp_path / "dist"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "--no-build-isolation",
         "-q", "-w", str(dist)],
        capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = dist.glob("circuitsteer-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for needed in ("circuitsteer/_circuits/gpt2-small/ioi.json",
                   "circuitsteer/assets/gpt2-tokenizer/encoder.json",
                   "circuitsteer/zoo/toy-ioi/model.safetensors"):  # fmt: skip
        assert needed in names, f"{needed} missing from the wheel"

    env_dir = tmp_path / "env"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    py = env_dir / "bin" / "python"
    fresh = subprocess.run(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    inst = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target",
         fresh, str(wheel)],
        capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert inst.returncode == 0, inst.stderr[-3000:]
    # dependencies (torch, transformers, ...) from this environment, appended *after* the fresh
    # site-packages: a plain path entry, so this environment's editable-install hook (a .pth
    # file there) is not run and cannot shadow the installed wheel
    Path(fresh, "deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "CIRCUITSTEER_GPT2_TOKENIZER")
    }
    run = subprocess.run(
        [str(py), "-c", CHECK, str(REPO)], capture_output=True, text=True, cwd=tmp_path, env=env
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.startswith("ok")

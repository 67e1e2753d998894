"""The run directory ``runs/<id>/``: ``spec.yaml`` (the resolved spec), ``meta.json``,
``shards/<NNNNN>.parquet`` and, at the end, ``results.parquet``. Every file is written to a
temporary name in the same folder and moved into place with ``os.replace`` (atomic), so a run
killed at any moment leaves only whole files; leftover temporaries are removed on resume.

Example:
    >>> import tempfile, pandas as pd
    >>> d = Path(tempfile.mkdtemp())
    >>> write_atomic(d / "x.txt", b"hello")
    >>> (d / "x.txt").read_bytes(), sorted(p.name for p in d.iterdir())
    (b'hello', ['x.txt'])
"""

from __future__ import annotations

import datetime as _dt
import io
import json
import os
import platform
import re
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from circuitsteer.errors import RunError

DEPENDENCIES = ("torch", "transformers", "transformer-lens", "numpy", "pandas", "pyarrow",
                "pydantic", "pyyaml", "networkx", "ray")  # fmt: skip


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and ``os.replace``."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def versions() -> dict[str, str | None]:
    """The package's and its dependencies' versions (None: not installed), and Python's."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in ("circuitsteer", *DEPENDENCIES):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def _jsonable(x: Any) -> Any:
    if isinstance(x, (list, tuple, dict)):
        return json.dumps(x, sort_keys=True, default=str)
    return x


def tidy_for_parquet(df: pd.DataFrame) -> pd.DataFrame:
    """Object columns made storable: lists/dicts/tuples as JSON text, mixed types as text."""
    df = df.copy()
    for col in df.columns:
        if df[col].dtype != object:
            continue
        vals = df[col].map(_jsonable)
        types = {type(v) for v in vals if v is not None and not (isinstance(v, float) and v != v)}
        if len(types) > 1:
            vals = vals.map(lambda v: None if v is None or (isinstance(v, float) and v != v) else str(v))  # fmt: skip
        df[col] = vals
    return df


def parquet_bytes(df: pd.DataFrame) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(tidy_for_parquet(df), preserve_index=False)
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


class RunDir:
    """One run's folder (see the module docstring)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    @property
    def shards(self) -> Path:
        return self.path / "shards"

    def shard_path(self, index: int) -> Path:
        return self.shards / f"{index:05d}.parquet"

    @classmethod
    def create(cls, runs_dir: str | Path, spec_name: str, digest: str) -> RunDir:
        root = Path(runs_dir)
        stamp = _dt.datetime.now(_dt.UTC).strftime("%Y%m%d-%H%M%S")
        base = f"{spec_name}-{stamp}-{digest[:8]}"
        for k in range(1000):
            path = root / (base if k == 0 else f"{base}-{k + 1}")
            try:
                (path / "shards").mkdir(parents=True, exist_ok=False)
                return cls(path)
            except FileExistsError:
                continue
        raise RunError(f"cannot create a run folder under {root}", fix="remove old runs")

    @classmethod
    def find(cls, runs_dir: str | Path, run_id: str) -> RunDir:
        root = Path(runs_dir)
        path = Path(run_id) if Path(run_id).is_dir() and (Path(run_id) / "spec.yaml").exists() else root / run_id  # fmt: skip
        if not (path / "spec.yaml").is_file() or not (path / "meta.json").is_file():
            known = sorted(p.name for p in root.glob("*") if (p / "spec.yaml").is_file()) if root.is_dir() else []  # fmt: skip
            import difflib

            near = difflib.get_close_matches(run_id, known, n=1, cutoff=0.5)
            fix = (f"did you mean {near[0]!r}?" if near else
                   f"runs under {root}: {', '.join(known[-5:]) or 'none'}")  # fmt: skip
            raise RunError(f"no run {run_id!r} under {root}", fix=fix)
        (path / "shards").mkdir(exist_ok=True)
        return cls(path)

    def clean_temporaries(self) -> list[Path]:
        stale = [p for p in [*self.path.glob(".*.tmp-*"), *self.shards.glob(".*.tmp-*")]]
        for p in stale:
            p.unlink(missing_ok=True)
        return stale

    def write_spec(self, resolved: dict[str, Any]) -> None:
        text = "# resolved spec: every default filled in (circuitsteer run)\n"
        text += yaml.safe_dump(resolved, sort_keys=False, default_flow_style=None)
        write_atomic(self.path / "spec.yaml", text.encode())

    def read_spec(self) -> dict[str, Any]:
        return yaml.safe_load((self.path / "spec.yaml").read_text())

    def read_meta(self) -> dict[str, Any]:
        return json.loads((self.path / "meta.json").read_text())

    def write_meta(self, meta: dict[str, Any]) -> None:
        write_atomic(self.path / "meta.json", json.dumps(meta, indent=1, default=str).encode())

    def done(self) -> set[int]:
        out = set()
        for p in self.shards.glob("*.parquet"):
            if re.fullmatch(r"\d{5}", p.stem):
                out.add(int(p.stem))
        return out

    def write_shard(self, index: int, df: pd.DataFrame) -> None:
        write_atomic(self.shard_path(index), parquet_bytes(df))

    def write_results(self, n_shards: int) -> pd.DataFrame:
        frames = [pd.read_parquet(self.shard_path(i)) for i in range(n_shards)]
        frames = [f for f in frames if len(f.columns)]
        df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
        # an integer column absent from some shards stays integer (nullable), not float
        ints = {c for f in frames for c in f.columns if pd.api.types.is_integer_dtype(f[c].dtype)}
        for c in sorted(ints):
            if not pd.api.types.is_integer_dtype(df[c].dtype):
                df[c] = df[c].astype("Int64")
        write_atomic(self.path / "results.parquet", parquet_bytes(df))
        return df


def now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def command_line() -> str:
    return " ".join(sys.argv)

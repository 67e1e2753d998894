"""Reading a spec: YAML with line numbers, pydantic validation, the checks pydantic cannot do,
and resolution into frozen :class:`~circuitsteer.spec._types.Spec` dataclasses. Every problem
becomes one :class:`~circuitsteer.errors.SpecError` naming the file, each offending key, its
line, and the nearest valid key or value (difflib).

Example:
    >>> text = "model: toy-ioi\\nanalyses:\\n  - {name: h, kind: head_ablation, modez: [zero]}\\n"
    >>> try:
    ...     load_spec_text(text, source="demo.yaml")
    ... except Exception as e:
    ...     print(e.message.splitlines()[1].strip()); print(e.fix)
    demo.yaml:3: analyses[0].modez: unknown key 'modez' (did you mean 'modes'?)
    did you mean 'modes'?
"""

from __future__ import annotations

import difflib
import inspect
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from circuitsteer.errors import SpecError
from circuitsteer.spec import _schema as S
from circuitsteer.spec._types import AnalysisSpec, Spec, TaskSpec, VectorSpec
from circuitsteer.spec._yaml import load_yaml_text

SITE_WORDS = ("all_heads", "all_mlps", "all_nodes", "circuit")


class _Problems:
    """Collects (path, message, suggestion) and raises one SpecError with file:line each."""

    def __init__(self, source: str, lines: dict[tuple, int]) -> None:
        self.source, self.lines = source, lines
        self.items: list[dict[str, Any]] = []

    def add(self, path: tuple, message: str, fix: str | None = None) -> None:
        line = None
        for k in range(len(path), -1, -1):
            if path[:k] in self.lines:
                line = self.lines[path[:k]]
                break
        if any(i["path"] == path and i["message"] == message for i in self.items):
            return
        self.items.append({"path": path, "line": line, "message": message, "fix": fix})

    def raise_if_any(self) -> None:
        if not self.items:
            return
        head = (
            f"invalid spec {self.source} ({len(self.items)} problem{'s' * (len(self.items) > 1)})"
        )
        body = [f"  {self.source}:{i['line'] or '?'}: {_dotted(i['path'])}: {i['message']}"
                + (f" ({i['fix']})" if i["fix"] else "") for i in self.items]  # fmt: skip
        fix = self.items[0]["fix"] if len(self.items) == 1 and self.items[0]["fix"] else None
        err = SpecError("\n".join([head, *body]), fix=fix or "see docs/specs.md")
        err.problems = self.items  # type: ignore[attr-defined]
        raise err


def _dotted(path: tuple) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "(top level)"


def _near(word: Any, choices: list[str]) -> str | None:
    m = difflib.get_close_matches(str(word), choices, n=1, cutoff=0.5)
    return m[0] if m else None


def _suggest(word: Any, choices: list[str], what: str = "key") -> str:
    near = _near(word, choices)
    if near is not None:
        return f"did you mean {near!r}?"
    return f"valid {what}s: {', '.join(choices)}"


# ---- pydantic errors -> paths in the file ------------------------------------------------


def _model_at(data: Any, path: tuple) -> type[BaseModel] | None:
    """The pydantic model that validates the mapping at ``path`` of ``data``."""
    model: type[BaseModel] | None = S.SpecModel
    node = data
    for i, p in enumerate(path):
        node = node[p] if isinstance(node, dict | list) else None
        parent = path[:i]
        if parent == () and p == "task":
            model = S.TaskModel
        elif parent == () and p == "report":
            model = S.ReportModel
        elif parent == ("vectors",):
            model = S.VectorModel
        elif parent == () and p in ("vectors", "analyses"):
            model = None
        elif len(path[:i]) == 1 and path[0] == "analyses" and isinstance(p, int):
            model = S.KIND_MODELS.get(str(node.get("kind"))) if isinstance(node, dict) else None
        elif isinstance(p, int) and len(path[:i]) >= 3 and path[i - 1] == "operations":
            model = S.OP_MODELS.get(str(node.get("op"))) if isinstance(node, dict) else None
        elif isinstance(p, int) and path[i - 1] == "interventions":
            model = S.InterventionModel
        elif p == "curve":
            model = S.CurveModel
        elif not isinstance(p, int):
            model = None
    return model


def _data_path(loc: tuple, data: Any) -> tuple[tuple, Any]:
    """``loc`` with pydantic's union tags and member names removed, and the part that exists."""
    out: list[Any] = []
    node = data
    for p in loc:
        if isinstance(node, dict) and p in node:
            out.append(p)
            node = node[p]
        elif isinstance(node, list) and isinstance(p, int) and 0 <= p < len(node):
            out.append(p)
            node = node[p]
        elif isinstance(node, dict) and p in (node.get("kind"), node.get("op")):
            continue  # a discriminated union's tag
        else:
            return tuple(out), p
    return tuple(out), None


def _pydantic_problems(e: ValidationError, data: Any, probs: _Problems) -> None:
    for err in e.errors():
        loc = tuple(err["loc"])
        path, rest = _data_path(loc, data)
        kind = err["type"]
        ctx = err.get("ctx") or {}
        if kind == "extra_forbidden":
            model = _model_at(data, path[:-1])
            keys = list(model.model_fields) if model else []
            probs.add(path, f"unknown key {path[-1]!r}", _suggest(path[-1], keys) if keys else None)
        elif kind == "missing":
            probs.add(path, f"missing required key {rest!r}",
                      f"add '{rest}:' here (docs/specs.md)")  # fmt: skip
        elif kind == "union_tag_invalid":
            tags = [t.strip(" '") for t in str(ctx.get("expected_tags", "")).split(",")]
            field = str(ctx.get("discriminator", "")).strip("'")
            probs.add((*path, field), f"unknown {field} {ctx.get('tag')!r}",
                      _suggest(ctx.get("tag"), tags, field))  # fmt: skip
        elif kind == "union_tag_not_found":
            field = str(ctx.get("discriminator", "")).strip("'")
            choices = S.KIND_MODELS if field == "kind" else S.OP_MODELS
            probs.add(path, f"missing key {field!r}", f"add '{field}:' with one of {', '.join(choices)}")  # fmt: skip
        elif kind == "literal_error":
            expected = [t.strip(" '") for t in str(ctx.get("expected", "")).replace(" or ", ",").split(",")]  # fmt: skip
            expected = [x for x in expected if x]
            probs.add(path, f"invalid value {err.get('input')!r}", _suggest(err.get("input"), expected, "value"))  # fmt: skip
        else:
            msg = err["msg"].removeprefix("Value error, ")
            probs.add(path, msg, None)


# ---- checks after pydantic ---------------------------------------------------------------


def _check_node(name: str, path: tuple, shape: Any, probs: _Problems) -> None:
    from circuitsteer import nodes

    try:
        node = nodes.parse_node(name)
        if shape is not None:
            nodes.validate_node(node, shape)
    except Exception as e:  # noqa: BLE001 - the package's typed errors, reported with the path
        probs.add(path, f"bad node {name!r}: {getattr(e, 'message', e)}", getattr(e, "fix", None))


def _exists(path: str, base: Path | None) -> bool:
    return Path(path).exists() or (base is not None and (base / path).exists())


def _check(m: S.SpecModel, probs: _Problems, base: Path | None) -> None:
    import circuitsteer as cs
    from circuitsteer.models import known_shape

    shape = known_shape(m.model)
    zoo = cs.zoo_names()
    if shape is None and not _exists(m.model, base) and "/" not in m.model:
        near = _near(m.model, zoo)
        if near and m.model not in ("gpt2",):
            probs.add(("model",), f"unknown model {m.model!r}", f"did you mean {near!r}?")
    fn = getattr(cs.tasks, m.task.name)
    allowed = [p for p in inspect.signature(fn).parameters if p not in ("model_or_tokenizer", "n", "seed")]  # fmt: skip
    for k in m.task.options:
        if k not in allowed:
            probs.add(("task", "options", k), f"unknown option {k!r} of cs.tasks.{m.task.name}",
                      _suggest(k, allowed, "option"))  # fmt: skip
    shipped = cs.shipped_circuits()

    def check_circuit(name: str, path: tuple) -> None:
        if name not in shipped and not _exists(name, base):
            probs.add(path, f"unknown circuit {name!r} (not shipped, no such file)",
                      _suggest(name, shipped, "circuit"))  # fmt: skip

    if m.circuit:
        check_circuit(m.circuit, ("circuit",))
    names = list(m.vectors)

    def check_vector(v: str, path: tuple) -> None:
        if v not in m.vectors:
            probs.add(path, f"unknown vector {v!r}",
                      _suggest(v, names, "vector") if names else "define it under 'vectors:'")  # fmt: skip

    for vname, vec in m.vectors.items():
        if vec.site:
            _check_node(vec.site, ("vectors", vname, "site"), shape, probs)
        if vec.of:
            check_vector(vec.of, ("vectors", vname, "of"))
        if vec.file and not _exists(vec.file, base):
            probs.add(("vectors", vname, "file"), f"no such file {vec.file!r}", "give a path relative to the working directory or the spec")  # fmt: skip
    seen: set[str] = set()
    for i, a in enumerate(m.analyses):
        p = ("analyses", i)
        if a.name in seen:
            probs.add((*p, "name"), f"duplicate analysis name {a.name!r}", "give each analysis a unique name")  # fmt: skip
        seen.add(a.name)
        if isinstance(a, S.GridAnalysis):
            sites = [a.sites] if isinstance(a.sites, str) else a.sites
            for j, s in enumerate(sites):
                if s not in SITE_WORDS:
                    _check_node(s, (*p, "sites", j) if isinstance(a.sites, list) else (*p, "sites"), shape, probs)  # fmt: skip
                if s == "circuit" and not m.circuit:
                    probs.add((*p, "sites"), "sites 'circuit' but the spec has no circuit", "add 'circuit:' at the top level")  # fmt: skip
            for j, op in enumerate(a.operations):
                for k, v in enumerate(getattr(op, "vectors", [])):
                    check_vector(v, (*p, "operations", j, "vectors", k))
        elif isinstance(a, S.CompareAnalysis):
            for j, n in enumerate(a.nodes or []):
                _check_node(n, (*p, "nodes", j), shape, probs)
            for j, v in enumerate(a.vectors):
                check_vector(v, (*p, "vectors", j))
        elif isinstance(a, S.DownstreamAnalysis):
            if a.circuit and not m.circuit:
                probs.add((*p, "circuit"), "circuit: true but the spec has no circuit", "add 'circuit:' at the top level or set circuit: false")  # fmt: skip
            for j, iv in enumerate(a.interventions):
                if iv.node:
                    _check_node(iv.node, (*p, "interventions", j, "node"), shape, probs)
                if iv.vector:
                    check_vector(iv.vector, (*p, "interventions", j, "vector"))
        elif isinstance(a, S.SweepAnalysis):
            for j, v in enumerate(a.vectors):
                check_vector(v, (*p, "vectors", j))
        elif isinstance(a, S.FaithfulnessAnalysis):
            if not m.circuit:
                probs.add((*p, "kind"), "faithfulness needs the spec's circuit", "add 'circuit:' at the top level")  # fmt: skip
            if a.curve is not None:
                check_circuit(a.curve.scores, (*p, "curve", "scores"))
        elif isinstance(a, S.PcaAnalysis):
            for j, s in enumerate(a.sites):
                _check_node(s, (*p, "sites", j), shape, probs)
        elif isinstance(a, S.HeadAblationAnalysis) and shape is not None:
            for j, layer in enumerate(a.layers or []):
                if not 0 <= layer < shape.n_layers:
                    probs.add((*p, "layers", j), f"layer {layer} outside the model", f"use 0..{shape.n_layers - 1}")  # fmt: skip


# ---- resolution --------------------------------------------------------------------------


def _resolve(m: S.SpecModel, name: str) -> Spec:
    analyses = []
    for a in m.analyses:
        params = a.model_dump(mode="json", exclude={"name", "kind"})
        if params.get("metric") is None:
            if isinstance(a, S.DiscoveryAnalysis):
                params["metric"] = "kl" if a.method == "acdc" else "logit_diff"
            else:
                params["metric"] = list(m.metrics)
        analyses.append(AnalysisSpec(name=a.name, kind=a.kind, params=params))
    vectors = {k: VectorSpec(name=k, **v.model_dump(mode="json")) for k, v in m.vectors.items()}
    return Spec(
        name=name,
        description=m.description,
        model=m.model,
        task=TaskSpec(**m.task.model_dump(mode="json")),
        circuit=m.circuit,
        seed=m.seed,
        vectors=vectors,
        metrics=tuple(m.metrics),
        analyses=tuple(analyses),
        report=m.report.model_dump(mode="json"),
    )


def load_spec_text(text: str, source: str = "<spec>", name: str | None = None,
                   base: Path | None = None) -> Spec:  # fmt: skip
    """Validate and resolve a spec given as YAML text (``source`` names it in errors; ``name``
    is the default spec name; ``base`` is a folder where relative paths may also be found)."""
    try:
        data, lines = load_yaml_text(text, source)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        problem = getattr(e, "problem", None) or str(e)
        raise SpecError(f"{where}: not valid YAML: {problem}", fix="fix the YAML syntax at that line") from None  # fmt: skip
    probs = _Problems(source, lines)
    if not isinstance(data, dict):
        raise SpecError(f"{source}: a spec is a mapping with 'model:' and 'analyses:'", fix="see docs/specs.md for an example")  # fmt: skip
    try:
        model = S.SpecModel.model_validate(data)
    except ValidationError as e:
        _pydantic_problems(e, data, probs)
        probs.raise_if_any()
        raise AssertionError("unreachable") from e
    _check(model, probs, base)
    probs.raise_if_any()
    spec_name = model.name or name or "spec"
    return _resolve(model, spec_name)


def load_spec(path: str | Path) -> Spec:
    """Read, validate and resolve the spec file at ``path``; errors are :class:`SpecError`
    naming each offending key and line. The spec's name defaults to the file's stem."""
    p = Path(path)
    if not p.is_file():
        raise SpecError(f"no spec file {str(p)!r}", fix="give the path of a YAML spec, e.g. analyses/ablation_vs_addition.yaml")  # fmt: skip
    return load_spec_text(
        p.read_text(), source=str(p), name=p.stem.replace(" ", "_"), base=p.parent
    )


def spec_from_dict(data: dict[str, Any], source: str = "<dict>") -> Spec:
    """Validate and resolve a spec given as a plain mapping (e.g. a resolved ``spec.yaml``)."""
    return load_spec_text(yaml.safe_dump(data, sort_keys=False), source=source)

"""Rendering a run directory as ``report.html`` (self-contained) and ``report.md`` (Jinja2).

:func:`render_report` reads the run (:func:`~circuitsteer.report.load_run`), builds one section
per analysis entry (:mod:`circuitsteer.report.sections`), saves every figure as PNG and SVG and
every table as CSV, and renders both templates from the same data. Everything is written to a
temporary folder beside the destination and renamed into place at the end, so a failure leaves
no half report (and an older report, if any, untouched).

Escaping: the HTML template is autoescaped (Jinja2), and its Content-Security-Policy allows no
script, no network and only ``data:`` images. The Markdown environment escapes every value it
prints (:func:`md_escape`: Markdown-special characters backslashed, ``<``, ``>``, ``&`` as
entities) unless a filter marks it as already-formatted Markdown (``code``, ``fence``).

Example:
    >>> from circuitsteer.report import render_report
    >>> out = render_report("runs/ioi-demo")                      # doctest: +SKIP
    >>> sorted(p.name for p in out.iterdir())                     # doctest: +SKIP
    ['figures', 'report.html', 'report.md', 'tables']
    >>> print(md_escape("<script>alert(1)</script> | *x*"))
    &lt;script&gt;alert(1)&lt;/script&gt; \\| \\*x\\*
"""

from __future__ import annotations

import base64
import datetime as _dt
import json
import os
import re
import shutil
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from circuitsteer.errors import ReportError
from circuitsteer.report._run import Run, load_run
from circuitsteer.report.sections import Context, Section, build_sections
from circuitsteer.report.sections._base import Table, cell

MARKER = ".circuitsteer-report"
CI_NOTE = (
    "Intervals are 95% intervals. Where a row of results carries its own interval "
    "(`effect_lo`/`effect_hi`, `value_lo`/`value_hi`) it is the analysis's percentile bootstrap "
    "over the task's examples (1,000 resamples by default; paired: each resample draws the same "
    "examples for the intervened and the clean run, or for the circuit and the model), shown as "
    "'bootstrap'. Where several rows measure the same thing (seeds, shards) the table shows their "
    "mean and a Student-t interval over them, and a row with only a standard deviation gets "
    "mean ± t(0.975, n-1)·sd/√n; both are shown as 't'."
)


class MdRaw(str):
    """A string that is already Markdown (not escaped again by the Markdown environment)."""


_MD_SPECIAL = re.compile(r"([\\`*_\[\]|~])")
_MD_LINE_START = re.compile(r"^(\s*)([-+#=]\s|\d+[.)]\s)")


def md_escape(text: Any) -> str:
    """User text for Markdown: one line, Markdown-special characters backslash-escaped, HTML
    special characters as entities (Markdown passes raw HTML through).

    >>> md_escape("a_b | c\\nd"), md_escape("- item"), md_escape("-0.5")
    ('a\\\\_b \\\\| c d', '\\\\- item', '-0.5')
    """
    s = " ".join(str(text).splitlines())
    s = s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    s = _MD_SPECIAL.sub(r"\\\1", s)
    return _MD_LINE_START.sub(lambda m: m[1] + "\\" + m[2], s)


def md_code(text: Any) -> MdRaw:
    """An inline code span that survives any content (backticks, pipes in tables).

    >>> print(md_code("a`b|c"))
    `` a`b\\|c ``
    """
    s = " ".join(str(text).splitlines()).replace("|", "\\|")
    run = max((len(m) for m in re.findall(r"`+", s)), default=0)
    ticks = "`" * (run + 1)
    pad = " " if run or s.startswith("`") or s.endswith("`") else ""
    return MdRaw(f"{ticks}{pad}{s}{pad}{ticks}")


def md_fence(text: Any, lang: str = "") -> MdRaw:
    """A fenced code block longer than any backtick run inside ``text``."""
    s = str(text).rstrip("\n")
    run = max((len(m) for m in re.findall(r"`{3,}", s)), default=2)
    ticks = "`" * (run + 1)
    return MdRaw(f"{ticks}{lang}\n{s}\n{ticks}")


def md_inline(text: Any) -> MdRaw:
    """Text with `code` spans (captions, notes): the code parts as code spans, the rest escaped.

    >>> print(md_inline("the `effect_lo` of a|b"))
    the `effect_lo` of a\\|b
    """
    parts = str(text).split("`")
    if len(parts) % 2 == 0:  # an unpaired backtick: no code spans
        return MdRaw(md_escape(text))
    return MdRaw("".join(md_code(p) if i % 2 else md_escape(p) for i, p in enumerate(parts)))


def html_inline(text: Any) -> Any:
    """Text with `code` spans for HTML: escaped, code parts in ``<code>``.

    >>> print(html_inline("the `a<b>` & c"))
    the <code>a&lt;b&gt;</code> &amp; c
    """
    from markupsafe import Markup, escape

    parts = str(text).split("`")
    if len(parts) % 2 == 0:
        return escape(text)
    return Markup("".join(f"<code>{escape(p)}</code>" if i % 2 else str(escape(p)) for i, p in enumerate(parts)))  # fmt: skip


def _md_finalize(value: Any) -> Any:
    if isinstance(value, MdRaw) or value is None:
        return value if value is not None else ""
    return md_escape(value)


@dataclass
class Report:
    """Everything both templates show."""

    title: str
    run: Run
    summary: list[str]
    description: str
    overview: list[tuple[str, str]]
    spec_yaml: str
    model_facts: list[tuple[str, str]]
    circuit_facts: list[tuple[str, str]]
    circuit_figure: Any
    sections: list[Section]
    provenance: list[tuple[str, str]]
    warnings: list[str] = field(default_factory=list)
    generated: str = ""
    ci_note: str = CI_NOTE


def render_report(
    run_dir: str | os.PathLike[str], out: str | os.PathLike[str] | None = None
) -> Path:
    """Render the run at ``run_dir`` into ``out`` (default ``<run_dir>/report/``): report.html,
    report.md, figures/*.png + *.svg, tables/*.csv. Returns ``out``.

    Raises :class:`~circuitsteer.errors.ReportError` when ``run_dir`` is not a run, or when
    ``out`` exists and is not a report folder (it is never overwritten then).
    """
    import matplotlib

    run = load_run(Path(run_dir))
    dest = Path(out) if out is not None else _default_out(run)
    if dest.exists() and not _replaceable(dest):
        raise ReportError(
            f"{dest} exists and is not a circuitsteer report folder",
            fix="pass --out with a new or empty folder, or a folder an earlier report was written to",
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    try:
        with matplotlib.rc_context({"text.parse_math": False, "svg.hashsalt": "circuitsteer",
                                    "figure.max_open_warning": 0}):  # fmt: skip
            report = build(run)
            _write(report, tmp)
        os.chmod(tmp, 0o755)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if dest.exists():
        old = dest.with_name(f".{dest.name}.old-{uuid.uuid4().hex[:8]}")
        dest.rename(old)
    tmp.rename(dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return dest


def _default_out(run: Run) -> Path:
    rep = run.spec.get("report") or {}
    o = rep.get("out") if isinstance(rep, dict) else None
    if isinstance(o, str) and o:
        p = Path(o)
        return p if p.is_absolute() else run.path / p
    return run.path / "report"


def _replaceable(p: Path) -> bool:
    if not p.is_dir():
        return False
    names = {c.name for c in p.iterdir()}
    return not names or MARKER in names or "report.html" in names or "report.md" in names


def build(run: Run) -> Report:
    """The report's content (sections, summary, facts) for a run; figures not yet saved."""
    ctx = _context(run)
    sections = build_sections(ctx)
    task = _task(run.spec)
    circuit_name = run.spec.get("circuit")
    model = str(run.spec.get("model") or "?")
    overview = [("run", run.name), ("model", model), ("task", task or "?"),
                ("circuit", str(circuit_name) if circuit_name else "none"),
                ("analyses", str(len(sections)))]  # fmt: skip
    count = f"{len(sections)} analys{'is' if len(sections) == 1 else 'es'}"
    summary = [f"{count} of {model} on {task or 'its task'}"
               + (f" with the circuit {circuit_name}" if circuit_name else "") + "."]  # fmt: skip
    for s in sections:
        if s.headlines:
            summary.append(f"{s.title}: {s.headlines[0].text}")
    warnings = list(run.warnings)
    if circuit_name and ctx.circuit is None:
        warnings.append(f"the circuit {circuit_name!r} could not be loaded; it is not drawn")
    circuit_figure = None
    circuit_facts: list[tuple[str, str]] = []
    if ctx.circuit is not None:
        from circuitsteer.report import figures as F
        from circuitsteer.report.sections._base import Figure

        c = ctx.circuit
        circuit_facts = [("name", str(c.name)), ("model", str(c.model)), ("source", str(c.source)),
                         ("nodes", str(len(c.nodes))), ("edges", str(c.graph.number_of_edges()))]  # fmt: skip
        circuit_facts += [(f"class: {k}", ", ".join(v)) for k, v in sorted(c.classes.items())]
        circuit_figure = Figure("circuit", f"The circuit {c.name}", F.circuit_graph(c, {}, "", ""),
                                "Columns by depth; nodes coloured by class, edges by channel.")  # fmt: skip
    return Report(
        title=run.title, run=run, summary=summary, overview=overview,
        description=str(run.spec.get("description") or ""),
        spec_yaml=_yaml(run.spec), model_facts=_model_facts(model, ctx.shape),
        circuit_facts=circuit_facts, circuit_figure=circuit_figure, sections=sections,
        provenance=_flatten(run.meta), warnings=warnings,
        generated=_dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    )  # fmt: skip


def _context(run: Run) -> Context:
    import circuitsteer as cs
    from circuitsteer.models import known_shape

    circuit = None
    name = run.spec.get("circuit")
    if isinstance(name, str) and name:
        try:
            p = Path(name)
            circuit = cs.load_circuit(str(run.path / p) if not p.is_absolute() and (run.path / p).is_file() else name)  # fmt: skip
        except Exception:  # noqa: BLE001 - reported as a warning; the sections do without it
            circuit = None
    shape = known_shape(run.spec.get("model"))
    return Context(run=run, circuit=circuit, shape=shape)


def _task(spec: dict[str, Any]) -> str:
    t = spec.get("task")
    if isinstance(t, dict):
        name = t.get("name") or t.get("kind") or "task"
        extra = ", ".join(f"{k} = {t[k]}" for k in ("n", "seed") if k in t)
        return f"{name} ({extra})" if extra else str(name)
    return "" if t is None else str(t)


def _model_facts(model: str, shape: Any) -> list[tuple[str, str]]:
    facts = [("model", model)]
    if shape is not None:
        for k in ("n_layers", "n_heads", "d_model", "d_head", "d_mlp", "d_vocab", "n_ctx"):
            v = getattr(shape, k, None)
            if v is not None:
                facts.append((k, str(v)))
    return facts


def _yaml(spec: dict[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(spec, sort_keys=False, allow_unicode=True, default_flow_style=False)


def _flatten(d: Any, prefix: str = "") -> list[tuple[str, str]]:
    """Nested keys as ``a.b.c``; a long mapping of records (the runner's ``shards``) becomes one
    line: how many, and their summed ``seconds`` / ``rows``.

    >>> _flatten({"seed": 0, "versions": {"torch": "2.13"}, "shards": {str(i): {"rows": 2, "seconds": 0.5} for i in range(9)}})
    [('seed', '0'), ('versions.torch', '2.13'), ('shards', '9 entries; rows 18; seconds 4.5')]
    """
    out: list[tuple[str, str]] = []
    if isinstance(d, dict):
        for k, v in d.items():
            if isinstance(v, dict) and len(v) > 8 and all(isinstance(x, dict) for x in v.values()):
                sums = [f"{f} {sum(x[f] for x in v.values()):g}" for f in ("rows", "seconds")
                        if all(isinstance(x.get(f), (int, float)) for x in v.values())]  # fmt: skip
                out.append((f"{prefix}{k}", "; ".join([f"{len(v)} entries", *sums])))
                continue
            out += _flatten(v, f"{prefix}{k}.") if isinstance(v, dict) and v else [(f"{prefix}{k}", _short(v))]  # fmt: skip
    return out


def _short(v: Any) -> str:
    s = v if isinstance(v, str) else json.dumps(v, default=str)
    return s if len(s) <= 300 else s[:297] + "..."


def _figures(report: Report) -> list[Any]:
    figs = [report.circuit_figure] if report.circuit_figure is not None else []
    return figs + [f for s in report.sections for f in s.figures]


def _tables(report: Report) -> list[Table]:
    return [t for s in report.sections for t in s.tables]


def _write(report: Report, folder: Path) -> None:
    from circuitsteer.report import figures as F

    (folder / "figures").mkdir()
    (folder / "tables").mkdir()
    for f in _figures(report):
        f.png = F.save(f.figure, folder / "figures", f.name)
        f.figure.clear()
    for t in _tables(report):
        t.data.to_csv(folder / "tables" / f"{t.name}.csv", index=False)
    html_env, md_env = _environments()
    ctx = {"r": report, "figures": _figures(report)}
    (folder / "report.html").write_text(html_env.get_template("report.html.j2").render(**ctx), encoding="utf-8")  # fmt: skip
    (folder / "report.md").write_text(md_env.get_template("report.md.j2").render(**ctx), encoding="utf-8")  # fmt: skip
    (folder / MARKER).write_text("written by circuitsteer report; safe to replace\n", encoding="utf-8")  # fmt: skip


def _is_number(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


def _environments() -> tuple[Any, Any]:
    from jinja2 import Environment, PackageLoader, StrictUndefined

    loader = PackageLoader("circuitsteer.report", "templates")
    html = Environment(loader=loader, autoescape=True, undefined=StrictUndefined,
                       trim_blocks=True, lstrip_blocks=True)  # fmt: skip
    md = Environment(loader=loader, autoescape=False, undefined=StrictUndefined,
                     finalize=_md_finalize, trim_blocks=True, lstrip_blocks=True)  # fmt: skip
    for env in (html, md):
        env.filters["b64"] = lambda b: base64.b64encode(b).decode("ascii")
        env.globals["cell"] = cell
        env.tests["number"] = _is_number
    html.filters["inline"] = html_inline
    md.filters["inline"] = md_inline
    md.filters["code"] = md_code
    md.filters["fence"] = md_fence
    md.filters["raw"] = MdRaw
    return html, md


__all__ = ["MdRaw", "Report", "build", "html_inline", "md_code", "md_escape", "md_fence", "md_inline",
           "render_report"]  # fmt: skip

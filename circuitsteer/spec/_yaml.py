"""YAML with line numbers: a spec file read into plain Python values plus, for every key path
(``("analyses", 0, "coefs")``), the line where it appears, so errors can point at it.

Example:
    >>> data, lines = load_yaml_text("model: toy-ioi\\nanalyses:\\n  - name: a\\n    kind: grid\\n")
    >>> data["analyses"][0]["kind"], lines[("analyses", 0, "kind")]
    ('grid', 4)
"""

from __future__ import annotations

from typing import Any

import yaml

Path_ = tuple[Any, ...]


def load_yaml_text(text: str, source: str = "<spec>") -> tuple[Any, dict[Path_, int]]:
    """Parse ``text`` (safe YAML: no tags, no Python objects) into values and a map from key
    path to 1-based line. Raises ``yaml.YAMLError`` on a syntax error."""
    node = yaml.compose(text, Loader=yaml.SafeLoader)
    lines: dict[Path_, int] = {}
    if node is None:
        return None, lines
    return _convert(node, (), lines), lines


def _convert(node: yaml.Node, path: Path_, lines: dict[Path_, int]) -> Any:
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        for k_node, v_node in node.value:
            key = _LOADER.construct_object(k_node, deep=True)
            if key in out:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", k_node.start_mark
                )
            lines[(*path, key)] = k_node.start_mark.line + 1
            out[key] = _convert(v_node, (*path, key), lines)
            lines[(*path, key)] = k_node.start_mark.line + 1
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_convert(v, (*path, i), lines) for i, v in enumerate(node.value)]
    return _LOADER.construct_object(node, deep=True)


_LOADER = yaml.SafeLoader("")

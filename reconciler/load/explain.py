"""What a kind or one of its fields means, from its JSON Schema (`bpfsync explain`, as
`kubectl explain`): description, type, default, allowed values and bounds, and the fields
below it. Pure: the schema is the one validation uses (common.json's definitions inlined),
so the explanation cannot drift from what is accepted."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from reconciler.core.errors import BpfsyncError

BOUNDS = ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum", "minLength",
          "maxLength", "minItems", "maxItems", "pattern")


@dataclass(frozen=True)
class Field:
    """A node of a schema at a path (["spec", "healthCheck", "intervalSeconds"])."""

    kind: str
    path: tuple[str, ...]
    node: dict[str, Any]
    required: bool


def _alternatives(node: dict[str, Any]) -> list[dict[str, Any]]:
    return [a for key in ("oneOf", "anyOf") for a in node.get(key, []) if isinstance(a, dict)]


def _children(node: dict[str, Any]) -> dict[str, Any]:
    """The fields below node: its properties, its items' (a list of objects), or those of
    its object alternatives."""
    if "properties" in node:
        return dict(node["properties"])
    items = node.get("items")
    if isinstance(items, dict):
        return _children(items)
    out: dict[str, Any] = {}
    for alt in _alternatives(node):
        out.update(_children(alt))
    return out


def _required(node: dict[str, Any]) -> set[str]:
    items = node.get("items")
    if "properties" not in node and isinstance(items, dict):
        return _required(items)
    return set(node.get("required", ()))


def find(schemas: dict[str, dict[str, Any]], query: str) -> Field:
    """The field query names: KIND or KIND.path.to.field (kind in any case, e.g.
    proxy.spec.healthCheck); a BpfsyncError that lists what exists when it does not."""
    kind_word, *path = query.split(".")
    by_lower = {k.lower(): k for k in schemas}
    kind = by_lower.get(kind_word.lower())
    if kind is None:
        raise BpfsyncError(f"no kind {kind_word!r}; kinds: {', '.join(sorted(schemas))}")
    node, required = schemas[kind], True
    for i, name in enumerate(path):
        fields = _children(node)
        if name not in fields:
            where = ".".join([kind, *path[:i]])
            hint = (f" (did you mean {kind}.spec.{name}?)"
                    if i == 0 and name in _children(fields.get("spec", {})) else "")
            raise BpfsyncError(f"{where} has no field {name!r}{hint}; its fields: "
                               f"{', '.join(fields) or '(none)'}")
        required = name in _required(node)
        node = fields[name]
    return Field(kind, tuple(path), node, required)


def type_of(node: dict[str, Any]) -> str:
    if "const" in node:
        return f"constant {json.dumps(node['const'])}"
    if "enum" in node:
        return "one of " + ", ".join(json.dumps(v) for v in node["enum"])
    alts = _alternatives(node)
    if alts:
        return " or ".join(dict.fromkeys(type_of(a) for a in alts))
    t = node.get("type", "any")
    if t == "array" and isinstance(node.get("items"), dict):
        return f"list of {type_of(node['items'])}"
    if t == "object" and "additionalProperties" in node and "properties" not in node:
        values = node["additionalProperties"]
        return f"map of {type_of(values) if isinstance(values, dict) else 'any'}"
    return " or ".join(t) if isinstance(t, list) else str(t)


def explain(f: Field) -> str:
    node = f.node
    title = ".".join([f.kind, *f.path])
    lines = [f"KIND:     {f.kind}", f"FIELD:    {title}" + ("" if f.path else " (the kind)"),
             f"TYPE:     {type_of(node)}" + ("  (required)" if f.path and f.required else "")]
    description = node.get("description") or node.get("items", {}).get("description")
    if description:
        lines += ["", "DESCRIPTION:", *_wrap(description, "    ")]
    if "default" in node:
        lines.append(f"DEFAULT:  {json.dumps(node['default'])}")
    bounds = [f"{b} {json.dumps(node[b])}" for b in BOUNDS if b in node]
    items = node.get("items")
    if isinstance(items, dict):
        bounds += [f"items: {b} {json.dumps(items[b])}" for b in BOUNDS if b in items]
    if bounds:
        lines.append("BOUNDS:   " + ", ".join(bounds))
    examples = node.get("examples")
    if examples:
        lines.append("EXAMPLES: " + ", ".join(json.dumps(e) for e in examples))
    fields = _children(node)
    if fields:
        required = _required(node)
        lines += ["", "FIELDS:"]
        width = max(map(len, fields)) + 2
        for name, child in fields.items():
            first = (child.get("description") or "").split(". ")[0].rstrip(".")
            flag = " (required)" if name in required else ""
            lines.append(f"  {name:<{width}}{type_of(child)}{flag}")
            if first:
                lines += _wrap(first + ".", " " * (width + 2))
    return "\n".join(lines)


def _wrap(text: str, indent: str, width: int = 92) -> list[str]:
    import textwrap

    return textwrap.wrap(text, width, initial_indent=indent, subsequent_indent=indent) or [indent]

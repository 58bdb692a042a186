"""JSON Schema validation of documents, one schema per kind in schema/.

jsonschema (draft 2020-12) is the authority and produces every error with its path. A
fastjsonschema compilation of the same schema is tried first because it is ~12x faster and
almost every document is valid; only documents it rejects go through jsonschema. The schemas
use only keywords whose meaning is identical in draft-07 (fastjsonschema's newest) and
2020-12, and tests hold both validators to the same verdicts.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import fastjsonschema

from reconciler.core.document import API_VERSION
from reconciler.core.errors import shown
from reconciler.data import data_dir

SCHEMA_DIR = data_dir("schema")
# Documents with errors explained field by field in one load (jsonschema costs ~1 ms each);
# the rest are counted as invalid. A directory with 100k broken documents is refused about
# as fast as a valid one is loaded.
MAX_EXPLAINED = 1000


@dataclass(frozen=True, slots=True)
class SchemaError:
    path: tuple[str | int, ...]
    message: str
    at_key: bool = False  # the problem is the key itself (an unknown field)


@dataclass
class KindSchema:
    kind: str
    schema: dict[str, Any]

    @cached_property
    def _fast(self) -> Callable[[Any], Any]:
        draft07 = dict(self.schema, **{"$schema": "http://json-schema.org/draft-07/schema#"})
        draft07.pop("$id", None)
        return fastjsonschema.compile(draft07, use_default=False)  # never change the document

    @cached_property
    def _full(self) -> Any:
        import jsonschema  # ~80 ms to import, needed only for documents with errors

        return jsonschema.Draft202012Validator(
            self.schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)

    def is_valid_fast(self, data: Any) -> bool:
        try:
            self._fast(data)
        except fastjsonschema.JsonSchemaException:
            return False
        return True

    def errors(self, data: Any) -> list[SchemaError]:
        out: list[SchemaError] = []
        for err in sorted(self._full.iter_errors(data), key=lambda e: list(map(str, e.path))):
            out.extend(_explain(err))
        return out


SECRET_FIELDS = frozenset({"key"})  # spec.key: never quoted, whatever its type


def _message(err: Any) -> str:
    """jsonschema's message with the value it quotes made short (shown()) — or, for a key,
    left out: a message never carries a whole value, nor any part of a secret."""
    message: str = err.message
    instance = err.instance
    quoted = repr(instance)
    path = tuple(err.absolute_path)
    secret = bool(path) and path[-1] in SECRET_FIELDS and len(path) == 2 and path[0] == "spec"
    if message.startswith(quoted):
        message = ("the key (not shown)" if secret else shown(instance)) + message[len(quoted):]
    elif secret:
        message = f"the key (not shown) is not valid here ({err.validator})"
    if (err.validator == "type" and isinstance(instance, float)
            and float(instance).is_integer() and "integer" in str(err.validator_value)):
        message += f": an integer field; write {int(instance)}"
    return message


def _explain(err: Any) -> Iterator[SchemaError]:
    """Messages for one jsonschema.ValidationError."""
    path = tuple(err.absolute_path)
    if err.validator == "additionalProperties" and isinstance(err.instance, dict):
        known = set(err.schema.get("properties", {}))
        for extra in sorted(set(err.instance) - known, key=str):
            hint = f"; known fields: {', '.join(sorted(known))}" if known else ""
            yield SchemaError((*path, extra), f"unknown field {extra!r}{hint}", at_key=True)
        return
    if err.validator in ("oneOf", "not") and "x-error" in err.schema:
        forbidden = err.validator_value.get("required", []) if err.validator == "not" else []
        if len(forbidden) == 1:  # point at the one field that must not be there
            path = (*path, forbidden[0])
        yield SchemaError(path, err.schema["x-error"])
        return
    if err.validator == "oneOf" and err.context:
        # Report the alternative that got furthest rather than "is not valid under any".
        best = max(err.context, key=lambda e: len(e.absolute_path))
        if best.absolute_path:
            yield from _explain(best)
            return
    if err.validator == "pattern" and "x-error" in err.schema:  # a regex says little
        yield SchemaError(path, f"{shown(err.instance)}: {err.schema['x-error']}")
        return
    if err.validator == "required":
        if "x-error" in err.schema and "properties" not in err.schema:  # a conditional's
            yield SchemaError(path, err.schema["x-error"])
            return
        yield SchemaError(path, err.message.replace("is a required property", "is required"))
        return
    yield SchemaError(path, _message(err))


COMMON = "common.json"
COMBINED = "bpfsync.json"  # every kind in one file, for editors (load/combined.py)
_COMMON_REF = COMMON + "#/$defs/"


def inline_common(node: Any, defs: dict[str, Any]) -> Any:
    """node with every {"$ref": "common.json#/$defs/NAME", ...} replaced by a copy of that
    definition, the keys beside the $ref (a description) overriding its own: both validators
    then see one self-contained schema per kind, and report errors exactly as if the
    definitions were written out in each file."""
    if isinstance(node, list):
        return [inline_common(v, defs) for v in node]
    if not isinstance(node, dict):
        return node
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith(_COMMON_REF):
        siblings = {k: v for k, v in node.items() if k != "$ref"}
        return {**inline_common(defs[ref[len(_COMMON_REF):]], defs), **siblings}
    return {k: inline_common(v, defs) for k, v in node.items()}


class Schemas:
    """The schema of every kind (schema/<kind>.json, with common.json's definitions
    inlined), loaded once."""

    def __init__(self, directory: Path = SCHEMA_DIR) -> None:
        self.kinds: dict[str, KindSchema] = {}
        defs = json.loads((directory / COMMON).read_text())["$defs"]
        for file in sorted(directory.glob("*.json")):
            if file.name in (COMMON, COMBINED):
                continue
            schema = inline_common(json.loads(file.read_text()), defs)
            kind = schema["properties"]["kind"]["const"]
            self.kinds[kind] = KindSchema(kind, schema)

    def validate(self, data: Any, explain: bool = True) -> list[SchemaError]:
        """Errors of one document; [] when valid. explain=False: an invalid document gets
        one error that says so, without jsonschema's (slower) account of every field — for
        the documents past the first MAX_EXPLAINED with errors of a load."""
        if not isinstance(data, dict):
            return [SchemaError((), f"a resource must be a mapping, not {type(data).__name__}")]
        kind = data.get("kind")
        if not isinstance(kind, str) or kind not in self.kinds:  # (a list is unhashable)
            known = ", ".join(sorted(self.kinds))
            what = "missing" if kind is None else f"{shown(kind)} is unknown"
            return [SchemaError(("kind",), f"kind {what}; known kinds: {known}")]
        if data.get("apiVersion") != API_VERSION:
            return [SchemaError(("apiVersion",), f"apiVersion must be {API_VERSION!r}, "
                                                 f"got {shown(data.get('apiVersion'))}")]
        schema = self.kinds[kind]
        if schema.is_valid_fast(data):
            return []
        if not explain:
            return [SchemaError((), "invalid; not explained: more than "
                                    f"{MAX_EXPLAINED:,} documents of this load have errors "
                                    "(fix the first ones)")]
        return schema.errors(data)  # jsonschema is the authority if the two ever disagree

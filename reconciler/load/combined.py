"""One JSON Schema for every kind, for editors (yaml-language-server, VS Code, IntelliJ):
`schema/bpfsync.json`, generated from the per-kind schemas with common.json's definitions
inlined, dispatching on `kind`, self-contained (no $ref leaves the file, so an editor never
fetches anything). tests/unit/test_cli.py keeps the file equal to what this makes;
regenerate with `python -m reconciler.load.combined > schema/bpfsync.json`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from reconciler.load.schema import SCHEMA_DIR, Schemas


def combined_schema(directory: Path = SCHEMA_DIR) -> dict[str, Any]:
    kinds = Schemas(directory).kinds
    defs = {}
    for kind, ks in sorted(kinds.items()):
        defs[kind] = {k: v for k, v in ks.schema.items() if k not in ("$schema", "$id")}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "bpfsync resource",
        "description": "Any bpfsync resource, by its kind (generated from the schema of each "
                       "kind; for editors: `# yaml-language-server: $schema=...bpfsync.json`).",
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {"kind": {"enum": sorted(kinds)}},
        "allOf": [{"if": {"properties": {"kind": {"const": kind}}, "required": ["kind"]},
                   "then": {"$ref": f"#/$defs/{kind}"}} for kind in sorted(kinds)],
        "$defs": defs,
    }


def text(directory: Path = SCHEMA_DIR) -> str:
    return json.dumps(combined_schema(directory), indent=2) + "\n"


if __name__ == "__main__":
    print(text(), end="")

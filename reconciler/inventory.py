"""Observed kernel state as resource documents, for `bpfsync get`: each kind's own view where
its data path has one (Kind.inventory), else the entries of its tables grouped by the
resource they belong to (named as diff names them: as declared, from the names table, else
after their ids).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from reconciler.core import registry
from reconciler.core.capability import Kind
from reconciler.core.document import document
from reconciler.core.tables import Observed, stamp_ok
from reconciler.load.secrets import Secret
from reconciler.names.tables import NO_NAMES, Names


def _shown(decoded: dict[str, Any]) -> dict[str, Any]:
    return {k: "(not shown)" if isinstance(v, Secret) else v for k, v in decoded.items()}


def by_owner(kind: str, observed: Observed) -> list[dict[str, Any]]:
    """The kind's entries, one document per owner: spec lists each table's decoded entries,
    status counts them and says whether bpfsync wrote them all."""
    docs: dict[str, dict[str, Any]] = {}
    names = Names(observed)
    for spec in registry.ENTRY_TABLES:
        entries = observed.get(spec.name, {})
        if spec.kind != kind or not spec.owned or not entries:
            continue
        owner = registry.owners(spec.name, observed, NO_NAMES)
        for key, value in sorted(entries.items()):
            derived = owner(key, value)
            ref = names.resolve(derived)
            if ref not in docs:
                status: dict[str, Any] = {"managed": True, "entries": {}}
                if (source := names.source(derived)) is not None:
                    status["source"] = source
                docs[ref] = document(kind, ref.partition("/")[2], {}, status)
            doc = docs[ref]
            try:
                decoded = _shown({**registry.decode_key(spec.name, key),
                                  **registry.decode_value(spec.name, value)})
            except Exception:  # a foreign entry of the wrong size: counted, not decoded
                decoded = {"undecodable": True}
            doc["spec"].setdefault(spec.name, []).append(decoded)
            counts = doc["status"]["entries"]
            counts[spec.name] = counts.get(spec.name, 0) + 1
            doc["status"]["managed"] = doc["status"]["managed"] and stamp_ok(key, value)
    return [docs[ref] for ref in sorted(docs)]


def documents(kind: Kind, observed: Observed, keys_dir: Path | None = None) -> list[dict[str, Any]]:
    """Documents of one kind: its own view, or its entries by owner."""
    if kind.inventory is not None:
        return kind.inventory(observed, keys_dir)
    return by_owner(kind.name, observed)

"""The registry: every data path bpfsync has, and what follows from the list — kinds, tables,
the order entries are written and deleted in, how each table reads back.

Adding a data path: its package exports a Capability (core/capability.py); one line below.
"""

from __future__ import annotations

from collections.abc import Mapping

from reconciler.core import capacity
from reconciler.core.capability import Capability, Kind
from reconciler.core.capacity import Capacities
from reconciler.core.tables import Codec, Decoded, MapSpec, Owners
from reconciler.gue.capability import GUE
from reconciler.intercept.capability import INTERCEPT
from reconciler.names.capability import names_capability
from reconciler.names.tables import Names, resolved
from reconciler.steering.capability import STEERING
from reconciler.tproxy.capability import TPROXY

DATA_PATHS: tuple[Capability, ...] = (GUE, STEERING, TPROXY, INTERCEPT)
# The names table goes first: its entries are written before and deleted after all others.
CAPABILITIES: tuple[Capability, ...] = (
    names_capability(k for c in DATA_PATHS for k in c.kinds), *DATA_PATHS)

KINDS: dict[str, Kind] = {k.name: k for c in CAPABILITIES for k in c.kinds}
# Tables of entries (read, diffed; the owned ones written and pruned); the other pinned maps
# are only created (and read as counters or by the data path).
ENTRY_TABLES: tuple[MapSpec, ...] = tuple(s for c in CAPABILITIES for s in c.entries)
PINNED: tuple[MapSpec, ...] = (*ENTRY_TABLES, *(s for c in CAPABILITIES for s in c.maps))
CREATED_BY_BCC: tuple[MapSpec, ...] = tuple(s for c in CAPABILITIES for s in c.created_by_bcc)
OWNED_TABLES: tuple[MapSpec, ...] = tuple(s for s in ENTRY_TABLES if s.owned)
# Kinds whose entries --keep can keep from pruning (an Interface has attachments, no entries).
ENTRY_KINDS: tuple[str, ...] = tuple(k for k in KINDS if any(s.kind == k for s in OWNED_TABLES))
BY_NAME: dict[str, MapSpec] = {s.name: s for s in (*PINNED, *CREATED_BY_BCC)}
# The groups --capacity sets (the names table's size is derived from them: core/capacity.py).
CAPACITY_GROUPS: tuple[str, ...] = tuple(dict.fromkeys(
    s.sized_by for s in PINNED if s.sized_by and s.sized_by != capacity.NAMES_GROUP))


def default_capacities() -> Capacities:
    """Every capacity group at its default size (the specs' max_entries)."""
    return Capacities(capacity.defaults(PINNED))


# Upserts run in registry order (a data path may use another's entries: a TransparentProxy's
# configuration names its Proxy's slot), deletes in reverse; within a data path, its own order.
UPSERT_ORDER: tuple[MapSpec, ...] = tuple(s for c in CAPABILITIES for s in c.upserts)
DELETE_ORDER: tuple[MapSpec, ...] = tuple(s for c in reversed(CAPABILITIES) for s in c.deletes)
SUMMARIZED: frozenset[str] = frozenset(s.name for c in CAPABILITIES for s in c.summarized)
_CODECS: dict[str, Codec] = {name: codec for c in CAPABILITIES for name, codec in c.codecs.items()}


def decode_key(table: str, raw: bytes) -> Decoded:
    return _CODECS[table].decode_key(raw)


def decode_value(table: str, raw: bytes) -> Decoded:
    return _CODECS[table].decode_value(raw)


def describe_key(table: str, raw: bytes) -> str:
    """Short human name of an entry's key, as shown in diff."""
    codec = _CODECS[table]
    return codec.describe(codec.decode_key(raw))


def owners(table: str, observed: Mapping[str, Mapping[bytes, bytes]],
           names: Names | None = None) -> Owners:
    """Names for the entries of table that no YAML resource claims (see Codec.owners): the
    declared names the names table holds, else names derived from ids. names: the names
    table of observed, when the caller already has it."""
    return resolved(_CODECS[table].owners, observed, names)


def _check() -> None:
    """Every owned table is written and deleted exactly once, and every table has a codec."""
    for order in (UPSERT_ORDER, DELETE_ORDER):
        if sorted(s.name for s in order) != sorted(s.name for s in OWNED_TABLES):
            raise AssertionError("upserts/deletes must list every owned table once")
    if missing := {s.name for s in ENTRY_TABLES} - _CODECS.keys():
        raise AssertionError(f"tables without a codec: {sorted(missing)}")
    if len(BY_NAME) != len(PINNED) + len(CREATED_BY_BCC):
        raise AssertionError("two tables share a name")


_check()

"""The names table as a capability: its entries are compiled from every declared resource of
the kinds with a kernel ref, written before any other entry and deleted after every other
(a crash half-way through an apply leaves no entry of a resource without its name)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from reconciler.core.capability import Capability, Kind
from reconciler.core.desired import CompileContext, DesiredTables
from reconciler.core.findings import Finding
from reconciler.core.state import DesiredState, changed_names
from reconciler.core.tables import Entries
from reconciler.names.tables import (
    CODECS,
    NAME_LEN,
    NAMES,
    names_key,
    names_still,
    names_value,
)


def _relative(file: str, directory: str | None) -> str:
    if directory and file.startswith(directory.rstrip("/") + "/"):
        return file[len(directory.rstrip("/")) + 1:]
    return file


class NamesMemo:
    """The names entries of the last compile, updated by difference (as gue's ServiceMemo):
    only resources that are not the very same object as last time (the parse cache keeps
    unchanged ones) are looked up and packed again; at 100k resources a full pass costs a
    good part of a reconcile. The daemon keeps one; a command compiles with a new one, once
    (once=True: it keeps nothing for a next update, where 1M resources' keys by ref and a copy
    of their dicts cost about 90 MB)."""

    def __init__(self, kinds: tuple[Kind, ...], once: bool = False) -> None:
        self.kinds, self.once = kinds, once
        self.resources: dict[str, dict[str, Any]] = {}  # kind -> name -> resource
        self.keys: dict[str, bytes] = {}  # "Kind/name" -> key
        self.entries: Entries = {}
        self.owners: dict[bytes, str] = {}
        self.state: DesiredState | None = None  # the state last compiled

    def update(self, state: DesiredState, have: Mapping[bytes, bytes]) -> None:
        """Each resource's entry: what the kernel records when that still names it (the
        file and revision that last wrote it are kept), else a fresh one."""
        last, self.state = self.state, state
        for kind in self.kinds:
            now = state.resources.get(kind.name, {})
            before = self.resources.get(kind.name, {})
            changed, gone = changed_names(now, before, state.changed_since(last, kind.name))
            for name in (*(n for n in changed if n in before), *gone):  # replaced or removed
                key = self.keys.pop(before[name].ref)
                self.entries.pop(key, None)
                self.owners.pop(key, None)
            ref_of = kind.kernel_ref
            assert ref_of is not None
            for name in changed:
                resource = now[name]
                ref = resource.ref
                key = names_key(ref_of(resource))
                if not self.once:
                    self.keys[ref] = key
                old = have.get(key)
                self.entries[key] = (old if old is not None and names_still(key, old, name)
                                     else fresh(state, key, resource))
                self.owners[key] = ref
            if self.once:
                self.resources[kind.name] = now
            elif changed or len(now) != len(before):
                self.resources[kind.name] = dict(now)

    def refreshed(self, state: DesiredState, written: set[str]) -> dict[bytes, bytes]:
        """Fresh entries (this apply's file and revision) of the resources written. The memo
        takes them as its own: once written, the kernel and the memo agree again, and the
        plan's comparison of the whole table stays the cheap one (equal)."""
        out = {}
        for ref in written:
            key = self._key(state, ref)
            if key is not None:
                kind, _, name = ref.partition("/")
                out[key] = self.entries[key] = fresh(state, key, state.resources[kind][name])
        return out

    def _key(self, state: DesiredState, ref: str) -> bytes | None:
        """The names key of the resource ref names, when it is one of state's (and of this
        memo's kinds)."""
        if not self.once:
            return self.keys.get(ref)
        kind, _, name = ref.partition("/")
        resource = state.resources.get(kind, {}).get(name)
        ref_of = next((k.kernel_ref for k in self.kinds if k.name == kind), None)
        return names_key(ref_of(resource)) if resource is not None and ref_of else None


def fresh(state: DesiredState, key: bytes, resource: Any) -> bytes:
    """The entry of a resource as this apply writes it: its file and the current revision."""
    origin = resource.origin
    file = _relative(origin.file, state.directory) if origin else ""
    return names_value(key, resource.name, file, state.revision)


def names_capability(kinds: Iterable[Kind]) -> Capability:
    """The names capability for the kinds of the data paths (those with a kernel_ref)."""
    named = tuple(k for k in kinds if k.kernel_ref is not None)

    def compile_names(out: DesiredTables, state: DesiredState, context: CompileContext) -> None:
        """out.refresh gives the fresh value of an entry whose resource the plan writes."""
        memo = (context.memo.get("names", lambda: NamesMemo(named)) if context.memo is not None
                else NamesMemo(named, once=True))
        memo.update(state, (context.observed or {}).get(NAMES.name) or {})
        # the memo's own dicts: read-only for everyone else
        out.entries[NAMES.name], out.owners[NAMES.name] = memo.entries, memo.owners

        out.refresh[NAMES.name] = lambda written: memo.refreshed(state, written)
        # where the kernel's entry differs from the memo's yet still names the resource
        # (another process applied since), the kernel's history stands
        out.kept[NAMES.name] = lambda key, old, new: names_still(
            key, old, new[:NAME_LEN].rstrip(b"\0").decode())

    def no_findings(_state: DesiredState, _invalid: set[str]) -> list[Finding]:
        return []

    return Capability(name="names", kinds=(), entries=(NAMES,), upserts=(NAMES,),
                      deletes=(NAMES,), codecs=CODECS, cross_check=no_findings,
                      compile=compile_names)

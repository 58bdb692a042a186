"""The names table as a capability: its entries are compiled from every declared resource of
the kinds with a kernel ref, written before any other entry and deleted after every other
(a crash half-way through an apply leaves no entry of a resource without its name)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from reconciler.core.capability import Capability, Kind
from reconciler.core.desired import CompileContext, DesiredTables
from reconciler.core.findings import Finding
from reconciler.core.state import DesiredState
from reconciler.core.tables import Entries
from reconciler.names.tables import CODECS, NAMES, names_key, names_still, names_value

Ref = tuple[str, str]  # (kind, name)


def _relative(file: str, directory: str | None) -> str:
    if directory and file.startswith(directory.rstrip("/") + "/"):
        return file[len(directory.rstrip("/")) + 1:]
    return file


class NamesMemo:
    """The names entries of the last compile, updated by difference (as gue's ServiceMemo):
    only resources that are not the very same object as last time (the parse cache keeps
    unchanged ones) are looked up and packed again; at 100k resources a full pass costs a
    good part of a reconcile. The daemon keeps one; a command compiles with a new one."""

    def __init__(self, kinds: tuple[Kind, ...]) -> None:
        self.kinds = kinds
        self.resources: dict[Ref, Any] = {}
        self.keys: dict[Ref, bytes] = {}
        self.entries: Entries = {}
        self.owners: dict[bytes, str] = {}

    def update(self, state: DesiredState, have: Mapping[bytes, bytes]) -> None:
        """Each resource's entry: what the kernel records when that still names it (the
        file and revision that last wrote it are kept), else a fresh one."""
        now = {(k.name, name): r for k in self.kinds
               for name, r in state.resources.get(k.name, {}).items()}
        for ref, resource in self.resources.items():  # removed or replaced
            if now.get(ref) is not resource:
                key = self.keys.pop(ref)
                self.entries.pop(key, None)
                self.owners.pop(key, None)
        by_kind = {k.name: k for k in self.kinds}
        for ref, resource in now.items():
            if self.resources.get(ref) is not resource:
                ref_of = by_kind[ref[0]].kernel_ref
                assert ref_of is not None
                key = self.keys[ref] = names_key(ref_of(resource))
                old = have.get(key)
                self.entries[key] = (old if old is not None and names_still(key, old, ref[1])
                                     else fresh(state, key, resource))
                self.owners[key] = resource.ref
        self.resources = now
        # what the kernel records now, where it still names the resource, is the history
        # (another process may have applied since); compared in C, looked at where it differs
        for key, _ in self.entries.items() - have.items():
            old = have.get(key)
            if old is not None and names_still(key, old, self.owners[key].partition("/")[2]):
                self.entries[key] = old


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
                else NamesMemo(named))
        memo.update(state, (context.observed or {}).get(NAMES.name) or {})
        # the memo's own dicts: read-only for everyone else
        out.entries[NAMES.name], out.owners[NAMES.name] = memo.entries, memo.owners

        def refresh(key: bytes) -> bytes:
            kind, _, name = memo.owners[key].partition("/")
            return fresh(state, key, state.resources[kind][name])

        out.refresh[NAMES.name] = refresh

    def no_findings(_state: DesiredState, _invalid: set[str]) -> list[Finding]:
        return []

    return Capability(name="names", kinds=(), entries=(NAMES,), upserts=(NAMES,),
                      deletes=(NAMES,), codecs=CODECS, cross_check=no_findings,
                      compile=compile_names)

"""Assembling the desired state by difference, for the daemon: a save touches one file of
1,000, and building the state of 100k resources again costs a fifth of a second each time.

The result is always what `assemble` gives for the same file results, in the same order:
the difference is taken only when it cannot change anything but the resources of the files
that changed, which keep their places. That is when the files are the same files in the
same order, the previous state had no name defined twice, and each changed file declares
the same names, in the same order, valid where they were valid. Anything else (a file
added, a resource renamed, added, removed or turned invalid) assembles from scratch. The
state it gives says what changed (DesiredState.delta), for the compile memos and the key
counts that follow.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from reconciler.core.findings import Finding
from reconciler.core.model import Origin
from reconciler.core.state import Delta, DesiredState
from reconciler.load.files import DocResult, FileResult

Assembled = tuple[DesiredState, set[str], list[Finding]]


def assemble(results: Iterable[FileResult]) -> Assembled:
    """The desired state from per-file results, in file order: a resource defined twice is
    reported at its second place. Names of invalid resources are returned so that
    cross-checks do not pile consequential errors (a dangling reference) on top."""
    state = DesiredState()
    invalid: set[str] = set()
    first_seen: dict[str, Origin] = {}
    findings: list[Finding] = []
    for file in results:
        for doc in file.docs:
            findings.extend(doc.findings)
            ref = doc.ref
            if ref is not None:
                if ref in first_seen:
                    findings.append(Finding(
                        doc.origin, ("metadata", "name"), f"{ref} is defined twice", ref,
                        related=((first_seen[ref], ("metadata", "name")),)))
                    continue
                first_seen[ref] = doc.origin
            if doc.resource is None:
                if ref:
                    invalid.add(ref)
                continue
            if doc.drift is not None and ref is not None:
                state.drift[ref] = doc.drift
            if doc.confirm is not None and ref is not None:
                state.confirm[ref] = doc.confirm
            state.add(doc.resource)
    return state, invalid, findings


def _shape(result: FileResult) -> tuple[tuple[str | None, bool], ...]:
    """What must stay the same for a changed file to be replaced in place."""
    return tuple((d.ref, d.resource is not None) for d in result.docs)


@dataclass
class _Previous:
    results: list[FileResult]
    files: list[str]
    state: DesiredState
    invalid: set[str]
    findings: list[list[Finding]]  # per file, its documents' findings in order


class Assembly:
    """The last assembly, kept by the daemon's loader (FileCache.assembly). Not thread-safe."""

    def __init__(self) -> None:
        self._last: _Previous | None = None
        self.by_difference = False  # how the last call assembled (for tests and profiling)

    def assemble(self, results: list[FileResult]) -> Assembled:
        out = self._by_difference(results)
        self.by_difference = out is not None
        if out is None:
            out = assemble(results)
            # a name defined twice is reported in file order: only a clean state is a base
            refs = [d.ref for r in results for d in r.docs if d.ref is not None]
            clean = len(set(refs)) == len(refs)
            state, invalid, _ = out
            self._last = _Previous(
                list(results), [r.file for r in results], state, set(invalid),
                [[f for d in r.docs for f in d.findings] for r in results]) if clean else None
        return out

    def _by_difference(self, results: list[FileResult]) -> Assembled | None:
        last = self._last
        if last is None or len(results) != len(last.results):
            return None
        # a file's documents are the same objects while the cache reuses its result (the
        # result itself is copied once, when the cache drops its text)
        changed = [i for i, (new, old) in enumerate(zip(results, last.results, strict=True))
                   if new.docs is not old.docs]
        if len(changed) * 4 > len(results):
            return None  # most files changed: from scratch costs as little
        for i in changed:
            if results[i].file != last.files[i] or _shape(results[i]) != _shape(last.results[i]):
                return None
        state = DesiredState(resources={k: dict(v) for k, v in last.state.resources.items() if v},
                             drift=dict(last.state.drift), confirm=dict(last.state.confirm))
        invalid = set(last.invalid)
        findings = list(last.findings)
        for i in changed:
            for doc in results[i].docs:
                _replace(state, doc)
            findings[i] = [f for d in results[i].docs for f in d.findings]
        refs = frozenset(d.ref for i in changed for d in results[i].docs
                         if d.ref is not None and d.resource is not None)
        last.state.delta = None  # only the newest difference is kept: no chain of states
        state.delta = Delta(last.state, refs)
        self._last = _Previous(list(results), last.files, state, invalid, findings)
        return state, invalid, [f for per_file in findings for f in per_file]


def _replace(state: DesiredState, doc: DocResult) -> None:
    """doc's resource in the place of the one of the same name (the shapes matched)."""
    ref = doc.ref
    if ref is None or doc.resource is None:
        return  # invalid before and now: in `invalid` already, nothing in the state
    state.resources[doc.resource.kind][doc.resource.name] = doc.resource
    for annotated, value in ((state.drift, doc.drift), (state.confirm, doc.confirm)):
        if value is None:
            annotated.pop(ref, None)
        else:
            annotated[ref] = value

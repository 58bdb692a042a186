"""The desired state: every valid resource of a directory, by kind and name."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from reconciler.core.errors import Problem

R = TypeVar("R")


@dataclass
class Delta:
    """What a state is made of: base, with the resources `changed` names ("Kind/name") put in
    place of those of the same names (no name added, none removed). The daemon's assembly by
    difference says so, and the compile memos then look at those resources only."""

    base: DesiredState
    changed: frozenset[str]

    def names(self, kind: str) -> list[str]:
        prefix = kind + "/"
        return [ref[len(prefix):] for ref in self.changed if ref.startswith(prefix)]


def changed_names(now: Mapping[str, Any], before: Mapping[str, Any],
                  known: list[str] | None) -> tuple[list[str], list[str]]:
    """(names whose resource is new or not the very object it was before, names gone since)
    of one kind, for the compile memos; known: the delta's names when the state says them
    (DesiredState.changed_since), else one pass in a comprehension finds them (what left is
    looked for only when the counts say something did)."""
    changed = known if known is not None else [
        name for name, r in now.items() if before.get(name) is not r]
    kept = len(now) - len(changed) + sum(1 for name in changed if name in before)
    gone = [name for name in before if name not in now] if kept != len(before) else []
    return changed, gone


@dataclass
class DesiredState:
    resources: dict[str, dict[str, Any]] = field(default_factory=dict)  # kind -> name -> it
    warnings: list[Problem] = field(default_factory=list)
    files: int = 0
    drift: dict[str, str] = field(default_factory=dict)  # "Kind/name" -> annotated policy
    confirm: dict[str, float] = field(default_factory=dict)  # "Kind/name" -> confirm-within
    directory: str | None = None  # what files are named relative to (the names table)
    revision: str | None = None  # the directory's git commit ("-dirty" suffix), when known
    # the files' texts by relative path when they are not the directory's (a rollback):
    # what the history records for this state instead of reading the directory again
    sources: dict[str, str] | None = None
    # how it differs from the state assembled before it (None: not known, look at all)
    delta: Delta | None = field(default=None, compare=False, repr=False)
    # counts of keys derived from it (key_counts), handed on to a state assembled from it
    # by difference
    derived: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def of(self, model: type[R]) -> dict[str, R]:
        """The resources of one kind (model: its class, whose `kind` names it), by name; the
        dict is the state's own, so adding to it adds to the state."""
        return self.resources.setdefault(model.kind, {})  # type: ignore[attr-defined]

    def changed_since(self, before: DesiredState | None, kind: str) -> list[str] | None:
        """Names of kind whose resources may differ from before's (same names in both), when
        this state is known to be before plus a delta; None when not known."""
        delta = self.delta
        return delta.names(kind) if delta is not None and delta.base is before else None

    def key_counts(self, model: type, key: Callable[[Any], Hashable],
                   label: str) -> Counter[Hashable]:
        """How many resources of model have each key(resource) (label names the count: the
        same label, the same key). A state assembled by difference takes its base's counts
        and moves only the changed resources' keys, where counting 100k resources again
        costs tens of ms in every reconcile (checks of keys claimed twice, the history's
        files with inline keys)."""
        resources = self.of(model)
        delta = self.delta
        counts = delta.base.derived.pop(label, None) if delta is not None else None
        if counts is None:
            counts = Counter(map(key, resources.values()))
        else:  # same names in both: each changed resource's key moves
            before = delta.base.of(model)
            for name in delta.names(model.kind):  # type: ignore[attr-defined]
                old = key(before[name])
                counts[old] -= 1
                if not counts[old]:
                    del counts[old]
                counts[key(resources[name])] += 1
        self.derived[label] = counts
        return counts

    def add(self, resource: Any) -> None:
        self.resources.setdefault(resource.kind, {})[resource.name] = resource

    def count(self, kind: str) -> int:
        return len(self.resources.get(kind, ()))

    @property
    def resource_count(self) -> int:
        return sum(map(len, self.resources.values()))

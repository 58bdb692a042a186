"""What checks across resources share: a key claimed twice, a reference to nothing, file
order. Each data path's own checks live in its package (<data path>/checks.py) and run from
load/directory.py through the registry."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from typing import Any, TypeVar

from reconciler.core.findings import Finding
from reconciler.core.model import Resource
from reconciler.core.state import DesiredState
from reconciler.load.locate import PathItem

R = TypeVar("R")


def unique(resources: Iterable[Resource], key: Callable[[Any], Hashable],
            path: tuple[PathItem, ...], what: Callable[[Any], str]) -> list[Finding]:
    """A finding for every resource whose key an earlier one (in file order) claims."""
    resources = list(resources)
    keys = list(map(key, resources))
    if len(set(keys)) == len(keys):  # the common case, decided in C: nothing to report
        return []
    first: dict[Hashable, Resource] = {}
    out = []
    for r in sorted(resources, key=order):
        k = key(r)
        if k in first:
            other = first[k]
            out.append(Finding(
                r.origin, path, f"{what(r)} is also claimed by {other.ref}", r.ref,
                related=((other.origin, path),) if other.origin else ()))
        else:
            first[k] = r
    return out


def unique_of(state: DesiredState, model: type, key: Callable[[Any], Hashable],
              path: tuple[PathItem, ...], what: Callable[[Any], str], label: str) -> list[Finding]:
    """`unique` over every resource of model in state, deciding "nothing claimed twice" from
    a count of each key kept on the state (label names it): a state assembled by difference
    takes its base's counts and updates them with the changed resources alone, where
    counting 100k keys again costs tens of ms in every reconcile."""
    resources = state.of(model)
    counts = state.key_counts(model, key, label)
    if len(counts) == len(resources):
        return []
    return unique(resources.values(), key, path, what)


def unknown(kind: str, name: str, known: dict[str, Any], invalid: set[str], by: Resource,
             path: tuple[PathItem, ...]) -> list[Finding]:
    """A reference to a resource the state does not declare (none when the resource exists
    but is invalid: its own errors say why)."""
    if name in known or f"{kind}/{name}" in invalid:
        return []
    names = ", ".join(sorted(known)[:10]) or "none"
    return [Finding(by.origin, path, f"no {kind} named {name!r} (defined: {names})", by.ref)]


def order(r: Resource) -> tuple[str, int]:
    return (r.origin.file, r.origin.index) if r.origin else ("", 0)




def first_over(resources: Iterable[R], count: Callable[[R], int], limit: int
               ) -> tuple[R, int] | None:
    """The first resource (in the order given) at which the running total of count exceeds
    limit (a shared table's capacity), with that total; None when all fit."""
    total = 0
    for r in resources:
        total += count(r)
        if total > limit:
            return r, total
    return None


def over_capacity(resources: Iterable[Any], count: Callable[[Any], int], limit: int,
                  path: tuple[PathItem, ...], message: Callable[[int], str]) -> list[Finding]:
    """A finding at the first resource that takes a shared table past limit (message gets
    the running total there)."""
    over = first_over(resources, count, limit)
    if over is None:
        return []
    r, total = over
    return [Finding(r.origin, path, message(total), r.ref)]

"""A problem found in a resource, before its line number is looked up."""

from __future__ import annotations

from dataclasses import dataclass

from reconciler.errors import Severity
from reconciler.locate import PathItem
from reconciler.model import Origin


@dataclass(frozen=True, slots=True)
class Finding:
    """A problem before its line number is looked up."""

    origin: Origin | None
    path: tuple[PathItem, ...]
    message: str
    resource: str | None = None
    severity: Severity = Severity.ERROR
    at_key: bool = False
    related: tuple[tuple[Origin, tuple[PathItem, ...]], ...] = ()

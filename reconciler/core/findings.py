"""A problem found in a resource, before its line number is looked up."""

from __future__ import annotations

from dataclasses import dataclass

from reconciler.core.errors import Severity
from reconciler.core.model import Origin
from reconciler.load.locate import PathItem


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

"""Problems found in desired state, and the exceptions that carry them.

Every problem names where it is (file:line:column), which resource, which field, and what is
wrong, so one run can report all of them at once.
"""

from __future__ import annotations

import reprlib
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

MAX_SHOWN = 60  # characters of a value that a message quotes
MAX_MESSAGE = 1000  # characters of a message; what a problem says stays readable
_REPR = reprlib.Repr()  # (keyword arguments only from Python 3.12)
_REPR.maxlevel = 2
_REPR.maxtuple = _REPR.maxlist = _REPR.maxdict = _REPR.maxset = _REPR.maxfrozenset = 4
_REPR.maxstring = _REPR.maxother = MAX_SHOWN
_REPR.maxlong = 40


def shown(value: Any) -> str:
    """A value as a message may quote it: whole when short; otherwise a prefix and its size.
    Bounded in time and length whatever the value (a 1 MB string, an alias bomb, a deep
    list), so a message can never be larger than the problem it describes."""
    if isinstance(value, str):
        if len(value) <= MAX_SHOWN:
            return repr(value)
        return f"{value[:MAX_SHOWN]!r}... ({len(value):,} characters)"
    if isinstance(value, dict | list | tuple):
        kind = "mapping" if isinstance(value, dict) else "list"
        text = _REPR.repr(value)
        if len(text) <= 2 * MAX_SHOWN:
            return text
        return f"{text[:MAX_SHOWN]}... (a {kind} of {len(value):,} items)"
    return _REPR.repr(value)


class Severity(Enum):
    ERROR = "error"
    WARNING = "warning"


@dataclass(frozen=True, slots=True)
class Location:
    file: str
    line: int | None = None  # 1-based
    column: int | None = None  # 1-based

    def __str__(self) -> str:
        if self.line is None:
            return self.file
        if self.column is None:
            return f"{self.file}:{self.line}"
        return f"{self.file}:{self.line}:{self.column}"


@dataclass(frozen=True, slots=True)
class Problem:
    location: Location
    message: str
    resource: str | None = None  # "Kind/name"
    path: str | None = None  # dotted field path, e.g. "spec.proxy.port"
    severity: Severity = Severity.ERROR
    related: tuple[Location, ...] = field(default=())

    def __post_init__(self) -> None:
        if len(self.message) > MAX_MESSAGE:  # the last guard: no message quotes a whole value
            cut = f"{self.message[:MAX_MESSAGE]}... ({len(self.message):,} characters)"
            object.__setattr__(self, "message", cut)
        for name in ("resource", "path"):
            value = getattr(self, name)
            if value is not None and len(value) > MAX_SHOWN * 2:
                object.__setattr__(self, name, f"{value[:MAX_SHOWN * 2]}...")

    def __str__(self) -> str:
        parts = [f"{self.location}: {self.severity.value}:"]
        if self.resource:
            parts.append(f"{self.resource}:")
        if self.path:
            parts.append(f"{self.path}:")
        parts.append(self.message)
        text = " ".join(parts)
        for other in self.related:
            text += f"\n  (see {other})"
        return text

    def located(self) -> dict[str, Any]:
        """Where it is, as structured log fields: file, line, column, kind, name, path
        (those known)."""
        doc = self.to_json()
        return {k: doc[k] for k in ("file", "line", "column", "kind", "name", "path")
                if doc[k] is not None}

    def to_json(self) -> dict[str, object]:
        kind, _, name = (self.resource or "").partition("/")
        return {
            "file": self.location.file,
            "line": self.location.line,
            "column": self.location.column,
            "severity": self.severity.value,
            "resource": self.resource,
            "kind": kind or None,
            "name": name or None,
            "path": self.path,
            "message": self.message,
            "related": [str(r) for r in self.related],
        }


class BpfsyncError(Exception):
    """Base of every error bpfsync reports to the user (exit code 1, no traceback)."""


class InvalidDesiredState(BpfsyncError):
    """The desired-state directory has errors; nothing may be applied."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        errors = [p for p in problems if p.severity is Severity.ERROR]
        super().__init__(f"{len(errors)} error(s) in desired state")


class KernelStateError(BpfsyncError):
    """The kernel holds something bpfsync must not touch or cannot use (e.g. a mismatched pin)."""


class UnsafePlan(BpfsyncError):
    """A plan that would do something drastic the user did not ask for explicitly."""

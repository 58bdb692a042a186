"""Logging the errors of an invalid desired state: each distinct error once (not again at
every resync), with where it is as structured fields."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from reconciler.core.errors import Problem, Severity

log = logging.getLogger("bpfsync.daemon")
MAX_LOGGED_ERRORS = 50  # new errors logged per reconcile (status keeps MAX_STATUS_ERRORS)


def log_new_errors(problems: list[Problem], shown: Callable[[str], str],
                   logged: frozenset[str], directory: Path) -> tuple[list[str], bool]:
    """Log the errors of problems not in logged (as shown(text) makes them: git mode names
    files commit:path); returns every error's text and whether any was new."""
    texts = [(shown(str(p)), p) for p in problems if p.severity is Severity.ERROR]
    new = [(text, p) for text, p in texts if text not in logged]
    for text, p in new[:MAX_LOGGED_ERRORS]:
        where = p.located()
        log.error("invalid desired state: %s", text,
                  extra={"fields": {**where, "file": shown(where["file"])}})
    if len(new) > MAX_LOGGED_ERRORS:
        log.error("invalid desired state: ... and %d more errors (`bpfsync validate %s` "
                  "lists them all)", len(new) - MAX_LOGGED_ERRORS, directory)
    return [text for text, _ in texts], bool(new)

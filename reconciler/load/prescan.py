"""Counting the documents of kinds whose tables have a capacity, before anything is parsed.

A directory of 300,000 Services cannot fit tables of 131,072, and parsing it only to say so
took 20 s. Every document of a kind starts with a top-level `kind: <Kind>` line at column 0
(a block scalar's lines are indented, a comment starts with #), so counting those lines
counts the documents, or fewer (a flow-style document `{kind: Service, ...}` is not counted:
the cross-checks after parsing still see it). The count is therefore a lower bound, and a
directory it finds over a capacity is over it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from reconciler.core.errors import Location, Problem
from reconciler.load.source import MAX_FILE_BYTES


def _pattern(kinds: Mapping[str, int]) -> re.Pattern[bytes]:
    names = b"|".join(re.escape(k.encode()) for k in kinds)
    return re.compile(rb"^kind:[ \t]*(['\"]?)(" + names + rb")\1[ \t]*(?:#[^\n]*)?\r?$", re.M)


def over_capacity(files: list[Path], kinds: Mapping[str, int]) -> list[Problem]:
    """One problem per kind in kinds (name -> capacity) whose documents in files (in load
    order) number more than its capacity, located at the first document past it. Files the
    loader would refuse (too large, unreadable) are left to it."""
    if not kinds:
        return []
    pattern = _pattern(kinds)
    counts = dict.fromkeys(kinds, 0)
    beyond: dict[str, Location] = {}
    for path in files:
        try:
            if path.stat().st_size > MAX_FILE_BYTES:
                continue
            data = path.read_bytes()
        except OSError:
            continue
        for match in pattern.finditer(data):
            kind = match.group(2).decode()
            counts[kind] += 1
            if counts[kind] == kinds[kind] + 1:
                beyond[kind] = Location(str(path), data.count(b"\n", 0, match.start()) + 1, 1)
    return [Problem(beyond[kind], f"at least {counts[kind]:,} {kind}s exceed the table capacity "
                                  f"of {kinds[kind]:,} (counted before parsing; nothing else "
                                  f"was checked: fix this first)")
            for kind in kinds if kind in beyond]

"""`bpfsync history`: the revisions applied to the pin root, oldest first, like `argocd app
history` (the last one is what the kernel holds, unless something changed it since)."""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict
from typing import Any

from reconciler.cli.common import emit, pin_root
from reconciler.history import store


def cmd_history(args: argparse.Namespace) -> int:
    revisions = store.revisions(pin_root(args))

    def rows() -> list[tuple[str, ...]]:
        out = [("REVISION", "APPLIED", "BY", "SOURCE", "CHANGES", "ROLLBACK")]
        for r in revisions:
            can = "reverted" if r.reverted else "no" if r.unrestorable else "yes"
            out.append((str(r.number), time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(
                r.time)), r.by, r.source(), r.changes(), can))
        return out

    data = [asdict(r) for r in revisions]
    return emit(args, data, f"No history for {pin_root(args)} "
                            f"(in {store.directory(pin_root(args))}).", rows)


def add(sub: Any) -> None:
    h = sub.add_parser("history", help="the revisions applied to the pin root (for rollback)")
    h.add_argument("-o", "--output", choices=["table", "json", "yaml"], default="table")
    h.set_defaults(func=cmd_history)

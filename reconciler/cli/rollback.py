"""`bpfsync rollback [REVISION]`: apply a revision of the history again (default: the one
before the last), read from its kept files with keys read again from their keyFrom. Shows
the plan and asks on a terminal (or --yes); --confirm-within protects it like any apply.

A running daemon is told first to hold: it reports but applies nothing until `bpfsync
resume` or the next change of its files or commit, so it does not undo the rollback."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from reconciler import engine, render
from reconciler.cli import confirming
from reconciler.cli.apply import seconds
from reconciler.cli.common import EXIT_ERROR, EXIT_OK, pin_root, requested_capacity
from reconciler.cli.control import ask_daemon
from reconciler.core.errors import BpfsyncError
from reconciler.history import snapshot, store
from reconciler.history.record import Revision


def _target(revisions: list[Revision], wanted: int | None) -> Revision:
    if not revisions:
        raise BpfsyncError("no history to roll back to")
    if wanted is None:  # the one before the current (reverted ones never were current)
        applied = [r for r in revisions if not r.reverted]
        if len(applied) < 2:
            raise BpfsyncError(f"only revision {revisions[-1].number} is kept: nothing before "
                               f"it to roll back to")
        return applied[-2]
    for r in revisions:
        if r.number == wanted:
            return r
    kept = ", ".join(str(r.number) for r in revisions)
    raise BpfsyncError(f"revision {wanted} is not kept (kept: {kept})")


def _hold_daemon(root: Path, target: Revision) -> None:
    if ask_daemon(root, "hold") is not None:
        print(f"The daemon holds off (reports, applies nothing) until `bpfsync resume` or "
              f"its files change: it would otherwise apply its directory over revision "
              f"{target.number}.", file=sys.stderr)


def cmd_rollback(args: argparse.Namespace) -> int:
    root = pin_root(args)
    target = _target(store.revisions(root), args.revision)
    from reconciler.datapath.supervisor import run_dir

    state = snapshot.load(root, target, run_dir(root) / "rollback",
                          engine.capacities(root, requested_capacity(args)))
    planned = engine.plan_state(state, root).plan
    where = f"revision {target.number} ({target.source()})"
    if planned.in_sync:
        print(f"No changes: the kernel holds {where} already.")
        return EXIT_OK
    print(render.plan_text(planned, where, state))
    if not args.yes:
        if not sys.stdin.isatty():
            raise BpfsyncError("rollback asks before it applies, and stdin is not a terminal: "
                               "pass --yes")
        if input(f"Roll back to revision {target.number}? Type 'yes' to go on: ").strip() != "yes":
            print("Nothing applied.")
            return EXIT_ERROR
    _hold_daemon(root, target)
    result = engine.apply_state(state, root, where=where, confirm=confirming.confirm_for(
                                    args, root), allow_empty=True,
                                by=f"rollback to {target.number}")
    print(render.applied_text(result.plan, result.written, result.attached))
    if result.pending is not None:
        return confirming.wait(args, root, result.pending)
    return EXIT_OK


def add(sub: Any) -> None:
    r = sub.add_parser("rollback", help="apply a revision of `bpfsync history` again "
                                        "(default: the one before the last)")
    r.add_argument("revision", nargs="?", type=int, metavar="REVISION")
    r.add_argument("--yes", action="store_true", help="do not ask")
    r.add_argument("--confirm-within", type=seconds, metavar="SECONDS",
                   help="revert the rollback unless `bpfsync confirm` comes within SECONDS")
    r.set_defaults(func=cmd_rollback, probe=None, verify=False)

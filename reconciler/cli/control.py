"""`bpfsync reconcile`, `suspend` and `resume`: the running daemon's verbs, over its
root-only status socket (daemon/gate.py acts on them).

reconcile waits for the reconcile it asked for and exits 0 when it applied or found the
kernel in sync (or held it: suspended, awaiting confirmation), 1 when it failed or the
files are invalid, like `flux reconcile`."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from reconciler.cli.common import EXIT_ERROR, EXIT_OK, pin_root
from reconciler.core.errors import BpfsyncError

GOOD = ("applied", "in-sync", "suspended", "held")


def ask_daemon(root: Path, verb: str) -> dict[str, Any] | None:
    """The answer of the daemon managing root to verb (status or a verb); None: none runs."""
    from reconciler.daemon import status
    from reconciler.datapath.supervisor import run_dir

    try:
        return status.query(run_dir(root), verb)
    except status.DaemonNotRunning:
        return None


def _ask(args: argparse.Namespace, verb: str) -> dict[str, Any]:
    root = pin_root(args)
    answer = ask_daemon(root, verb)
    if answer is None:
        raise BpfsyncError(f"no `bpfsync run` is managing pin root {root}")
    return answer


def _finished(doc: dict[str, Any]) -> int:
    return int(doc["metrics"]["byTrigger"].get("request", 0))


def cmd_reconcile(args: argparse.Namespace) -> int:
    before = _finished(_ask(args, "status"))
    _ask(args, "reconcile")
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        doc = _ask(args, "status")
        if _finished(doc) > before:
            last = doc["lastReconcile"]
            print(f"reconcile {last['result']} ({last['durationMs']} ms)")
            for error in doc["errors"][:20]:
                print(f"  {error}", file=sys.stderr)
            if doc.get("heldOff"):
                print(f"  {doc['heldOff']}")
            return EXIT_OK if last["result"] in GOOD else EXIT_ERROR
        time.sleep(0.1)
    print(f"bpfsync: the reconcile did not finish within {args.timeout:g} s", file=sys.stderr)
    return EXIT_ERROR


def cmd_suspend(args: argparse.Namespace) -> int:
    _ask(args, "suspend")
    print("Suspended: the daemon reports changes and drift but applies nothing until "
          "`bpfsync resume`.")
    return EXIT_OK


def cmd_resume(args: argparse.Namespace) -> int:
    _ask(args, "resume")
    print("Resumed: reconciling now.")
    return EXIT_OK


def add(sub: Any) -> None:
    r = sub.add_parser("reconcile", help="ask the daemon to reconcile now, and wait for it")
    r.add_argument("--timeout", type=float, default=300.0, metavar="SECONDS",
                   help="how long to wait for the reconcile to finish (default 300)")
    r.set_defaults(func=cmd_reconcile)
    s = sub.add_parser("suspend", help="stop the daemon applying changes and correcting "
                                       "drift (both still reported)")
    s.set_defaults(func=cmd_suspend)
    u = sub.add_parser("resume", help="undo suspend, and reconcile at once")
    u.set_defaults(func=cmd_resume)

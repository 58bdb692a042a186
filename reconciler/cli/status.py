"""`bpfsync status`: ask the running daemon (exit 0 in sync, 2 degraded, 1 none)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from reconciler.cli.common import (
    EXIT_CHANGES,
    EXIT_ERROR,
    EXIT_OK,
    pin_root,
    pin_root_named,
)
from reconciler.daemon.statustext import status_text


def cmd_status(args: argparse.Namespace) -> int:
    from reconciler.daemon import status
    from reconciler.datapath.supervisor import run_dir

    root = pin_root(args)
    if not root.is_dir():  # named: a typo, most likely; the default: a host never applied
        what = (f"pin root {root} does not exist" if pin_root_named(args) else
                f"nothing applied on this host yet ({root} does not exist)")
        print(f"bpfsync: {what}: no `bpfsync run` is managing it", file=sys.stderr)
        return EXIT_ERROR
    try:
        doc = status.query(run_dir(pin_root(args)))
    except status.DaemonNotRunning as exc:
        print(f"bpfsync: no `bpfsync run` is managing pin root {pin_root(args)} "
              f"(no daemon at {exc})", file=sys.stderr)
        return EXIT_ERROR
    if args.output == "json":
        print(json.dumps(doc, indent=2))
    else:
        print(status_text(doc))
    # health (a remote not learned yet, a backend down) is shown, not an exit code: those
    # come and go with the network; sync state and a crash-looping data path are ours to fix
    degraded = (doc["errors"] or doc["outOfSync"] or doc["dataPath"].get("crashLoop")
                or doc.get("suspendedSince") or doc.get("heldOff"))
    return EXIT_CHANGES if degraded else EXIT_OK


def add(sub: Any) -> None:
    """The parser of status."""
    st = sub.add_parser("status", help="ask the running daemon how it is doing "
                                       "(exit 0 in sync, 2 degraded, 1 no daemon)")
    st.add_argument("-o", "--output", choices=["text", "json"], default="text")
    st.set_defaults(func=cmd_status)


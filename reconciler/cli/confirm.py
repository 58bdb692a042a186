"""`bpfsync confirm`: keep the change an `apply --confirm-within` made (from any shell: a
new SSH session proves the change left the way in), or revert it now with --revert."""

from __future__ import annotations

import argparse
import time
from typing import Any

from reconciler import engine
from reconciler.cli.common import EXIT_OK, EXIT_REVERTED, pin_root
from reconciler.cli.confirming import print_reverted
from reconciler.confirm.revert import NothingPending, Reverted
from reconciler.core.errors import BpfsyncError


def cmd_confirm(args: argparse.Namespace) -> int:
    root = pin_root(args)
    if not root.is_dir():
        raise BpfsyncError(f"pin root {root} does not exist")
    if args.show:
        record = engine.read_pending(root)
        if record is None:
            print(f"No change awaiting confirmation under {root}.")
        else:
            print(record.describe(time.time()) + ".")
        return EXIT_OK
    if args.revert:
        reverted = engine.revert_pending(root, "reverted by `bpfsync confirm --revert`")
        if reverted is None:
            raise NothingPending(f"no change awaits confirmation under {root}")
        print_reverted(reverted)
        return EXIT_REVERTED
    out = engine.confirm_pending(root, "`bpfsync confirm`")
    if isinstance(out, Reverted):
        print("Too late:")
        print_reverted(out)
        return EXIT_REVERTED
    print(f"Confirmed: the change applied from {out.directory} is kept.")
    return EXIT_OK


def add(sub: Any) -> None:
    c = sub.add_parser("confirm", help="keep (or --revert) a change applied with "
                       "--confirm-within")
    what = c.add_mutually_exclusive_group()
    what.add_argument("--revert", action="store_true",
                      help="revert the pending change now instead of keeping it")
    what.add_argument("--show", action="store_true",
                      help="say whether a change awaits confirmation, and until when")
    c.set_defaults(func=cmd_confirm)

"""`bpfsync apply`: plan and execute."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from reconciler import engine, render
from reconciler.cli import common, confirming
from reconciler.cli.common import (
    EXIT_OK,
    capacities_of,
    load_state,
    pin_root,
    print_problems,
    prune_policy,
    requested_capacity,
)
from reconciler.cli.confirming import print_reverted
from reconciler.cli.progress import close, progress_for
from reconciler.core.errors import BpfsyncError
from reconciler.core.plan import Plan

MAX_CONFIRM_WITHIN = 86400


def cmd_apply(args: argparse.Namespace) -> int:
    """Load (problems printed at once), plan, print the plan, then execute it: the operator
    sees what is about to happen while it happens, with progress on a terminal. With
    --confirm-within, then wait for confirmation (cli/confirming.py)."""
    if (args.probe or args.verify) and args.confirm_within is None:
        raise BpfsyncError("--probe and --verify check a change applied with "
                           "--confirm-within; give it too")
    progress = progress_for()
    try:
        root = pin_root(args)
        state = load_state(Path(args.directory), progress, capacities_of(args, root))
        print_problems(state.warnings)

        def show(plan: Plan) -> None:
            for line in render.notices(plan):
                print(line, file=sys.stderr)
            if not plan.in_sync and not args.quiet:
                print(render.plan_text(plan, args.directory, state, full=args.full))
                print(flush=True)

        confirm = confirming.confirm_for(args, root)
        result = engine.apply_state(state, root, prune_policy(args), args.allow_empty,
                                    where=args.directory, progress=progress, show=show,
                                    confirm=confirm, capacity=requested_capacity(args))
    finally:
        close(progress)
    if result.reverted is not None:
        print("An earlier change was not confirmed in time and was reverted first:",
              file=sys.stderr)
        print_reverted(result.reverted)
    print(render.applied_text(result.plan, result.written, result.attached))
    if result.pending is not None:
        return confirming.wait(args, root, result.pending)
    if confirm is not None:
        print("Nothing to confirm: nothing was written.")
    return EXIT_OK


def seconds(text: str) -> float:
    """--confirm-within's value."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text[:20]!r}") from None
    if not 1 <= value <= MAX_CONFIRM_WITHIN:
        raise argparse.ArgumentTypeError(f"between 1 and {MAX_CONFIRM_WITHIN} seconds")
    return value


def add(sub: Any) -> None:
    """The parser of apply DIR."""
    a = sub.add_parser("apply", help="apply the plan to the kernel")
    a.add_argument("directory")
    a.add_argument("--allow-empty", action="store_true",
                   help="allow a plan that deletes every entry bpfsync manages")
    a.add_argument("--confirm-within", type=seconds, metavar="SECONDS",
                   help="revert the change exactly unless `bpfsync confirm` (or Enter here, "
                        "or --probe) confirms it within SECONDS; exit 3 if reverted")
    a.add_argument("--verify", action="store_true",
                   help="with --confirm-within: read what was written again every second "
                        "while waiting (every apply reads it back once); a difference "
                        "reverts at once")
    a.add_argument("--probe", metavar="CMD",
                   help="with --confirm-within: run CMD (sh -c) every second; its first exit "
                        "0 confirms the change")
    common.prune_flags(a)
    common.full_flag(a)
    a.set_defaults(func=cmd_apply)


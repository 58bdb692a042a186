"""`bpfsync diff`: the plan, without touching anything (exit 0 in sync, 2 changes)."""

from __future__ import annotations

import argparse
import sys
import time
from contextlib import suppress
from pathlib import Path
from typing import Any

from reconciler import engine, render
from reconciler.cli import common
from reconciler.cli.common import (
    EXIT_CHANGES,
    EXIT_ERROR,
    EXIT_OK,
    capacities_of,
    load_state,
    pin_root,
    print_problems,
    prune_policy,
    requested_capacity,
)
from reconciler.cli.progress import close, progress_for
from reconciler.core.errors import BpfsyncError


def cmd_diff(args: argparse.Namespace) -> int:
    progress = progress_for()
    try:
        root = pin_root(args)
        state = load_state(Path(args.directory), progress, capacities_of(args, root))
        result = engine.plan_state(state, root, prune_policy(args), progress,
                                   requested_capacity(args))
    finally:
        close(progress)
    print_problems(result.state.warnings)
    for line in render.notices(result.plan):
        print(line, file=sys.stderr)
    with suppress(BpfsyncError):  # a record that cannot be read is apply's to report
        pending = engine.read_pending(pin_root(args))
        if pending is not None and pending.pending:  # the plan is against the kernel with it
            print(f"note: {pending.describe(time.time())}; an apply is refused until it is "
                  f"confirmed or reverted", file=sys.stderr)
    if args.output == "json":
        print(render.plan_json(result.plan, result.state))
    elif args.quiet:
        print(render.summary_text(result.plan, args.directory))
    else:
        print(render.plan_text(result.plan, args.directory, result.state, full=args.full))
    if result.plan.attachments.conflicts:
        return EXIT_ERROR
    return EXIT_OK if result.plan.in_sync else EXIT_CHANGES


def add(sub: Any) -> None:
    """The parser of diff DIR."""
    d = sub.add_parser("diff", help="show the plan (exit 0 in sync, 2 changes, 1 error)")
    d.add_argument("directory")
    d.add_argument("-o", "--output", choices=["text", "json"], default="text")
    common.prune_flags(d)
    common.full_flag(d)
    d.set_defaults(func=cmd_diff)


"""`bpfsync apply`: plan and execute."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from reconciler import engine, render
from reconciler.cli import common
from reconciler.cli.common import (
    EXIT_OK,
    load_state,
    pin_root,
    print_problems,
    prune_policy,
)
from reconciler.cli.progress import close, progress_for
from reconciler.core.plan import Plan


def cmd_apply(args: argparse.Namespace) -> int:
    """Load (problems printed at once), plan, print the plan, then execute it: the operator
    sees what is about to happen while it happens, with progress on a terminal."""
    progress = progress_for()
    try:
        state = load_state(Path(args.directory), progress)
        print_problems(state.warnings)

        def show(plan: Plan) -> None:
            for line in render.notices(plan):
                print(line, file=sys.stderr)
            if not plan.in_sync and not args.quiet:
                print(render.plan_text(plan, args.directory, state, full=args.full))
                print(flush=True)

        result = engine.apply_state(state, pin_root(args), prune_policy(args), args.allow_empty,
                                    where=args.directory, progress=progress, show=show)
    finally:
        close(progress)
    print(render.applied_text(result.plan, result.written, result.attached))
    return EXIT_OK


def add(sub: Any) -> None:
    """The parser of apply DIR."""
    a = sub.add_parser("apply", help="apply the plan to the kernel")
    a.add_argument("directory")
    a.add_argument("--allow-empty", action="store_true",
                   help="allow a plan that deletes every entry bpfsync manages")
    common.prune_flags(a)
    common.full_flag(a)
    a.set_defaults(func=cmd_apply)


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
    pin_root,
    print_problems,
    prune_policy,
)


def cmd_apply(args: argparse.Namespace) -> int:
    result = engine.apply(Path(args.directory), pin_root(args), prune_policy(args), args.allow_empty)
    print_problems(result.state.warnings)
    for line in render.notices(result.plan):
        print(line, file=sys.stderr)
    if not result.plan.in_sync and not args.quiet:
        print(render.plan_text(result.plan, args.directory, result.state))
        print()
    print(render.applied_text(result.plan, result.written, result.attached))
    return EXIT_OK


def add(sub: Any) -> None:
    """The parser of apply DIR."""
    a = sub.add_parser("apply", help="apply the plan to the kernel")
    a.add_argument("directory")
    a.add_argument("--allow-empty", action="store_true",
                   help="allow a plan that deletes every entry bpfsync manages")
    common.prune_flags(a)
    a.set_defaults(func=cmd_apply)


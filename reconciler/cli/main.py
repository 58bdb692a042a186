"""`bpfsync`: the command line, one module per subcommand (validate, diff, apply, get, run and
datapath, status).

Exit codes: validate 0 valid / 1 invalid; diff 0 in sync / 2 changes pending / 1 error
(Terraform's -detailed-exitcode); apply, get and destroy 0 / 1; status 0 healthy / 2 degraded /
1 no daemon; apply --confirm-within and confirm 3 when the change was reverted; reconcile 0
applied or in sync / 1 failed;
a usage error 1, never 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from reconciler.cli import (
    apply,
    completion,
    confirm,
    control,
    destroy,
    diff,
    explain,
    get,
    history,
    rollback,
    run,
    status,
    validate,
)
from reconciler.cli.common import (
    EXIT_ERROR,
    EXIT_OK,
    GLOBAL_DEFAULTS,
    Parser,
    Subcommands,
    global_options,
    print_problems,
)
from reconciler.core.errors import BpfsyncError, InvalidDesiredState, Severity
from reconciler.version import version

SUBCOMMANDS = (validate, diff, apply, confirm, history, rollback, run, status, control,
               get, destroy, explain, completion)


def parser() -> argparse.ArgumentParser:
    options = global_options()
    p = Parser(prog="bpfsync", parents=[options],
               description="Declarative control plane for eBPF proxy and tunnel data paths.")
    p.add_argument("--version", action="version", version=f"bpfsync {version()}")
    sub = Subcommands(p.add_subparsers(dest="command", required=True, metavar="COMMAND"),
                      [options])
    for module in SUBCOMMANDS:
        module.add(sub)
    return p


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The arguments, with the global options given nowhere set to their defaults."""
    args = parser().parse_args(argv)
    for name, default in GLOBAL_DEFAULTS.items():
        if not hasattr(args, name):
            setattr(args, name, default)
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse(argv)
    if args.command != "run":  # the daemon sets its logging up itself (--log-level)
        from reconciler.daemon import logs

        logs.setup(args.log_format, "debug" if args.verbose else "warning")
    try:
        code = args.func(args)
    except InvalidDesiredState as exc:
        print_problems(exc.problems)
        errors = sum(1 for p in exc.problems if p.severity is Severity.ERROR)
        print(f"{args.directory}: invalid ({errors} error{'s' if errors != 1 else ''}); "
              f"nothing applied", file=sys.stderr)
        code = EXIT_ERROR
    except BpfsyncError as exc:
        print(f"bpfsync: {exc}", file=sys.stderr)
        code = EXIT_ERROR
    except BrokenPipeError:  # `bpfsync get ... | head`: the reader is gone, not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = EXIT_OK
    except PermissionError as exc:
        print(f"bpfsync: {exc} (bpfsync needs root or CAP_BPF)", file=sys.stderr)
        code = EXIT_ERROR
    except OSError as exc:
        print(f"bpfsync: {exc}", file=sys.stderr)
        code = EXIT_ERROR
    sys.exit(code)


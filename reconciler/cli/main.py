"""`bpfsync`: the command line, one module per subcommand (validate, diff, apply, get, run and
datapath, status).

Exit codes: validate 0 valid / 1 invalid; diff 0 in sync / 2 changes pending / 1 error
(Terraform's -detailed-exitcode); apply and get 0 / 1; status 0 healthy / 2 degraded / 1 no daemon.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from reconciler.cli import apply, diff, get, run, status, validate
from reconciler.cli.common import EXIT_ERROR, EXIT_OK, print_problems
from reconciler.core.errors import BpfsyncError, InvalidDesiredState, Severity
from reconciler.kernel.maps import DEFAULT_PIN_ROOT

SUBCOMMANDS = (validate, diff, apply, run, status, get)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bpfsync",
        description="Declarative control plane for eBPF proxy and tunnel data paths.")
    p.add_argument("--pin-root", help=f"bpffs directory of bpfsync's pins (env BPFSYNC_PIN_ROOT, "
                                      f"default {DEFAULT_PIN_ROOT})")
    sub = p.add_subparsers(dest="command", required=True)
    for module in SUBCOMMANDS:
        module.add(sub)
    return p


def main(argv: Sequence[str] | None = None) -> None:
    args = parser().parse_args(argv)
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


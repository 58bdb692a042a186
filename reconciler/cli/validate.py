"""`bpfsync validate`: directories, or one file in the context of a directory."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from reconciler import engine
from reconciler.cli.common import (
    EXIT_ERROR,
    EXIT_OK,
    counts,
    directories,
    pin_root,
    print_problems,
)
from reconciler.core.errors import BpfsyncError, InvalidDesiredState, Severity
from reconciler.load.candidate import check_candidate
from reconciler.load.directory import load_directory


def _validate_directory(directory: Path, args: argparse.Namespace) -> bool:
    try:
        state = load_directory(directory, read_keys=not args.no_secrets)
    except InvalidDesiredState as exc:
        print_problems(exc.problems)
        n = sum(1 for p in exc.problems if p.severity is Severity.ERROR)
        print(f"{directory}: invalid ({n} error{'s' if n != 1 else ''})", file=sys.stderr)
        return False
    print_problems(state.warnings)
    if os.geteuid() == 0:  # TC hooks declared on devices of this host: MTU warnings
        try:
            for w in engine.host_warnings(state, pin_root(args)):
                print(f"warning: on this host: {w}", file=sys.stderr)
        except (OSError, BpfsyncError):
            pass  # validation never depends on this host's devices
    print(f"{directory}: valid ({counts(state)})")
    return True


def _validate_candidate(args: argparse.Namespace) -> int:
    if len(args.paths) != 1:
        raise BpfsyncError("validate --in DIR takes exactly one FILE (the candidate)")
    directory, candidate = Path(args.within), Path(args.paths[0])
    if not directory.is_dir():
        raise BpfsyncError(f"--in {directory}: not a directory")
    result = check_candidate(directory, candidate, args.as_name, read_keys=not args.no_secrets)
    print_problems(result.warnings)
    print_problems(result.errors)
    where = (f"{candidate} as {result.destination}" if result.destination
             and str(result.destination) != str(candidate) else str(candidate))
    if result.guessed:
        print(f"note: {candidate} is checked in place of {result.destination}, which declares "
              f"the same resources (--as NAME says which file it becomes)", file=sys.stderr)
    if result.errors:
        n = len(result.errors)
        print(f"{where}: invalid in {directory} ({n} error{'s' if n != 1 else ''}); "
              f"it must not be put there", file=sys.stderr)
        return EXIT_ERROR
    if result.existing:
        n = len(result.existing)
        print(f"note: {directory} has {n} error{'s' if n != 1 else ''} of its own, not caused "
              f"by {candidate} (nothing is applied until they are fixed):", file=sys.stderr)
        print_problems(result.existing)
        print(f"{where}: valid in {directory} (the directory is not)")
        return EXIT_OK
    assert result.state is not None
    verb = "replacing" if result.replaces else "adding"
    print(f"{where}: valid in {directory}, {verb} it ({counts(result.state)})")
    return EXIT_OK


def cmd_validate(args: argparse.Namespace) -> int:
    if args.within:
        return _validate_candidate(args)
    if args.as_name:
        raise BpfsyncError("--as needs --in DIR")
    ok = [_validate_directory(d, args) for d in directories(args.paths)]
    return EXIT_OK if all(ok) else EXIT_ERROR


def add(sub: Any) -> None:
    """The parser of validate DIR... and validate --in DIR FILE."""
    v = sub.add_parser(
        "validate", help="check desired-state directories, or one file in the context of a "
                         "directory before it is put there (exit 0 valid, 1 not)",
        description="validate DIR...: check each directory (glob patterns are expanded). "
                    "validate --in DIR FILE: check FILE as part of DIR (cross-references, "
                    "duplicates), in place of the file it will become, e.g. Ansible's "
                    "`validate: 'bpfsync validate --in /etc/bpfsync/desired.d --as x.yaml %s'`.")
    v.add_argument("paths", nargs="+", metavar="PATH", help="directories, or with --in one file")
    v.add_argument("--in", dest="within", metavar="DIR",
                   help="check the one FILE given as part of this directory")
    v.add_argument("--as", dest="as_name", metavar="NAME",
                   help="with --in: the file (relative to DIR) that FILE will become; without "
                        "it, the file declaring the same resources, else a new file")
    v.add_argument("--no-secrets", action="store_true",
                   help="do not read keyFrom files and environment variables (CI, laptops, "
                        "commit hooks: where the hosts' secrets are not)")
    v.set_defaults(func=cmd_validate)


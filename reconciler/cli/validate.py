"""`bpfsync validate`: directories, or one file in the context of a directory."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from contextlib import suppress
from pathlib import Path
from typing import Any

from reconciler import engine
from reconciler.cli.common import (
    EXIT_ERROR,
    EXIT_OK,
    capacities_of,
    counts,
    directories,
    fresh_capacities,
    pin_root,
    print_problems,
)
from reconciler.cli.progress import close, progress_for
from reconciler.core import registry
from reconciler.core.capacity import Capacities, CapacityConflict
from reconciler.core.errors import BpfsyncError, InvalidDesiredState, Problem, Severity
from reconciler.core.progress import QUIET
from reconciler.core.state import DesiredState
from reconciler.load.candidate import check_candidate
from reconciler.load.directory import load_directory


class Report:
    """What validate says, as text (problems on stderr, one line per path on stdout) or, with
    -o json, as one document on stdout (problems as objects, for CI and editors)."""

    def __init__(self, json_out: bool) -> None:
        self.json_out = json_out
        self.results: list[dict[str, Any]] = []

    def problems(self, problems: Sequence[Problem]) -> list[dict[str, object]]:
        if not self.json_out:
            print_problems(problems)
        return [p.to_json() for p in problems]

    def line(self, text: str, error: bool = False) -> None:
        if not self.json_out:
            print(text, file=sys.stderr if error else sys.stdout)

    def finish(self) -> int:
        ok = all(r["valid"] for r in self.results)
        if self.json_out:
            print(json.dumps({"formatVersion": 1, "valid": ok, "results": self.results},
                             indent=2))
        return EXIT_OK if ok else EXIT_ERROR


def _kinds(state: DesiredState) -> dict[str, int]:
    return {k: state.count(k) for k in registry.KINDS if state.count(k)}


def _capacities(args: argparse.Namespace) -> Capacities:
    """The pin root's capacities where it can be read (validate needs no BPF filesystem):
    --capacity and the defaults otherwise. Asking to resize existing tables is an error."""
    try:
        return capacities_of(args, pin_root(args))
    except CapacityConflict:
        raise
    except (BpfsyncError, OSError):  # not on bpffs, not readable: not this host's
        return fresh_capacities(args)


def _validate_directory(directory: Path, args: argparse.Namespace, out: Report) -> None:
    progress = progress_for() if not out.json_out else QUIET
    try:
        state = load_directory(directory, read_keys=not args.no_secrets, progress=progress,
                               capacities=_capacities(args))
    except InvalidDesiredState as exc:
        found = out.problems(exc.problems)
        n = sum(1 for p in exc.problems if p.severity is Severity.ERROR)
        out.line(f"{directory}: invalid ({n} error{'s' if n != 1 else ''})", error=True)
        out.results.append({"path": str(directory), "valid": False, "problems": found})
        return
    finally:
        close(progress)
    found = out.problems(state.warnings)
    host: list[str] = []
    if os.geteuid() == 0:  # TC hooks declared on devices of this host: MTU warnings
        # validation never depends on this host's devices
        with suppress(OSError, BpfsyncError):
            host = [str(w) for w in engine.host_warnings(state, pin_root(args))]
    for w in host:
        out.line(f"warning: on this host: {w}", error=True)
    out.line(f"{directory}: valid ({counts(state)})")
    out.results.append({"path": str(directory), "valid": True, "resources": _kinds(state),
                        "files": state.files, "problems": found, "hostWarnings": host})


def _validate_candidate(args: argparse.Namespace, out: Report) -> None:
    if len(args.paths) != 1:
        raise BpfsyncError("validate --in DIR takes exactly one FILE (the candidate)")
    directory, candidate = Path(args.within), Path(args.paths[0])
    if not directory.is_dir():
        raise BpfsyncError(f"--in {directory}: not a directory")
    result = check_candidate(directory, candidate, args.as_name, read_keys=not args.no_secrets,
                             capacities=_capacities(args))
    found = out.problems([*result.warnings, *result.errors])
    where = (f"{candidate} as {result.destination}" if result.destination
             and str(result.destination) != str(candidate) else str(candidate))
    doc: dict[str, Any] = {"path": str(candidate), "in": str(directory),
                           "as": str(result.destination) if result.destination else None,
                           "valid": not result.errors, "problems": found}
    out.results.append(doc)
    if result.guessed:
        out.line(f"note: {candidate} is checked in place of {result.destination}, which "
                 f"declares the same resources (--as NAME says which file it becomes)", True)
    if result.errors:
        n = len(result.errors)
        out.line(f"{where}: invalid in {directory} ({n} error{'s' if n != 1 else ''}); "
                 f"it must not be put there", error=True)
        return
    if result.existing:
        n = len(result.existing)
        out.line(f"note: {directory} has {n} error{'s' if n != 1 else ''} of its own, not "
                 f"caused by {candidate} (nothing is applied until they are fixed):", True)
        doc["directoryProblems"] = out.problems(result.existing)
        out.line(f"{where}: valid in {directory} (the directory is not)")
        return
    assert result.state is not None
    doc["resources"] = _kinds(result.state)
    verb = "replacing" if result.replaces else "adding"
    out.line(f"{where}: valid in {directory}, {verb} it ({counts(result.state)})")


def cmd_validate(args: argparse.Namespace) -> int:
    out = Report(args.output == "json")
    if args.within:
        _validate_candidate(args, out)
    elif args.as_name:
        raise BpfsyncError("--as needs --in DIR")
    else:
        for d in directories(args.paths):
            _validate_directory(d, args, out)
    return out.finish()


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
    v.add_argument("-o", "--output", choices=["text", "json"], default="text",
                   help="json: one document on stdout, every problem with its file, line, "
                        "column, kind, name, path, message and severity")
    v.set_defaults(func=cmd_validate)


"""What the subcommands share: exit codes, the pin root, output helpers."""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import yaml

from reconciler.core import capacity, registry
from reconciler.core.capacity import Capacities
from reconciler.core.errors import BpfsyncError, Problem
from reconciler.core.plan import PrunePolicy
from reconciler.core.progress import Progress
from reconciler.core.state import DesiredState
from reconciler.kernel.maps import DEFAULT_PIN_ROOT
from reconciler.load.directory import load_directory
from reconciler.render import columns

EXIT_OK, EXIT_ERROR, EXIT_CHANGES = 0, 1, 2
EXIT_REVERTED = 3  # apply --confirm-within / confirm: applied, then reverted (not confirmed)
# A usage error (a mistyped flag, an unknown -o value) is an error like any other: never
# argparse's own 2, which diff answers for "changes pending" and status for "degraded".
EXIT_USAGE = EXIT_ERROR
# Options that work before or after the subcommand (as kubectl's flags do), with their
# defaults when given nowhere.
GLOBAL_DEFAULTS: dict[str, Any] = {"pin_root": None, "quiet": False, "verbose": False,
                                   "log_format": "text", "capacity": None}


class Parser(argparse.ArgumentParser):
    """argparse, with usage errors exiting EXIT_USAGE."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def global_options() -> argparse.ArgumentParser:
    """The options every subcommand takes, before or after its name: a parent parser whose
    defaults are suppressed, so that a value given before the subcommand is not overwritten
    by the subcommand's default (GLOBAL_DEFAULTS fills what was given nowhere)."""
    g = argparse.ArgumentParser(add_help=False)
    g.add_argument("--pin-root", default=argparse.SUPPRESS,
                   help=f"bpffs directory of bpfsync's pins (env BPFSYNC_PIN_ROOT, default "
                        f"{DEFAULT_PIN_ROOT})")
    g.add_argument("--capacity", default=argparse.SUPPRESS, metavar="GROUP=N[,...]",
                   help="table capacities of a new pin root, e.g. services=1048576,"
                        "tunnels=131072 (env BPFSYNC_CAPACITY; default services=131072, "
                        "tunnels=65536): chosen by the apply that creates the tables, read "
                        "from them afterwards")
    g.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                   help="apply, diff: print only the summary line (and problems)")
    g.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                   help="log debug messages (to stderr)")
    g.add_argument("--log-format", choices=["text", "json"], default=argparse.SUPPRESS,
                   help="how log messages are written to stderr (default text)")
    return g


class Subcommands:
    """The subparsers action, handing every subcommand the global options."""

    def __init__(self, action: Any, parents: list[argparse.ArgumentParser]) -> None:
        self.action, self.parents = action, parents

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = self.action.add_parser(
            name, parents=self.parents, **kwargs)
        return parser


def print_problems(problems: Sequence[Problem]) -> None:
    for p in problems:
        print(p, file=sys.stderr)


def pin_root(args: argparse.Namespace) -> Path:
    """The pin root as its real path: /sys/fs/bpf/x/../y and a symlink to it are one pin
    root, with one lock and one run directory."""
    given = args.pin_root or os.environ.get("BPFSYNC_PIN_ROOT") or DEFAULT_PIN_ROOT
    return Path(os.path.realpath(given))


def pin_root_named(args: argparse.Namespace) -> bool:
    """The pin root was named (--pin-root, BPFSYNC_PIN_ROOT), not the default."""
    return bool(args.pin_root or os.environ.get("BPFSYNC_PIN_ROOT"))


def applied_pin_root(args: argparse.Namespace) -> Path | None:
    """The pin root, which must exist: None when it is the default one and does not exist
    (nothing was ever applied on this host: the caller says so); a BpfsyncError when it was
    named (--pin-root, BPFSYNC_PIN_ROOT) and does not exist — a typo, not an empty host."""
    root = pin_root(args)
    if root.is_dir():
        return root
    if pin_root_named(args):
        raise BpfsyncError(f"pin root {root} does not exist")
    return None


def prune_policy(args: argparse.Namespace) -> PrunePolicy:
    return PrunePolicy(enabled=not args.no_prune, keep_kinds=frozenset(args.keep or ()))


def counts(state: DesiredState) -> str:
    counts = [f"{state.count(kind.name)} {kind.plural}" for kind in registry.KINDS.values()
              if state.count(kind.name)]
    return f"{', '.join(counts) or 'no resources'} in {state.files} files"


def directories(patterns: Sequence[str]) -> list[Path]:
    """Arguments as given, glob patterns expanded (pre-commit and Ansible run no shell)."""
    out: list[Path] = []
    for pattern in patterns:
        if not glob.has_magic(pattern):
            out.append(Path(pattern))
            continue
        found = sorted(Path(p) for p in glob.glob(pattern) if Path(p).is_dir())
        if not found:
            raise BpfsyncError(f"{pattern}: no directory matches")
        out += found
    return out


def emit(args: argparse.Namespace, data: Any, empty: str,
          rows: Callable[[], list[tuple[str, ...]]]) -> int:
    """Print data as JSON, YAML, or (default, and wide) columns; `empty` when there is
    nothing."""
    if args.output == "json":
        print(json.dumps(data, indent=2))
    elif args.output == "yaml":
        print(yaml.safe_dump(data, sort_keys=False), end="")
    elif not data:
        print(empty)
    else:
        print(columns(rows()))
    return EXIT_OK


def prune_flags(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--no-prune", action="store_true",
                    help="never delete entries that are no longer in YAML")
    sp.add_argument("--keep", action="append", choices=registry.ENTRY_KINDS,
                    metavar="KIND", help="do not prune entries of this kind (repeatable)")


def full_flag(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--full", action="store_true",
                    help="print every line of a long plan (one of more than 50 resources is "
                         "summarised per kind)")


def requested_capacity(args: argparse.Namespace) -> dict[str, int]:
    """--capacity (or $BPFSYNC_CAPACITY) as {group: entries}; BpfsyncError when malformed."""
    text = args.capacity or os.environ.get("BPFSYNC_CAPACITY", "")
    return capacity.parse(text, registry.CAPACITY_GROUPS)


def capacities_of(args: argparse.Namespace, root: Path) -> Capacities:
    """The capacities the pin root's tables have, or will have when the first apply creates
    them with --capacity; CapacityConflict when --capacity asks to resize existing ones."""
    from reconciler import engine

    if not root.exists():
        return fresh_capacities(args)
    return engine.capacities(root, requested_capacity(args))


def fresh_capacities(args: argparse.Namespace) -> Capacities:
    """The capacities a new pin root gets: --capacity, else the defaults."""
    return capacity.settle(registry.default_capacities().sizes, requested_capacity(args), {})


def load_state(directory: Path, progress: Progress,
               capacities: Capacities | None = None) -> DesiredState:
    """The desired state of directory, with the git revision it is at (recorded in the names
    table beside each resource that an apply writes)."""
    from reconciler.daemon import gitrev

    state = load_directory(directory, progress=progress, capacities=capacities)
    revision = gitrev.revision(directory)
    state.revision = revision.full if revision else None
    return state

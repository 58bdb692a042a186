"""What the subcommands share: exit codes, the pin root, output helpers."""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from reconciler.core import registry
from reconciler.core.errors import BpfsyncError, Problem
from reconciler.core.plan import PrunePolicy
from reconciler.core.state import DesiredState
from reconciler.kernel.maps import DEFAULT_PIN_ROOT
from reconciler.render import columns

EXIT_OK, EXIT_ERROR, EXIT_CHANGES = 0, 1, 2


def print_problems(problems: Sequence[Problem]) -> None:
    for p in problems:
        print(p, file=sys.stderr)


def pin_root(args: argparse.Namespace) -> Path:
    """The pin root as its real path: /sys/fs/bpf/x/../y and a symlink to it are one pin
    root, with one lock and one run directory."""
    given = args.pin_root or os.environ.get("BPFSYNC_PIN_ROOT") or DEFAULT_PIN_ROOT
    return Path(os.path.realpath(given))


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
    """Print data as JSON, YAML, or (default) columns; `empty` when there is nothing."""
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


"""`bpfsync destroy`: undo everything bpfsync made for a pin root, after showing the plan
and asking (or --yes). Foreign objects stay: pins, filters, rules bpfsync did not make."""

from __future__ import annotations

import argparse
import shutil
import sys
from contextlib import suppress
from dataclasses import replace
from pathlib import Path
from typing import Any

from reconciler import engine, render
from reconciler.cli.common import EXIT_ERROR, EXIT_OK, pin_root
from reconciler.core import registry
from reconciler.core.errors import BpfsyncError
from reconciler.core.state import DesiredState


def _refuse_while_running(root: Path) -> None:
    from reconciler.daemon.record import daemon_running
    from reconciler.datapath.supervisor import read_datapath_status, run_dir

    if daemon_running(run_dir(root)):
        raise BpfsyncError(f"a `bpfsync run` manages {root}: stop it first (e.g. systemctl "
                           f"stop bpfsync), or it would apply everything again")
    report = read_datapath_status(root)
    if report is not None:
        raise BpfsyncError(f"the data path of {root} is running (worker pid "
                           f"{report.get('pid', '?')}): stop it first")


def _confirmed(args: argparse.Namespace, root: Path) -> bool:
    if args.yes:
        return True
    if not sys.stdin.isatty():
        raise BpfsyncError("destroy asks before it removes anything, and stdin is not a "
                           "terminal: pass --yes")
    answer = input(f"Destroy everything bpfsync made for {root}? Type 'yes' to go on: ")
    return answer.strip() == "yes"


def cmd_destroy(args: argparse.Namespace) -> int:
    from reconciler.datapath.supervisor import run_dir

    root = pin_root(args)
    if not root.is_dir():
        print(f"Nothing to destroy: {root} does not exist.")
        return EXIT_OK
    _refuse_while_running(root)
    planned = engine.plan_state(DesiredState(), root).plan
    pins = sorted(p.name for p in (root / "maps").glob("*")
                  if p.name in registry.BY_NAME) if (root / "maps").is_dir() else []
    if planned.in_sync and not pins:
        print(f"Nothing of bpfsync's is left in {root}.")
        return EXIT_OK
    if not planned.in_sync:  # every line's reason is the destroy, not "no longer in YAML"
        planned.operations = [replace(op, reason="destroy") for op in planned.operations]
        planned.attachments.steps = [replace(s, reason="destroy")
                                     for s in planned.attachments.steps]
        print(render.plan_text(planned, "nothing"))
    print(f"Then unpinned: {len(pins)} maps of {root}/maps, and the directories and the data "
          f"path's cgroup bpfsync made, when nothing else is in them.")
    if not _confirmed(args, root):
        print("Nothing destroyed.")
        return EXIT_ERROR
    result, removed = engine.destroy(root)
    with suppress(FileNotFoundError):
        shutil.rmtree(run_dir(root))  # the daemon's and data path's files: not running
    print(render.applied_text(result.plan, result.written, result.attached))
    left = sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []
    print(f"Removed {len(removed)} pins, directories and cgroups"
          + (f"; {root} is gone." if not root.exists() else
             f"; left in {root} (not bpfsync's): {', '.join(left[:10])}"
             + (f" and {len(left) - 10} more" if len(left) > 10 else "")))
    return EXIT_OK


def add(sub: Any) -> None:
    """The parser of destroy."""
    d = sub.add_parser(
        "destroy", help="remove every entry, attachment, link, plumbing and pin bpfsync made "
                        "for the pin root, after showing the plan (exit 0 done, 1 refused)",
        description="Shows the plan (every entry deleted, every program detached, host "
                    "plumbing reverted exactly), asks, executes it, then unpins bpfsync's maps "
                    "and removes the directories and cgroup it made. Anything bpfsync did not "
                    "make stays. Refused while `bpfsync run` or the data path runs.")
    d.add_argument("--yes", action="store_true", help="do not ask (scripts)")
    d.set_defaults(func=cmd_destroy)

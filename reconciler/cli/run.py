"""`bpfsync run` (the daemon) and `bpfsync datapath` (the data path it supervises)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from reconciler.cli import common
from reconciler.cli.apply import seconds
from reconciler.cli.common import (
    pin_root,
    prune_policy,
    requested_capacity,
)
from reconciler.core.drift import ENFORCE, POLICIES
from reconciler.core.errors import BpfsyncError


def workers(text: str) -> int:
    """--workers N: 1 .. 64 worker processes."""
    from reconciler.datapath.shared import MAX_WORKERS

    if not text.isdigit() or not 1 <= int(text) <= MAX_WORKERS:
        raise argparse.ArgumentTypeError(f"expected a number of workers from 1 to "
                                         f"{MAX_WORKERS}, not {text!r}")
    return int(text)


def cmd_datapath(args: argparse.Namespace) -> int:
    from reconciler.daemon import logs
    from reconciler.datapath import standby
    from reconciler.datapath import worker as datapath

    logs.setup(os.environ.get("BPFSYNC_LOG_FORMAT", "text"))
    try:
        join = standby.join_load(os.environ.get(standby.ENV))
    except ValueError as exc:
        raise BpfsyncError(str(exc)) from None
    if args.worker:
        return datapath.run_worker(pin_root(args), args.control_fd, args.generation,
                                   args.netns, args.worker_index, args.workers or 1,
                                   Path(args.shared) if args.shared else None, join)
    return datapath.run(pin_root(args), args.netns, args.workers)


def cmd_run(args: argparse.Namespace) -> int:
    from reconciler.daemon import logs
    from reconciler.daemon.record import DaemonConfig
    from reconciler.daemon.service import Daemon

    logs.setup(args.log_format, "debug" if args.verbose else args.log_level)
    if args.log_format == "json":  # the data-path processes log the same way
        os.environ["BPFSYNC_LOG_FORMAT"] = "json"
    if args.pull is not None and not args.pull > 0:
        raise BpfsyncError(f"--pull {args.pull:g}: expected a number of seconds > 0")
    if args.metrics and not args.metrics.rpartition(":")[2].isdigit():
        raise BpfsyncError(f"--metrics {args.metrics!r}: expected [ADDRESS]:PORT")
    config = DaemonConfig(Path(args.directory).absolute(), pin_root(args), args.resync,
                          args.drift, args.debounce, args.max_delay, prune_policy(args),
                          args.allow_empty, not args.no_datapath, args.datapath_netns,
                          args.metrics, pull=args.pull, confirm_within=args.confirm_within,
                          datapath_workers=args.datapath_workers,
                          capacity=requested_capacity(args))
    return Daemon(config).run()


def add(sub: Any) -> None:
    """The parser of run DIR and datapath."""
    dp = sub.add_parser("datapath", help="run the data path (proxies, GUE pings): a supervisor "
                                         "holding the listeners and a worker it restarts")
    dp.add_argument("--netns", help="named network namespace to run in")
    dp.add_argument("--workers", type=workers, metavar="N",
                    help="worker processes accepting connections (default: one per CPU)")
    dp.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    dp.add_argument("--worker-index", type=int, default=0, help=argparse.SUPPRESS)
    dp.add_argument("--shared", help=argparse.SUPPRESS)
    dp.add_argument("--control-fd", type=int, help=argparse.SUPPRESS)
    dp.add_argument("--generation", type=int, default=0, help=argparse.SUPPRESS)
    dp.set_defaults(func=cmd_datapath)


    r = sub.add_parser("run", help="watch a directory and keep the kernel in sync with it, "
                                   "supervising the data path (the daemon)")
    r.add_argument("directory")
    r.add_argument("--resync", type=float, default=60.0, metavar="SECONDS",
                   help="reconcile at least this often, to find drift (default 60)")
    r.add_argument("--drift", choices=POLICIES, default=ENFORCE,
                   help="what to do with changes made behind bpfsync's back (default enforce); "
                        "a resource's bpfsync.dev/drift annotation overrides it")
    r.add_argument("--debounce", type=float, default=0.1, metavar="SECONDS",
                   help="quiet time after the last file event before reconciling (0.1)")
    r.add_argument("--max-delay", type=float, default=1.0, metavar="SECONDS",
                   help="reconcile at the latest this long after the first event (1.0)")
    r.add_argument("--allow-empty", action="store_true",
                   help="allow a plan that deletes every entry bpfsync manages")
    r.add_argument("--no-datapath", action="store_true",
                   help="do not run the data path (proxies, GUE pings)")
    r.add_argument("--datapath-netns", metavar="NAME",
                   help="netns of the data path (default: the Proxies', or the Interfaces' "
                        "when they share one)")
    r.add_argument("--datapath-workers", type=workers, metavar="N",
                   help="the data path's worker processes (default: one per CPU)")
    r.add_argument("--confirm-within", type=seconds, metavar="SECONDS",
                   help="revert each change from the files or a commit exactly unless "
                        "`bpfsync confirm` confirms it within SECONDS")
    r.add_argument("--metrics", metavar="[ADDR]:PORT",
                   help="serve Prometheus metrics (off by default; ADDR defaults to 127.0.0.1)")
    r.add_argument("--pull", type=float, metavar="SECONDS",
                   help="DIRECTORY is in a git clone: fetch its upstream branch this often, "
                        "fast-forward, and apply only committed content")
    r.add_argument("--log-level", choices=["debug", "info", "warning", "error"],
                   default="info", help="(default info; -v: debug)")
    common.prune_flags(r)
    r.set_defaults(func=cmd_run)


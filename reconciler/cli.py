"""`bpfsync` command line: validate, diff, apply, get.

Exit codes: validate 0 valid / 1 invalid; diff 0 in sync / 2 changes pending / 1 error
(Terraform's -detailed-exitcode); apply and get 0 / 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from reconciler import engine, inventory, render
from reconciler import tables as t
from reconciler.errors import BpfsyncError, InvalidDesiredState, Problem, Severity
from reconciler.kernel.maps import DEFAULT_PIN_ROOT
from reconciler.load import load_directory
from reconciler.plan import PrunePolicy, proxy_names

EXIT_OK, EXIT_ERROR, EXIT_CHANGES = 0, 1, 2
STATUS_FRESH = 5.0  # seconds; an older data-path report means it is not running


def _print_problems(problems: Sequence[Problem], stream=sys.stderr) -> None:
    for p in problems:
        print(p, file=stream)


def _pin_root(args: argparse.Namespace) -> Path:
    return Path(args.pin_root or os.environ.get("BPFSYNC_PIN_ROOT") or DEFAULT_PIN_ROOT)


def _prune(args: argparse.Namespace) -> PrunePolicy:
    return PrunePolicy(enabled=not args.no_prune, keep_kinds=frozenset(args.keep or ()))


def cmd_validate(args: argparse.Namespace) -> int:
    state = load_directory(Path(args.directory))
    _print_problems(state.warnings)
    if state.interfaces and os.geteuid() == 0:
        try:
            for w in engine.host_warnings(state, _pin_root(args)):
                print(f"warning: on this host: {w}", file=sys.stderr)
        except (OSError, BpfsyncError):
            pass  # validation never depends on this host's devices
    counts = [f"{len(state.tunnels)} tunnels", f"{len(state.services)} services",
              f"{len(state.interfaces)} interfaces"]
    if state.proxies:
        counts.append(f"{len(state.proxies)} proxies")
    print(f"{args.directory}: valid ({', '.join(counts)} in {state.files} files)")
    return EXIT_OK


def cmd_diff(args: argparse.Namespace) -> int:
    result = engine.diff(Path(args.directory), _pin_root(args), _prune(args))
    _print_problems(result.state.warnings)
    for line in render.notices(result.plan):
        print(line, file=sys.stderr)
    if args.output == "json":
        print(render.plan_json(result.plan, result.state))
    else:
        print(render.plan_text(result.plan, args.directory, result.state))
    if result.plan.attachments.conflicts:
        return EXIT_ERROR
    return EXIT_OK if result.plan.in_sync else EXIT_CHANGES


def cmd_apply(args: argparse.Namespace) -> int:
    result = engine.apply(Path(args.directory), _pin_root(args), _prune(args), args.allow_empty)
    _print_problems(result.state.warnings)
    for line in render.notices(result.plan):
        print(line, file=sys.stderr)
    if not result.plan.in_sync and not args.quiet:
        print(render.plan_text(result.plan, args.directory, result.state))
        print()
    print(render.applied_text(result.plan, result.written, result.attached))
    return EXIT_OK


def _table(docs: list[dict]) -> str:
    rows: list[tuple[str, ...]] = [
        ("KIND", "NAME", "ID", "LOCAL/PROXY", "REMOTE/BACKEND", "TUNNEL", "STATUS")]
    for d in docs:
        s, st = d["spec"], d.get("status", {})
        if d["kind"] == "Tunnel":
            remote = s["remote"]
            if remote == "learn":
                learned = st.get("learned")
                remote = (f"learn → {learned['address']}:{learned['port']} "
                          f"({learned['ageSeconds']}s ago)" if learned else "learn (not yet)")
            else:
                remote = f"{remote['address']}:{remote['port']}"
            rows.append(("Tunnel", d["metadata"]["name"], str(s["id"]),
                         f"{s['local']['address']}:{s['local']['port']}", remote, "",
                         "" if st.get("managed", True) else "not written by bpfsync"))
        else:
            proxy = s.get("proxy")
            backend = s.get("backend")
            notes = [n for n, bad in (("no verify entry", not st.get("verifyEntry", True)),
                                      ("keys differ", st.get("verifyEntry") and
                                       not st.get("keysAgree", True)),
                                      ("not written by bpfsync", not st.get("managed", True)))
                     if bad]
            rows.append(("Service", d["metadata"]["name"], f"{s['groupId']}/{s['serviceId']}",
                         f"{proxy['address']}:{proxy['port']}/{s['protocol']}" if proxy else "-",
                         f"{backend['address']}:{backend['port']}" if backend else "-",
                         s.get("tunnel", "-"), ", ".join(notes)))
    return _columns(rows)


def _columns(rows: list[tuple[str, ...]]) -> str:
    """Rows as left-aligned columns, two spaces apart (the first row is the header)."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in rows)


def _emit(args: argparse.Namespace, data: Any, empty: str,
          rows: Callable[[], list[tuple[str, ...]]]) -> int:
    """Print data as JSON, YAML, or (default) columns; `empty` when there is nothing."""
    if args.output == "json":
        print(json.dumps(data, indent=2))
    elif args.output == "yaml":
        print(yaml.safe_dump(data, sort_keys=False), end="")
    elif not data:
        print(empty)
    else:
        print(_columns(rows()))
    return EXIT_OK


def _get_stats(args: argparse.Namespace) -> int:
    root = _pin_root(args)
    stats = engine.read_stats(root)
    steer = engine.read_steer_stats(root)
    if any(steer.get(0, {}).values()) or len(steer) > 1:
        names = proxy_names(engine.read_observed(root, (t.PROXY,)))
        for slot, counters in sorted(steer.items()):
            who = "steering" if slot == 0 else f"proxy/{names.get(slot, f'slot-{slot}')}"
            for name, value in counters.items():
                if slot or name == "lookups":
                    stats[f"{who}/{name}"] = value
    return _emit(args, stats, f"No counters in {_pin_root(args)} (nothing applied yet).",
                 lambda: [("COUNTER", "COUNT"), *((k, str(v)) for k, v in stats.items())])


def _get_interfaces(args: argparse.Namespace) -> int:
    from reconciler.kernel import tc

    seen = tc.observe(_pin_root(args), [])
    docs = []
    for hook, s in sorted(seen.items()):
        ours = s.ours
        state = ("attached" if ours and ours[0].prog_id == s.pinned_id else
                 "device gone" if not s.device_present else
                 "filter missing" if not ours else "attached program is not the pinned one")
        docs.append({"device": hook.device, "netns": hook.netns, "direction": hook.direction,
                     "priority": ours[0].priority if ours else None,
                     "program": ours[0].name.removeprefix("bpfsync:") if ours else None,
                     "programId": ours[0].prog_id if ours else None,
                     "tag": ours[0].tag if ours else None, "mtu": s.mtu, "state": state})
    return _emit(args, docs, f"No tc attachments in {_pin_root(args)}.", lambda: [
        ("DEVICE", "NETNS", "DIRECTION", "PRIO", "PROGRAM", "ID", "TAG", "STATE"),
        *((d["device"], d["netns"] or "-", d["direction"], str(d["priority"] or "-"),
           d["program"] or "-", str(d["programId"] or "-"), d["tag"] or "-", d["state"])
          for d in docs)])


def _datapath_status(pin_root: Path) -> dict[str, Any] | None:
    """The running data path's last report (written every second), if it is fresh."""
    from reconciler.supervisor import run_dir

    try:
        doc = json.loads((run_dir(pin_root) / "datapath.json").read_text())
    except (OSError, ValueError):
        return None
    return doc if time.time() - doc.get("time", 0) < STATUS_FRESH else None


def _get_proxies(args: argparse.Namespace) -> int:
    root = _pin_root(args)
    docs = inventory.proxies(engine.read_observed(root, (t.PROXY, t.STEER)),
                             engine.read_steer_stats(root),
                             _datapath_status(root))

    def rows() -> list[tuple[str, ...]]:
        out = [("NAME", "ID", "PORTS", "DESTINATIONS", "BACKENDS", "STEERED", "ACTIVE",
                "DATA PATH")]
        for d in docs:
            s, st = d["spec"], d["status"]
            healthy = [b for b in st.get("backends", []) if b["healthy"]]
            backends = (f"{len(healthy)}/{len(st['backends'])} healthy" if "backends" in st
                        else f"{len(s['backends'])} declared")
            out.append((d["metadata"]["name"], str(s["id"]), ",".join(map(str, s["ports"])),
                        ",".join(s["destinations"]), backends,
                        str(st["counters"]["steered"]), str(st.get("active", "-")),
                        st["dataPath"]))
        return out

    return _emit(args, docs, f"No proxies in {root}.", rows)


def cmd_get(args: argparse.Namespace) -> int:
    kind = args.kind.lower()
    if kind == "stats":
        return _get_stats(args)
    if kind in ("proxy", "proxies"):
        return _get_proxies(args)
    if kind in ("interface", "interfaces"):
        return _get_interfaces(args)
    observed = engine.read_observed(_pin_root(args))
    keys_dir = Path(args.keys_dir) if args.keys_dir else None
    docs: list[dict] = []
    if kind in ("all", "tunnel", "tunnels"):
        docs += inventory.tunnels(observed, keys_dir)
    if kind in ("all", "service", "services"):
        docs += inventory.services(observed, keys_dir)
    if args.output == "json":
        print(json.dumps(docs, indent=2))
    elif args.output == "yaml":
        if any("keyFrom" in d["spec"] for d in docs) and keys_dir is None:
            print("# keys are not printed; pass --keys-dir DIR to write them as 0600 files",
                  file=sys.stderr)
        print(yaml.safe_dump_all(docs, sort_keys=False, explicit_start=True), end="")
    elif docs:
        print(_table(docs))
    else:
        print(f"No resources in {_pin_root(args)}.")
    return EXIT_OK


def cmd_datapath(args: argparse.Namespace) -> int:
    import logging

    from reconciler import datapath

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.worker:
        return datapath.run_worker(_pin_root(args), args.control_fd, args.generation)
    return datapath.run(_pin_root(args), args.netns)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bpfsync",
        description="Declarative control plane for eBPF proxy and tunnel data paths.")
    p.add_argument("--pin-root", help=f"bpffs directory of bpfsync's pins (env BPFSYNC_PIN_ROOT, "
                                      f"default {DEFAULT_PIN_ROOT})")
    sub = p.add_subparsers(dest="command", required=True)

    v = sub.add_parser("validate", help="check a desired-state directory (exit 0 valid, 1 not)")
    v.add_argument("directory")
    v.set_defaults(func=cmd_validate)

    def prune_flags(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--no-prune", action="store_true",
                        help="never delete entries that are no longer in YAML")
        sp.add_argument("--keep", action="append", choices=["Tunnel", "Service"],
                        metavar="KIND", help="do not prune entries of this kind (repeatable)")

    d = sub.add_parser("diff", help="show the plan (exit 0 in sync, 2 changes, 1 error)")
    d.add_argument("directory")
    d.add_argument("-o", "--output", choices=["text", "json"], default="text")
    prune_flags(d)
    d.set_defaults(func=cmd_diff)

    a = sub.add_parser("apply", help="apply the plan to the kernel")
    a.add_argument("directory")
    a.add_argument("--allow-empty", action="store_true",
                   help="allow a plan that deletes every entry bpfsync manages")
    a.add_argument("-q", "--quiet", action="store_true", help="print only the summary")
    prune_flags(a)
    a.set_defaults(func=cmd_apply)

    dp = sub.add_parser("datapath", help="run the data path (proxies, GUE pings): a supervisor "
                                         "holding the listeners and a worker it restarts")
    dp.add_argument("--netns", help="named network namespace to run in")
    dp.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    dp.add_argument("--control-fd", type=int, help=argparse.SUPPRESS)
    dp.add_argument("--generation", type=int, default=0, help=argparse.SUPPRESS)
    dp.set_defaults(func=cmd_datapath)

    g = sub.add_parser("get", help="show what the kernel holds, as resources")
    g.add_argument("kind", choices=["all", "tunnel", "tunnels", "service", "services",
                                    "interface", "interfaces", "proxy", "proxies", "stats"],
                   type=str.lower)
    g.add_argument("-o", "--output", choices=["table", "yaml", "json"], default="table")
    g.add_argument("--keys-dir", help="write Service keys here as 0600 files (-o yaml/json)")
    g.set_defaults(func=cmd_get)
    return p


def main(argv: Sequence[str] | None = None) -> None:
    args = parser().parse_args(argv)
    try:
        code = args.func(args)
    except InvalidDesiredState as exc:
        _print_problems(exc.problems)
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

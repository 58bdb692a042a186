"""`bpfsync` command line: validate, diff, apply, get, run, status.

Exit codes: validate 0 valid / 1 invalid; diff 0 in sync / 2 changes pending / 1 error
(Terraform's -detailed-exitcode); apply and get 0 / 1; status 0 healthy / 2 degraded / 1 no daemon.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from reconciler import engine, inventory, render
from reconciler.core import registry
from reconciler.core.drift import ENFORCE, POLICIES
from reconciler.core.errors import BpfsyncError, InvalidDesiredState, Problem, Severity
from reconciler.core.plan import PrunePolicy
from reconciler.core.state import DesiredState
from reconciler.gue.model import Interface
from reconciler.kernel.maps import DEFAULT_PIN_ROOT
from reconciler.load.candidate import check_candidate
from reconciler.load.directory import load_directory
from reconciler.steering import tables as steering_tables
from reconciler.steering.tables import proxy_names

EXIT_OK, EXIT_ERROR, EXIT_CHANGES = 0, 1, 2


def _print_problems(problems: Sequence[Problem]) -> None:
    for p in problems:
        print(p, file=sys.stderr)


def _pin_root(args: argparse.Namespace) -> Path:
    """The pin root as its real path: /sys/fs/bpf/x/../y and a symlink to it are one pin
    root, with one lock and one run directory."""
    given = args.pin_root or os.environ.get("BPFSYNC_PIN_ROOT") or DEFAULT_PIN_ROOT
    return Path(os.path.realpath(given))


def _prune(args: argparse.Namespace) -> PrunePolicy:
    return PrunePolicy(enabled=not args.no_prune, keep_kinds=frozenset(args.keep or ()))


def _counts(state: DesiredState) -> str:
    counts = [f"{state.count(kind.name)} {kind.plural}" for kind in registry.KINDS.values()
              if state.count(kind.name)]
    return f"{', '.join(counts) or 'no resources'} in {state.files} files"


def _directories(patterns: Sequence[str]) -> list[Path]:
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


def _validate_directory(directory: Path, args: argparse.Namespace) -> bool:
    try:
        state = load_directory(directory, read_keys=not args.no_secrets)
    except InvalidDesiredState as exc:
        _print_problems(exc.problems)
        n = sum(1 for p in exc.problems if p.severity is Severity.ERROR)
        print(f"{directory}: invalid ({n} error{'s' if n != 1 else ''})", file=sys.stderr)
        return False
    _print_problems(state.warnings)
    if state.of(Interface) and os.geteuid() == 0:
        try:
            for w in engine.host_warnings(state, _pin_root(args)):
                print(f"warning: on this host: {w}", file=sys.stderr)
        except (OSError, BpfsyncError):
            pass  # validation never depends on this host's devices
    print(f"{directory}: valid ({_counts(state)})")
    return True


def _validate_candidate(args: argparse.Namespace) -> int:
    if len(args.paths) != 1:
        raise BpfsyncError("validate --in DIR takes exactly one FILE (the candidate)")
    directory, candidate = Path(args.within), Path(args.paths[0])
    if not directory.is_dir():
        raise BpfsyncError(f"--in {directory}: not a directory")
    result = check_candidate(directory, candidate, args.as_name, read_keys=not args.no_secrets)
    _print_problems(result.warnings)
    _print_problems(result.errors)
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
        _print_problems(result.existing)
        print(f"{where}: valid in {directory} (the directory is not)")
        return EXIT_OK
    assert result.state is not None
    verb = "replacing" if result.replaces else "adding"
    print(f"{where}: valid in {directory}, {verb} it ({_counts(result.state)})")
    return EXIT_OK


def cmd_validate(args: argparse.Namespace) -> int:
    if args.within:
        return _validate_candidate(args)
    if args.as_name:
        raise BpfsyncError("--as needs --in DIR")
    ok = [_validate_directory(d, args) for d in _directories(args.paths)]
    return EXIT_OK if all(ok) else EXIT_ERROR


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
        names = proxy_names(engine.read_observed(root, (steering_tables.PROXY,)))
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


def _get_proxies(args: argparse.Namespace) -> int:
    from reconciler.datapath.supervisor import read_datapath_status

    root = _pin_root(args)
    docs = inventory.proxies(engine.read_observed(root, (steering_tables.PROXY, steering_tables.STEER)),
                             engine.read_steer_stats(root),
                             read_datapath_status(root))

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
    from reconciler.daemon import logs
    from reconciler.datapath import worker as datapath

    logs.setup(os.environ.get("BPFSYNC_LOG_FORMAT", "text"))
    if args.worker:
        return datapath.run_worker(_pin_root(args), args.control_fd, args.generation,
                                   args.netns)
    return datapath.run(_pin_root(args), args.netns)


def cmd_run(args: argparse.Namespace) -> int:
    from reconciler.daemon import logs
    from reconciler.daemon.service import Daemon, DaemonConfig

    logs.setup(args.log_format, args.log_level)
    if args.log_format == "json":  # the data-path processes log the same way
        os.environ["BPFSYNC_LOG_FORMAT"] = "json"
    if args.pull is not None and not args.pull > 0:
        raise BpfsyncError(f"--pull {args.pull:g}: expected a number of seconds > 0")
    if args.metrics and not args.metrics.rpartition(":")[2].isdigit():
        raise BpfsyncError(f"--metrics {args.metrics!r}: expected [ADDRESS]:PORT")
    config = DaemonConfig(Path(args.directory).absolute(), _pin_root(args), args.resync,
                          args.drift, args.debounce, args.max_delay, _prune(args),
                          args.allow_empty, not args.no_datapath, args.datapath_netns,
                          args.metrics, pull=args.pull)
    return Daemon(config).run()


def _ago(when: float | None) -> str:
    if not when:
        return "never"
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(when))
    return f"{stamp} ({max(0, round(time.time() - when))}s ago)"


def _status_text(doc: dict[str, Any]) -> str:
    d, last, applied = doc["daemon"], doc["lastReconcile"], doc["lastApplied"]
    verb = "following the git clone at" if doc.get("git") else "watching"
    lines = [f"daemon:          pid {d['pid']}, {verb} {d['directory']} "
             f"(pin root {d['pinRoot']}; resync {d['resyncSeconds']:g}s, drift {d['drift']})"]
    if last:
        lines.append(f"last reconcile:  {_ago(last['time'])}: {last['result']} "
                     f"({last['trigger']}, {last['durationMs']} ms)")
    if applied:
        rev = applied.get("revision")
        at = (f"commit {rev['commit'][:12]}{' + uncommitted changes' if rev['dirty'] else ''}"
              if rev else "not a git work tree")
        lines.append(f"last applied:    {_ago(applied['time'])}, {at}")
    else:
        lines.append("last applied:    never")
    git = doc.get("git")
    if git:
        head, applied = git["head"] or "", git["applied"] or ""
        line = (f"git:             {git['upstream']} -> {git['clone']} ({git['directory']}): "
                f"head {head[:12] or '-'}")
        line += (", applied" if head and head == applied else
                 f", applied {applied[:12] or 'nothing yet'}")
        lines.append(line + f"; fetched {_ago(git['lastFetch'])}")
        if git["error"]:
            lines.append(f"  git: {git['error']}")
    lines.append(f"errors:          {doc.get('errorCount', len(doc['errors'])) or 'none'}"
                 + (" (nothing is applied until they are fixed; the last good state stays)"
                    if doc["errors"] else ""))
    lines += [f"  {e}" for e in doc["errors"]]
    if doc["resources"]:
        rows = [("  KIND", "SYNCED", "OUT OF SYNC", "ERROR")]
        rows += [(f"  {kind}", str(c["Synced"]), str(c["OutOfSync"]), str(c["Error"]))
                 for kind, c in doc["resources"].items()]
        lines += ["resources:", _columns(rows)]
    for o in doc["outOfSync"]:
        lines.append(f"  out of sync: {o['resource']}: {'; '.join(o['reasons'])}")
    dr = doc["drift"]
    n = dr["correctedOperations"]
    lines.append(f"drift corrected: {n} operation{'' if n == 1 else 's'}"
                 + (f", last {_ago(dr['recentCorrections'][-1]['time'])}"
                    if dr["recentCorrections"] else ""))
    dp = doc["dataPath"]
    line = f"data path:       {dp['state']}"
    if dp.get("workerPid"):
        line += f" (worker pid {dp['workerPid']}"
        line += f", netns {dp['netns']}" if dp.get("netns") else ""
        line += ")"
    if dp.get("restarts"):
        line += f", {dp['restarts']} restarts, last {dp.get('lastExit')}"
    if dp.get("error"):
        line += f": {dp['error']}"
    lines.append(line)
    for tun in doc["tunnels"]:
        learned = tun["learned"]
        how = ("fixed remote" if tun["remote"] != "learn" else
               f"learned {learned['address']}:{learned['port']} {learned['ageSeconds']}s ago"
               if learned else "remote not learned yet")
        lines.append(f"  tunnel {tun['name']}: {how}"
                     + ("" if tun["healthy"] else " (not fresh)"))
    for p in doc["proxies"]:
        to = ("to original destinations" if p.get("originalDestinations") else
              f"{p['healthy']}/{len(p['backends'])} backends healthy")
        lines.append(f"  proxy {p['name']}: {to}, {p['active']} connections")
    tps = doc.get("transparentProxies") or {}
    for tp in tps.get("resources", []):
        c = tp["counters"]
        lines.append(f"  transparent proxy {tp['name']} (cgroup {tp['cgroup']} -> proxy "
                     f"{tp['proxy']}): {c['intercepted']} intercepted, {c['excluded']} excluded, "
                     f"{c['no_proxy']} with no proxy, {c['track_full']} untracked")
    if tps:
        tr = tps["tracking"]
        lines.append(f"  intercepted connections tracked: {tr['entries']}/{tr['capacity']}")
    for ic in doc.get("intercepts") or []:
        c = ic["counters"]
        lines.append(f"  intercept {ic['name']} ({ic['device']}, {ic['rules']} rules): "
                     f"{c['redirected']} redirected, {c['dropped']} dropped, {c['passed']} "
                     f"passed, {c['unmatched']} unmatched; {c['assigned']} assigned, "
                     f"{c['no_listener']} with no listener")
    lines += [f"warning: {w}" for w in doc["warnings"]]
    return "\n".join(lines)


def cmd_status(args: argparse.Namespace) -> int:
    from reconciler.daemon import status
    from reconciler.datapath.supervisor import run_dir

    try:
        doc = status.query(run_dir(_pin_root(args)))
    except status.DaemonNotRunning as exc:
        print(f"bpfsync: no `bpfsync run` is managing pin root {_pin_root(args)} "
              f"(no daemon at {exc})", file=sys.stderr)
        return EXIT_ERROR
    if args.output == "json":
        print(json.dumps(doc, indent=2))
    else:
        print(_status_text(doc))
    # health (a remote not learned yet, a backend down) is shown, not an exit code: those
    # come and go with the network; sync state and a crash-looping data path are ours to fix
    degraded = doc["errors"] or doc["outOfSync"] or doc["dataPath"].get("crashLoop")
    return EXIT_CHANGES if degraded else EXIT_OK


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bpfsync",
        description="Declarative control plane for eBPF proxy and tunnel data paths.")
    p.add_argument("--pin-root", help=f"bpffs directory of bpfsync's pins (env BPFSYNC_PIN_ROOT, "
                                      f"default {DEFAULT_PIN_ROOT})")
    sub = p.add_subparsers(dest="command", required=True)

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

    def prune_flags(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--no-prune", action="store_true",
                        help="never delete entries that are no longer in YAML")
        sp.add_argument("--keep", action="append", choices=registry.ENTRY_KINDS,
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
    r.add_argument("--metrics", metavar="[ADDR]:PORT",
                   help="serve Prometheus metrics (off by default; ADDR defaults to 127.0.0.1)")
    r.add_argument("--pull", type=float, metavar="SECONDS",
                   help="DIRECTORY is in a git clone: fetch its upstream branch this often, "
                        "fast-forward, and apply only committed content")
    r.add_argument("--log-format", choices=["text", "json"], default="text")
    r.add_argument("--log-level", choices=["debug", "info", "warning", "error"],
                   default="info")
    prune_flags(r)
    r.set_defaults(func=cmd_run)

    st = sub.add_parser("status", help="ask the running daemon how it is doing "
                                       "(exit 0 in sync, 2 degraded, 1 no daemon)")
    st.add_argument("-o", "--output", choices=["text", "json"], default="text")
    st.set_defaults(func=cmd_status)

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

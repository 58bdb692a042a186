"""`bpfsync get`: what the kernel holds, as resources."""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import yaml

from reconciler import engine, inventory
from reconciler.cli.common import (
    EXIT_OK,
    applied_pin_root,
    columns,
    emit,
    pin_root,
)
from reconciler.core import registry
from reconciler.core.capability import Kind
from reconciler.core.errors import BpfsyncError
from reconciler.core.model import hostport
from reconciler.counters import read_stats, read_steer_stats
from reconciler.names.tables import NAMES
from reconciler.steering import tables as steering_tables
from reconciler.steering.inventory import proxies
from reconciler.steering.tables import proxy_names


def _table(docs: list[dict], entries: dict[tuple[str, str], dict[str, int]] | None = None
           ) -> str:
    """One row per resource; with entries (-o wide: each resource's entries per table, by
    kind and name, for the kinds whose own view does not count them), a column of them and
    one of the file (and git revision) that last applied it."""
    rows = _rows(docs)
    if entries is not None:
        rows[0] += ("ENTRIES", "SOURCE")
        for i, d in enumerate(docs, 1):
            held = (d.get("status", {}).get("entries")
                    or entries.get((d["kind"], d["metadata"]["name"]), {}))
            rows[i] += (", ".join(f"{t} {n}" for t, n in sorted(held.items())) or "-",
                        _source(d))
    return columns(rows)


def _source(doc: dict[str, Any]) -> str:
    """file@revision as the names table recorded it; "-" for what nobody named (drift)."""
    source = doc.get("status", {}).get("source")
    if not source:
        return "-"
    return source["file"] + (f"@{source['revision']}" if source.get("revision") else "")


def _rows(docs: list[dict]) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = [
        ("KIND", "NAME", "ID", "LOCAL/PROXY", "REMOTE/BACKEND", "TUNNEL", "STATUS")]
    for d in docs:
        s, st = d["spec"], d.get("status", {})
        if d["kind"] == "Tunnel":
            remote = s["remote"]
            if remote == "learn":
                learned = st.get("learned")
                remote = (f"learn → {hostport(learned['address'], learned['port'])} "
                          f"({learned['ageSeconds']}s ago)" if learned else "learn (not yet)")
            else:
                remote = hostport(remote["address"], remote["port"])
            rows.append(("Tunnel", d["metadata"]["name"], str(s["id"]),
                         hostport(s["local"]["address"], s["local"]["port"]), remote, "",
                         "" if st.get("managed", True) else "not written by bpfsync"))
        elif d["kind"] == "Proxy":
            rows.append(("Proxy", d["metadata"]["name"], str(s["id"]),
                         "ports " + ",".join(map(str, s["ports"])), ",".join(s["backends"]), "",
                         "" if st.get("managed", True) else "not written by bpfsync"))
        elif d["kind"] != "Service":  # a kind shown as its entries
            n = sum(st.get("entries", {}).values())
            rows.append((d["kind"], d["metadata"]["name"], "-", "-", "-", "",
                         f"{n} entr{'y' if n == 1 else 'ies'}"
                         + ("" if st.get("managed", True) else ", not written by bpfsync")))
        else:
            proxy = s.get("proxy")
            backend = s.get("backend")
            notes = [n for n, bad in (("no verify entry", not st.get("verifyEntry", True)),
                                      ("keys differ", st.get("verifyEntry") and
                                       not st.get("keysAgree", True)),
                                      ("not written by bpfsync", not st.get("managed", True)))
                     if bad]
            rows.append(("Service", d["metadata"]["name"], f"{s['groupId']}/{s['serviceId']}",
                         f"{hostport(proxy['address'], proxy['port'])}/{s['protocol']}" if proxy else "-",
                         hostport(backend["address"], backend["port"]) if backend else "-",
                         s.get("tunnel", "-"), ", ".join(notes)))
    return rows


def _get_stats(args: argparse.Namespace) -> int:
    root = pin_root(args)
    stats = read_stats(root)
    steer = read_steer_stats(root)
    if any(steer.get(0, {}).values()) or len(steer) > 1:
        names = proxy_names(engine.read_observed(root, (steering_tables.PROXY,)))
        for slot, counters in sorted(steer.items()):
            who = "steering" if slot == 0 else f"proxy/{names.get(slot, f'slot-{slot}')}"
            for name, value in counters.items():
                if slot or name == "lookups":
                    stats[f"{who}/{name}"] = value
    return emit(args, stats, f"No counters in {pin_root(args)} (nothing applied yet).",
                 lambda: [("COUNTER", "COUNT"), *((k, str(v)) for k, v in stats.items())])


def _get_interfaces(args: argparse.Namespace) -> int:
    from reconciler.kernel import tc

    seen = tc.observe(pin_root(args), [])
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
    return emit(args, docs, f"No tc attachments in {pin_root(args)}.", lambda: [
        ("DEVICE", "NETNS", "DIRECTION", "PRIO", "PROGRAM", "ID", "TAG", "STATE"),
        *((d["device"], d["netns"] or "-", d["direction"], str(d["priority"] or "-"),
           d["program"] or "-", str(d["programId"] or "-"), d["tag"] or "-", d["state"])
          for d in docs)])


def _get_proxies(args: argparse.Namespace) -> int:
    from reconciler.datapath.supervisor import read_datapath_status

    root = pin_root(args)
    docs = _named(args, proxies(engine.read_observed(root, (
        steering_tables.PROXY, steering_tables.STEER, steering_tables.STEER6, NAMES)),
                                read_steer_stats(root), read_datapath_status(root)), "Proxy")
    if args.output == "name":
        return _names(docs)

    def rows() -> list[tuple[str, ...]]:
        wide = args.output == "wide"
        out = [("NAME", "ID", "PORTS", "DESTINATIONS", "BACKENDS", "STEERED", "ACTIVE",
                "DATA PATH", *(("SOURCE",) if wide else ()))]
        for d in docs:
            s, st = d["spec"], d["status"]
            healthy = [b for b in st.get("backends", []) if b["healthy"]]
            backends = (f"{len(healthy)}/{len(st['backends'])} healthy" if "backends" in st
                        else f"{len(s['backends'])} declared")
            out.append((d["metadata"]["name"], str(s["id"]), ",".join(map(str, s["ports"])),
                        ",".join(s["destinations"]), backends,
                        str(st["counters"]["steered"]), str(st.get("active", "-")),
                        st["dataPath"], *((_source(d),) if wide else ())))
        return out

    return emit(args, docs, f"No proxies in {root}.", rows)


def _kinds(word: str) -> list[Kind]:
    """The kinds a `get` argument names: "all" is every kind with entries (an Interface is
    a TC attachment, shown by `get interfaces`)."""
    if word == "all":
        return [k for k in registry.KINDS.values() if k.name in registry.ENTRY_KINDS]
    return [k for k in registry.KINDS.values() if word in _words(k)]


def _words(kind: Kind) -> tuple[str, str]:
    return kind.name.lower(), kind.plural.replace(" ", "")


def _named(args: argparse.Namespace, docs: list[dict[str, Any]], what: str) -> list[dict[str, Any]]:
    """docs, or only the one NAME asks for (an error when there is none, as kubectl's)."""
    if args.name is None:
        return docs
    found = [d for d in docs if d["metadata"]["name"] == args.name]
    if not found:
        raise BpfsyncError(f"no {what} named {args.name!r} in {pin_root(args)}")
    return found


def _names(docs: list[dict[str, Any]]) -> int:
    for d in docs:
        print(f"{d['kind']}/{d['metadata']['name']}")
    return EXIT_OK


def _get_once(args: argparse.Namespace) -> int:
    word = args.kind.lower()
    if word in ("stats", "interface", "interfaces"):
        if args.name is not None or args.output == "name":
            raise BpfsyncError(f"get {word} lists {'counters' if word == 'stats' else 'TC filters'}"
                               f", not resources: it takes no NAME and no -o name")
        return _get_stats(args) if word == "stats" else _get_interfaces(args)
    if word in ("proxy", "proxies"):  # with live counters and the data path's view
        return _get_proxies(args)
    observed = engine.read_observed(pin_root(args))
    keys_dir = Path(args.keys_dir) if args.keys_dir else None
    docs = [d for kind in _kinds(word) for d in inventory.documents(kind, observed, keys_dir)]
    docs = _named(args, docs, "resource" if word == "all" else _kinds(word)[0].name)
    if args.output == "json":
        print(json.dumps(docs, indent=2))
    elif args.output == "name":
        return _names(docs)
    elif args.output == "yaml":
        partial = sorted({d["kind"] for d in docs if registry.KINDS[d["kind"]].inventory is None})
        if partial:  # YAML output is for adopting: only what can be applied back
            docs = [d for d in docs if d["kind"] not in partial]
            print(f"# {', '.join(partial)}: left out; their entries cannot be turned back into "
                  f"the YAML that made them (-o json or the table shows them)", file=sys.stderr)
        if any("keyFrom" in d["spec"] for d in docs) and keys_dir is None:
            print("# keys are not printed; pass --keys-dir DIR to write them as 0600 files",
                  file=sys.stderr)
        print(yaml.safe_dump_all(docs, sort_keys=False, explicit_start=True), end="")
    elif docs and args.output == "wide":
        print(_table(docs, {(d["kind"], d["metadata"]["name"]): d["status"]["entries"]
                            for kind in {registry.KINDS[d["kind"]] for d in docs}
                            for d in inventory.by_owner(kind.name, observed)}))
    elif docs:
        print(_table(docs))
    else:
        print(f"No resources in {pin_root(args)}.")
    return EXIT_OK


def _watch(args: argparse.Namespace) -> int:
    """Print, then print again whenever what get shows changes (polled every --interval
    seconds), until interrupted — as `kubectl get --watch`."""
    last = None
    try:
        while True:
            buf = io.StringIO()
            with redirect_stdout(buf):
                _get_once(args)
            if buf.getvalue() != last:
                if last is not None:
                    print(f"--- {time.strftime('%H:%M:%S')}")
                print(buf.getvalue(), end="", flush=True)
                last = buf.getvalue()
            time.sleep(args.interval)
    except KeyboardInterrupt:
        return EXIT_OK


def cmd_get(args: argparse.Namespace) -> int:
    if applied_pin_root(args) is None:
        print(f"Nothing applied on this host yet ({pin_root(args)} does not exist).")
        return EXIT_OK
    return _watch(args) if args.watch else _get_once(args)


def add(sub: Any) -> None:
    """The parser of get KIND."""
    g = sub.add_parser("get", help="show what the kernel holds, as resources")
    g.add_argument("kind", type=str.lower, metavar="KIND",
                   choices=["all", "stats", *(w for k in registry.KINDS.values()
                                              for w in _words(k))],
                   help="all, stats, or a kind (singular or plural, lower case): "
                        + ", ".join(_words(k)[1] for k in registry.KINDS.values()))
    g.add_argument("name", nargs="?", metavar="NAME", help="only this resource (exit 1 when "
                                                            "there is none)")
    g.add_argument("-o", "--output", choices=["table", "wide", "yaml", "json", "name"],
                   default="table", help="wide: the table with each resource's entries; "
                                         "name: Kind/name lines")
    g.add_argument("--keys-dir", help="write Service keys here as 0600 files (-o yaml/json)")
    g.add_argument("-w", "--watch", action="store_true",
                   help="print again whenever the output changes, until interrupted")
    g.add_argument("--interval", type=float, default=2.0, metavar="SECONDS",
                   help="with --watch: how often to look (default 2)")
    g.set_defaults(func=cmd_get)

"""Observed kernel state decoded back into resource documents, for `bpfsync get`.

The kernel holds no names, so resources are named after their ids (tunnel-<id>,
svc-<group>-<service>). Keys are never printed: a Service's key is referenced with keyFrom, and
written to a 0600 file only when a keys directory is given.
"""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from reconciler.core import registry
from reconciler.core import tables as t
from reconciler.core.plan import Observed
from reconciler.gue import tables as gt
from reconciler.load.secrets import Secret
from reconciler.steering import tables as st

KINDS = ("Tunnel", "Service")


def _ep(text: str) -> dict[str, Any]:
    address, port = text.rsplit(":", 1)
    return {"address": address, "port": int(port)}


def _doc(kind: str, name: str, spec: dict[str, Any], status: dict[str, Any]) -> dict[str, Any]:
    doc = {"apiVersion": "bpfsync/v1", "kind": kind, "metadata": {"name": name}, "spec": spec}
    if status:
        doc["status"] = status
    return doc


def tunnels(observed: Observed, keys_dir: Path | None = None,
            now_ns: int | None = None) -> list[dict[str, Any]]:
    now_ns = time.clock_gettime_ns(time.CLOCK_BOOTTIME) if now_ns is None else now_ns
    learned = observed.get(gt.LEARNED.name, {})
    nexts = observed.get(gt.NEXT_KEY_TABLE.name, {})
    out = []
    for key, value in sorted(observed.get(gt.TUNNEL.name, {}).items()):
        tid = registry.decode_key(gt.TUNNEL.name, key)["id"]
        v = registry.decode_value(gt.TUNNEL.name, value)
        spec: dict[str, Any] = {"id": tid, "local": _ep(v["local"]),
                                "remote": "learn" if v["remote"] == "learn" else _ep(v["remote"])}
        nxt = nexts.get(gt.next_key(gt.NEXT_TUNNEL, key))
        second = registry.decode_value(gt.NEXT_KEY_TABLE.name, nxt)["nextKey"] if nxt else None
        if "key" in v:
            sent, other = v["key"], second  # the key pings are signed with, and the other
            if second is not None and v["flags"] & gt.TUNNEL_FLAG_SEND_NEXT:
                sent, other = second, v["key"]
            spec["keyFrom"] = {"file": _export_key(keys_dir, f"tunnel-{tid}", sent)}
            if other is not None:
                spec["nextKeyFrom"] = {"file": _export_key(keys_dir, f"tunnel-{tid}-next", other)}
        if "pingIntervalMs" in v:
            spec["ping"] = {"intervalSeconds": v["pingIntervalMs"] / 1000}
        status: dict[str, Any] = {"managed": t.stamp_ok(key, value)}
        if key in learned:
            lv = registry.decode_value(gt.LEARNED.name, learned[key])
            status["learned"] = {**_ep(lv["remote"]),
                                 "ageSeconds": round(max(0, now_ns - lv["updatedNs"]) / 1e9, 1)}
        elif spec["remote"] == "learn":
            status["learned"] = None
        out.append(_doc("Tunnel", f"tunnel-{tid}", spec, status))
    return out


def services(observed: Observed, keys_dir: Path | None = None) -> list[dict[str, Any]]:
    verify = {k: registry.decode_value(gt.VERIFY.name, v)
              for k, v in observed.get(gt.VERIFY.name, {}).items()}
    out = []
    seen: set[bytes] = set()
    encap = observed.get(gt.ENCAP.name, {})
    for key, value in sorted(encap.items(), key=lambda kv: (kv[1][4:8], kv[0])):
        proxy = gt.decode_endpoint(key)
        e = registry.decode_value(gt.ENCAP.name, value)
        sid = gt.sid_key(e["groupId"], e["serviceId"])
        seen.add(sid)
        ver = verify.get(sid)
        name = f"svc-{e['groupId']}-{e['serviceId']}"
        spec: dict[str, Any] = {
            "groupId": e["groupId"], "serviceId": e["serviceId"], "protocol": proxy["protocol"],
            "proxy": {"address": proxy["address"], "port": proxy["port"]},
            "backend": _ep(ver["backend"]) if ver else None,
            "tunnel": f"tunnel-{e['tunnelId']}",
            "keyFrom": {"file": _export_key(keys_dir, name, e["key"])},
        }
        nxt = observed.get(gt.NEXT_KEY_TABLE.name, {}).get(gt.next_key(gt.NEXT_SERVICE, sid))
        accepted = [ver["key"]] if ver else []
        if nxt is not None:
            accepted.append(registry.decode_value(gt.NEXT_KEY_TABLE.name, nxt)["nextKey"])
        others = [k for k in accepted if k != e["key"]]
        if len(accepted) == 2 and others:  # rotating: the accepted key that is not sent
            spec["nextKeyFrom"] = {"file": _export_key(keys_dir, f"{name}-next", others[0])}
        status = {"managed": t.stamp_ok(key, value),
                  "verifyEntry": ver is not None,
                  "keysAgree": e["key"] in accepted}
        out.append(_doc("Service", name, spec, status))
    for sid, ver in sorted(verify.items()):
        if sid not in seen:
            k = registry.decode_key(gt.VERIFY.name, sid)
            out.append(_doc("Service", f"svc-{k['groupId']}-{k['serviceId']}",
                            {"groupId": k["groupId"], "serviceId": k["serviceId"],
                             "backend": _ep(ver["backend"])},
                            {"verifyEntry": True, "encapEntry": False}))
    return out


def _export_key(keys_dir: Path | None, name: str, key: Secret) -> str:
    if keys_dir is None:
        return f"keys/{name}.key"
    keys_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = keys_dir / f"{name}.key"
    raw = key.value.rstrip(b"\0")
    try:
        text = raw.decode("ascii")
        if not text.isprintable() or text.startswith("hex:"):
            raise ValueError
    except ValueError:
        text = "hex:" + raw.hex()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text + "\n")
    os.chmod(path, 0o600)
    return str(path.resolve())


def _port_ranges(ports: list[int]) -> list[int | str]:
    """Sorted ports folded back into YAML's form: single ports, "A-B" ranges, "*"."""
    out: list[int | str] = ["*"] if 0 in ports else []
    run: list[int] = []
    for p in sorted(x for x in ports if x):
        if run and p == run[-1] + 1:
            run.append(p)
            continue
        if run:
            out.append(run[0] if len(run) == 1 else f"{run[0]}-{run[-1]}")
        run = [p]
    if run:
        out.append(run[0] if len(run) == 1 else f"{run[0]}-{run[-1]}")
    return out


def proxies(observed: Observed, steer_stats: dict[int, dict[str, int]],
            datapath: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Proxies from ps_proxy and ps_dest, with steering counters and, when a data path runs
    for this pin root, its view (connections, backend health)."""
    by_slot: dict[int, tuple[set[int], set[str]]] = {}
    entries: dict[int, int] = {}
    for key, value in observed.get(st.STEER.name, {}).items():
        k, slot = registry.decode_key(st.STEER.name, key), registry.decode_value(st.STEER.name, value)["slot"]
        entries[slot] = entries.get(slot, 0) + 1
        ports, prefixes = by_slot.setdefault(slot, (set(), set()))
        ports.add(0 if k["port"] == "*" else k["port"])
        prefixes.add(k["prefix"])
    live = (datapath or {}).get("proxies", {})
    out = []
    for key, value in sorted(observed.get(st.PROXY.name, {}).items()):
        slot = registry.decode_key(st.PROXY.name, key)["slot"]
        try:
            c = registry.decode_value(st.PROXY.name, value)
        except ValueError:
            continue
        ports, prefixes = by_slot.get(slot, (set(), set()))
        h = c["health"]
        spec: dict[str, Any] = {
            "id": slot, "ports": _port_ranges(list(ports)), "destinations": sorted(prefixes),
            "backends": c["backends"], "balance": c["balance"],
            "healthCheck": {"enabled": h["enabled"], "intervalSeconds": h["intervalMs"] / 1000,
                            "timeoutSeconds": h["timeoutMs"] / 1000, "rise": h["rise"],
                            "fall": h["fall"]},
            "connectTimeoutSeconds": c["connectTimeoutMs"] / 1000,
            "idleTimeoutSeconds": c["idleTimeoutMs"] / 1000,
            "maxConnections": c["maxConnections"], "resolveSeconds": c["resolveMs"] / 1000}
        if c.get("drainTimeoutMs") is not None:
            spec["drainTimeoutSeconds"] = c["drainTimeoutMs"] / 1000
        counters = steer_stats.get(slot, dict.fromkeys(st.PS_STAT_NAMES, 0))
        status: dict[str, Any] = {
            "managed": t.stamp_ok(key, value),
            "steering": {"entries": entries.get(slot, 0)},
            "counters": {"lookups": counters["lookups"], "steered": counters["steered"],
                         "noListener": counters["no_listener"],
                         "assignError": counters["assign_error"]},
            "dataPath": "running" if c["name"] in live else "not running"}
        if c["name"] in live:
            status.update(live[c["name"]])
            # the worker's part (connections, bytes, health) is its last report, written
            # every 0.25 s; the counters above are read live from BPF
            status["reportedAt"] = datetime.fromtimestamp(
                datapath["time"], UTC).isoformat(timespec="milliseconds")
        out.append(_doc("Proxy", c["name"], spec, status))
    return out

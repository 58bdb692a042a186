"""Proxies decoded back from the kernel (ps_proxy, ps_dest, ps_dest6) into resource
documents."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from reconciler.core.document import document
from reconciler.core.tables import Observed, stamp_ok
from reconciler.names.tables import Names
from reconciler.steering import tables as st


def port_ranges(ports: list[int]) -> list[int | str]:
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


def proxies(observed: Observed, steer_stats: dict[int, dict[str, int]] | None = None,
            datapath: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Proxies from ps_proxy, ps_dest and ps_dest6, with steering counters and, when a data path
    runs for this pin root, its view (connections, backend health)."""
    steer_stats = steer_stats or {}
    by_slot: dict[int, tuple[set[int], set[str]]] = {}
    entries: dict[int, int] = {}
    steering = [*observed.get(st.STEER.name, {}).items(),
                *observed.get(st.STEER6.name, {}).items()]
    for key, value in steering:
        codec = st.CODECS[st.STEER.name]
        k, slot = codec.decode_key(key), codec.decode_value(value)["slot"]
        entries[slot] = entries.get(slot, 0) + 1
        ports, prefixes = by_slot.setdefault(slot, (set(), set()))
        ports.add(0 if k["port"] == "*" else k["port"])
        prefixes.add(k["prefix"])
    live = (datapath or {}).get("proxies", {})
    names = Names(observed)
    out = []
    for key, value in sorted(observed.get(st.PROXY.name, {}).items()):
        slot = st.CODECS[st.PROXY.name].decode_key(key)["slot"]
        try:
            c = st.CODECS[st.PROXY.name].decode_value(value)
        except ValueError:
            continue
        ports, prefixes = by_slot.get(slot, (set(), set()))
        h = c["health"]
        spec: dict[str, Any] = {
            "id": slot, "ports": port_ranges(list(ports)),
            "destinations": sorted(prefixes, key=lambda p: (":" in p, p)),  # IPv4 first
            "backends": c["backends"], "balance": c["balance"],
            "healthCheck": {"enabled": h["enabled"], "intervalSeconds": h["intervalMs"] / 1000,
                            "timeoutSeconds": h["timeoutMs"] / 1000, "rise": h["rise"],
                            "fall": h["fall"]},
            "connectTimeoutSeconds": c["connectTimeoutMs"] / 1000,
            "idleTimeoutSeconds": c["idleTimeoutMs"] / 1000,
            "maxConnections": c["maxConnections"], "resolveSeconds": c["resolveMs"] / 1000}
        if c.get("preconnect"):
            spec["preconnect"] = c["preconnect"]
        if c.get("drainTimeoutMs") is not None:
            spec["drainTimeoutSeconds"] = c["drainTimeoutMs"] / 1000
        counters = steer_stats.get(slot, dict.fromkeys(st.PS_STAT_NAMES, 0))
        status: dict[str, Any] = {
            "managed": stamp_ok(key, value),
            "steering": {"entries": entries.get(slot, 0)},
            "counters": {"lookups": counters["lookups"], "steered": counters["steered"],
                         "noListener": counters["no_listener"],
                         "assignError": counters["assign_error"]},
            "dataPath": "running" if c["name"] in live else "not running"}
        if (source := names.source(f"Proxy/{c['name']}")) is not None:
            status["source"] = source
        if c["name"] in live:
            status.update(live[c["name"]])
            # the worker's part (connections, bytes, health) is its last report, written
            # every 0.25 s; the counters above are read live from BPF
            status["reportedAt"] = datetime.fromtimestamp(
                datapath["time"], UTC).isoformat(timespec="milliseconds")
        out.append(document("Proxy", c["name"], spec, status))
    return out

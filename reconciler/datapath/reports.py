"""The data path's workers' reports read as one (pure): what `get proxies`, `status` and the
metrics show. Counters and connections are summed over workers; a backend is healthy when
every worker's own checks find it so (each worker checks every backend); the first worker's
pid, generation and pings are the data path's. Each worker's own figures stay under
"workers"."""

from __future__ import annotations

from typing import Any

_BACKEND_KEY = ("backend", "address")


def _sum_into(into: dict[str, Any], doc: dict[str, Any]) -> None:
    for key, value in doc.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if key in ("slot", "limit"):  # the same in every worker: not a count
            into.setdefault(key, value)
        else:
            into[key] = into.get(key, 0) + value


def _merge_backends(lists: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    merged: dict[tuple[Any, ...], dict[str, Any]] = {}
    for backends in lists:
        for b in backends:
            key = tuple(b.get(k) for k in _BACKEND_KEY)
            have = merged.get(key)
            if have is None:
                merged[key] = dict(b)
                continue
            have["active"] = have.get("active", 0) + b.get("active", 0)
            if "healthy" in b:
                have["healthy"] = have.get("healthy", True) and b["healthy"]
    return list(merged.values())


def _merge_proxy(docs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for doc in docs:
        _sum_into(out, doc)
    out["backends"] = _merge_backends([d.get("backends", []) for d in docs])
    out["draining"] = _merge_backends([d.get("draining", []) for d in docs])
    return out


def merge(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """Fresh worker reports (at least one) as one report of the same shape as a worker's."""
    docs = sorted(docs, key=lambda d: d.get("worker", 0))
    first = docs[0]
    out: dict[str, Any] = {
        "pid": first.get("pid"), "worker": first.get("worker", 0),
        "generation": first.get("generation"),
        "time": min(d.get("time", 0) for d in docs),  # the oldest: what all reports have seen
        "pingsSent": sum(d.get("pingsSent", 0) for d in docs),
        "pinging": sorted({t for d in docs for t in d.get("pinging", [])}),
    }
    descriptors: dict[str, Any] = {}
    for d in docs:
        _sum_into(descriptors, d.get("descriptors", {}))
    descriptors["paused"] = any(d.get("descriptors", {}).get("paused") for d in docs)
    out["descriptors"] = descriptors
    names = sorted({n for d in docs for n in d.get("proxies", {})})
    out["proxies"] = {n: _merge_proxy([d["proxies"][n] for d in docs
                                       if n in d.get("proxies", {})]) for n in names}
    out["workers"] = [{"worker": d.get("worker", 0), "pid": d.get("pid"),
                       "generation": d.get("generation"), "time": d.get("time"),
                       "accepting": d.get("accepting", True),  # or standing by (standby.py)
                       "active": sum(p.get("active", 0) for p in d.get("proxies", {}).values()),
                       "accepted": sum(p.get("accepted", 0)
                                       for p in d.get("proxies", {}).values()),
                       "descriptors": d.get("descriptors", {})} for d in docs]
    return out

"""Prometheus metrics of the daemon (off unless --metrics ADDR:PORT is given).

Everything is computed when scraped, from the daemon's report and the kernel's counters:
nothing runs between scrapes but the reconcile-duration histogram, which the daemon's record
holds. The registry is the daemon's own (no global state), with the standard process,
platform and garbage-collector collectors beside bpfsync's. CATALOG is every bpfsync family
with its type and labels: the README's table is checked against it, and the families below
are made from it.

Cardinality is bounded: no label per entry, connection or Service. Per-resource labels only
where resources are few: Proxies (at most 64), their backends, TransparentProxies and
Intercepts (64 and 256 at most) and learned tunnels (the first MAX_TUNNEL_SERIES by name;
all of them are counted in bpfsync_tunnels_learned and bpfsync_tunnels_stale).
"""

from __future__ import annotations

import logging
import platform
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from reconciler.version import version

log = logging.getLogger("bpfsync.metrics")
MAX_TUNNEL_SERIES = 100
RECONCILE_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


@dataclass(frozen=True)
class MetricDoc:
    """One family as exposed: its name (counters with _total), type, labels and help."""

    name: str
    type: str
    labels: tuple[str, ...]
    help: str


def _m(name: str, kind: str, labels: str, help_text: str) -> MetricDoc:
    return MetricDoc(name, kind, tuple(labels.split()), help_text)


CATALOG: tuple[MetricDoc, ...] = (
    _m("bpfsync_build_info", "gauge", "version python", "Always 1; the version of bpfsync "
       "and of Python as labels"),
    _m("bpfsync_reconciles_total", "counter", "result", "Reconciles run, by result "
       "(applied, in-sync, invalid, failed, held: a change awaits confirmation, "
       "suspended)"),
    _m("bpfsync_reconcile_duration_seconds", "histogram", "trigger", "Reconcile durations, "
       "by what triggered them (startup, files, resync, retry, revision, commit, SIGHUP)"),
    _m("bpfsync_last_reconcile_duration_seconds", "gauge", "", "Duration of the last "
       "reconcile"),
    _m("bpfsync_last_successful_reconcile_timestamp_seconds", "gauge", "", "Unix time of "
       "the last reconcile that applied the directory or found it in sync (0: none yet)"),
    _m("bpfsync_desired_state_errors", "gauge", "", "Errors in the desired state now "
       "(nothing is applied while there are any)"),
    _m("bpfsync_resources", "gauge", "kind state", "Declared resources by kind and state "
       "(Synced, OutOfSync, Error), as `bpfsync status` counts them"),
    _m("bpfsync_operations_total", "counter", "operation", "Kernel operations applied, by "
       "action (create, update, delete, attach, replace, detach)"),
    _m("bpfsync_drift_corrections_total", "counter", "kind", "Operations that undid drift, "
       "by the kind of the resource they belong to"),
    _m("bpfsync_drift_pending", "gauge", "", "Drift reported but not corrected (policy "
       "warn or off)"),
    _m("bpfsync_suspended", "gauge", "", "1 while `bpfsync suspend` holds every change "
       "and drift correction back, else 0"),
    _m("bpfsync_confirmation_pending", "gauge", "", "1 while a change awaits `bpfsync "
       "confirm` (it reverts at its deadline), else 0"),
    _m("bpfsync_map_entries", "gauge", "map", "Entries per pinned map"),
    _m("bpfsync_map_capacity", "gauge", "map", "Capacity (max_entries) per pinned map"),
    _m("bpfsync_map_fill_ratio", "gauge", "map", "Entries / capacity per pinned map"),
    _m("bpfsync_datapath_up", "gauge", "", "1 when the data-path worker runs"),
    _m("bpfsync_datapath_restarts_total", "counter", "", "Data-path worker restarts"),
    _m("bpfsync_datapath_workers_accepting", "gauge", "", "Data-path workers watching the "
       "listeners now (the others stand by until those are busy)"),
    _m("bpfsync_datapath_fd_exhausted_total", "counter", "", "Accepts and dials of the data "
       "path that waited for a free file descriptor"),
    _m("bpfsync_datapath_descriptors", "gauge", "kind", "File descriptors of the data-path "
       "worker: its limit, held now, needed with every Proxy at maxConnections"),
    _m("bpfsync_datapath_events_total", "counter", "event", "Events counted by the BPF "
       "programs (GUE and port steering totals)"),
    _m("bpfsync_gue_pings_sent_total", "counter", "", "GUE pings sent by the data path"),
    _m("bpfsync_tunnels_learned", "gauge", "", "Tunnels whose remote was learned"),
    _m("bpfsync_tunnels_stale", "gauge", "", "Tunnels that learn their remote and have none "
       "fresh (never learned, or no ping for 60 s)"),
    _m("bpfsync_tunnel_learned_age_seconds", "gauge", "tunnel", "Seconds since the last "
       "authenticated ping of a tunnel whose remote is learned"),
    _m("bpfsync_proxy_active_connections", "gauge", "proxy", "Open proxied connections"),
    _m("bpfsync_proxy_connections_total", "counter", "proxy", "Connections a Proxy accepted"),
    _m("bpfsync_proxy_bytes_total", "counter", "proxy direction", "Bytes relayed by a Proxy "
       "(direction in: client to backend, out: backend to client)"),
    _m("bpfsync_proxy_backends", "gauge", "proxy", "Backends of a Proxy the data path knows"),
    _m("bpfsync_proxy_backends_healthy", "gauge", "proxy", "Backends of a Proxy passing "
       "their health check"),
    _m("bpfsync_proxy_backend_healthy", "gauge", "proxy backend", "1 when a backend passes "
       "its health check"),
    _m("bpfsync_proxy_preconnected", "gauge", "proxy", "Backend connections a Proxy's workers "
       "keep open ahead, ready for clients (preconnect)"),
    _m("bpfsync_proxy_preconnects_total", "counter", "proxy outcome", "Backend connections "
       "opened ahead, by outcome: used by a client, or dropped (failed, or closed by the "
       "backend while waiting)"),
    _m("bpfsync_transparent_proxy_connects_total", "counter", "transparent_proxy outcome",
       "Connects seen by a TransparentProxy's programs, by outcome"),
    _m("bpfsync_intercept_packets_total", "counter", "intercept outcome", "Packets and "
       "connections seen by an Intercept's programs, by outcome"),
)
BY_NAME = {m.name: m for m in CATALOG}


def reconcile_histogram() -> Histogram:
    """The reconcile-duration histogram, registered nowhere (the daemon's record holds it
    and its collector yields it)."""
    doc = BY_NAME["bpfsync_reconcile_duration_seconds"]
    return Histogram(doc.name, doc.help, labelnames=doc.labels, buckets=RECONCILE_BUCKETS,
                     registry=None)


class _Families:
    """The families of one scrape, made from the catalog, filled by name."""

    def __init__(self) -> None:
        self.made: dict[str, Metric] = {}
        for doc in CATALOG:
            if doc.type == "histogram":
                continue
            cls = CounterMetricFamily if doc.type == "counter" else GaugeMetricFamily
            self.made[doc.name] = cls(doc.name, doc.help, labels=list(doc.labels))

    def add(self, name: str, labels: list[str], value: float) -> None:
        self.made[name].add_metric(labels, value)  # type: ignore[attr-defined]


def _families(r: dict[str, Any], kernel: dict[str, int]) -> Iterator[Metric]:
    f = _Families()
    f.add("bpfsync_build_info", [version(), platform.python_version()], 1)
    m = r["metrics"]
    for result, n in sorted(m["reconciles"].items()):
        f.add("bpfsync_reconciles_total", [result], n)
    f.add("bpfsync_last_reconcile_duration_seconds", [], m["lastReconcileSeconds"])
    f.add("bpfsync_last_successful_reconcile_timestamp_seconds", [],
          (r.get("lastApplied") or {}).get("time") or 0)
    f.add("bpfsync_desired_state_errors", [], r.get("errorCount", len(r["errors"])))
    for kind, states in sorted(r.get("resources", {}).items()):
        for state, n in states.items():
            f.add("bpfsync_resources", [kind, state], n)
    for op, n in sorted(m["operations"].items()):
        f.add("bpfsync_operations_total", [op], n)
    for kind, n in sorted(r["drift"].get("correctedByKind", {}).items()):
        f.add("bpfsync_drift_corrections_total", [kind], n)
    f.add("bpfsync_drift_pending", [], r["drift"]["pending"])
    f.add("bpfsync_suspended", [], 1 if r.get("suspendedSince") else 0)
    f.add("bpfsync_confirmation_pending", [], 1 if (r.get("confirmation") or {}).get(
        "pending") or r.get("heldOff") else 0)
    _maps(f, r)
    _datapath(f, r["dataPath"])
    for name, value in sorted(kernel.items()):
        f.add("bpfsync_datapath_events_total", [name], value)
    _tunnels(f, r.get("tunnels") or [])
    _proxies(f, r.get("proxies") or [])
    for tp in (r.get("transparentProxies") or {}).get("resources", []):
        for outcome, value in tp["counters"].items():
            f.add("bpfsync_transparent_proxy_connects_total", [tp["name"], outcome], value)
    for ic in r.get("intercepts") or []:
        for outcome, value in ic["counters"].items():
            f.add("bpfsync_intercept_packets_total", [ic["name"], outcome], value)
    yield from f.made.values()


def _maps(f: _Families, r: dict[str, Any]) -> None:
    maps = dict(r["maps"])
    tps = r.get("transparentProxies") or {}
    for name, key in (("tp_conns", "tracking"), ("tp_conns6", "tracking6")):
        if tps.get(key):  # map pressure of the connections the programs track
            maps[name] = tps[key]
    for name, info in sorted(maps.items()):
        f.add("bpfsync_map_entries", [name], info["entries"])
        f.add("bpfsync_map_capacity", [name], info["capacity"])
        if info["capacity"]:
            f.add("bpfsync_map_fill_ratio", [name], info["entries"] / info["capacity"])


def _datapath(f: _Families, dp: dict[str, Any]) -> None:
    f.add("bpfsync_datapath_up", [], 1 if dp.get("state") == "running" else 0)
    f.add("bpfsync_datapath_restarts_total", [], dp.get("restarts", 0))
    if isinstance(dp.get("workersAccepting"), int):
        f.add("bpfsync_datapath_workers_accepting", [], dp["workersAccepting"])
    f.add("bpfsync_gue_pings_sent_total", [], dp.get("pingsSent", 0))
    fds = dp.get("descriptors") or {}
    f.add("bpfsync_datapath_fd_exhausted_total", [], fds.get("exhausted", 0))
    for kind in ("limit", "open", "needed"):
        if isinstance(fds.get(kind), int):
            f.add("bpfsync_datapath_descriptors", [kind], fds[kind])


def _tunnels(f: _Families, tunnels: list[dict[str, Any]]) -> None:
    learning = [t for t in tunnels if t.get("remote") == "learn"]
    f.add("bpfsync_tunnels_learned", [], sum(1 for t in learning if t.get("learned")))
    f.add("bpfsync_tunnels_stale", [], sum(1 for t in learning if not t.get("healthy")))
    shown = sorted((t for t in learning if t.get("learned")), key=lambda t: t["name"])
    for t in shown[:MAX_TUNNEL_SERIES]:
        f.add("bpfsync_tunnel_learned_age_seconds", [t["name"]], t["learned"]["ageSeconds"])


def _proxies(f: _Families, proxies: list[dict[str, Any]]) -> None:
    for p in proxies:
        name = p["name"]
        f.add("bpfsync_proxy_active_connections", [name], p.get("active", 0))
        f.add("bpfsync_proxy_connections_total", [name], p.get("accepted", 0))
        f.add("bpfsync_proxy_bytes_total", [name, "in"], p.get("bytesIn", 0))
        f.add("bpfsync_proxy_bytes_total", [name, "out"], p.get("bytesOut", 0))
        backends = p.get("backends", [])
        f.add("bpfsync_proxy_backends", [name], len(backends))
        f.add("bpfsync_proxy_backends_healthy", [name], sum(1 for b in backends if b["healthy"]))
        for b in backends:
            f.add("bpfsync_proxy_backend_healthy", [name, b["address"] or b["backend"]],
                  1 if b["healthy"] else 0)
        f.add("bpfsync_proxy_preconnected", [name], p.get("preconnected", 0))
        f.add("bpfsync_proxy_preconnects_total", [name, "used"], p.get("preconnectUsed", 0))
        f.add("bpfsync_proxy_preconnects_total", [name, "dropped"],
              p.get("preconnectDropped", 0))


class DaemonCollector(Collector):
    def __init__(self, report: Callable[[], dict[str, Any]],
                 kernel_counters: Callable[[], dict[str, int]],
                 histogram: Histogram | None = None) -> None:
        self.report = report
        self.kernel_counters = kernel_counters
        self.histogram = histogram or reconcile_histogram()

    def collect(self) -> Iterator[Metric]:
        try:
            kernel = self.kernel_counters()
        except OSError as exc:
            log.debug("reading BPF counters failed: %s", exc)
            kernel = {}
        yield from _families(self.report(), kernel)
        for metric in self.histogram.collect():
            # without the _created series (a gauge of its own in the text format): the
            # process start time says as much, and dashboards have no use for it
            metric.samples = [s for s in metric.samples if not s.name.endswith("_created")]
            yield metric


def registry_for(report: Callable[[], dict[str, Any]],
                 kernel_counters: Callable[[], dict[str, int]],
                 histogram: Histogram | None = None) -> CollectorRegistry:
    """The daemon's registry: its own families and the process, platform and GC ones."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DaemonCollector(report, kernel_counters, histogram))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


def serve(address: str, report: Callable[[], dict[str, Any]],
          kernel_counters: Callable[[], dict[str, int]],
          histogram: Histogram | None = None) -> str:
    """Start the HTTP endpoint on address ("127.0.0.1:9470", or ":9470" meaning localhost;
    port 0 picks a free one) and return the address it listens on."""
    host, _, port = address.rpartition(":")
    registry = registry_for(report, kernel_counters, histogram)
    server, _thread = start_http_server(int(port), addr=host or "127.0.0.1", registry=registry)
    bound_host, bound_port = server.server_address[:2]
    where = f"{bound_host}:{bound_port}"
    log.info("metrics on http://%s/metrics", where)
    return where

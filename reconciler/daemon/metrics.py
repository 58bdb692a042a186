"""Prometheus metrics of the daemon (off unless --metrics ADDR:PORT is given).

Everything is computed when scraped, from the daemon's report and the kernel's counters:
nothing runs between scrapes, and the registry is the daemon's own (no global state).
"""

from __future__ import annotations

import logging
import platform
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from reconciler.version import version

log = logging.getLogger("bpfsync.metrics")
NS = "bpfsync"


def _families(r: dict[str, Any], kernel: dict[str, int]) -> Iterator[Metric]:
    m = r["metrics"]
    info = GaugeMetricFamily(f"{NS}_build_info", "Always 1; the version of bpfsync and of "
                             "Python as labels", labels=["version", "python"])
    info.add_metric([version(), platform.python_version()], 1)
    yield info
    c = CounterMetricFamily(f"{NS}_reconciles", "Reconciles run, by result", labels=["result"])
    for result, n in sorted(m["reconciles"].items()):
        c.add_metric([result], n)
    yield c
    yield CounterMetricFamily(f"{NS}_reconcile_seconds", "Time spent reconciling",
                              value=m["reconcileSeconds"])
    yield GaugeMetricFamily(f"{NS}_last_reconcile_seconds", "Duration of the last reconcile",
                            value=m["lastReconcileSeconds"])
    yield GaugeMetricFamily(f"{NS}_desired_state_errors", "Errors in the desired state now "
                            "(nothing is applied while there are any)", value=len(r["errors"]))
    ops = CounterMetricFamily(f"{NS}_operations", "Kernel operations applied, by kind",
                              labels=["operation"])
    for op, n in sorted(m["operations"].items()):
        ops.add_metric([op], n)
    yield ops
    yield CounterMetricFamily(f"{NS}_drift_corrected", "Operations that undid drift",
                              value=r["drift"]["correctedOperations"])
    yield GaugeMetricFamily(f"{NS}_drift_pending", "Drift reported but not corrected (policy "
                            "warn or off)", value=r["drift"]["pending"])
    entries = GaugeMetricFamily(f"{NS}_map_entries", "Entries per pinned map", labels=["map"])
    capacity = GaugeMetricFamily(f"{NS}_map_capacity", "Capacity per pinned map",
                                 labels=["map"])
    maps = dict(r["maps"])
    tracking = (r.get("transparentProxies") or {}).get("tracking")
    if tracking:  # map pressure of the connections the programs track
        maps["tp_conns"] = tracking
    for name, info in sorted(maps.items()):
        entries.add_metric([name], info["entries"])
        capacity.add_metric([name], info["capacity"])
    yield entries
    yield capacity
    dp = r["dataPath"]
    yield CounterMetricFamily(f"{NS}_datapath_restarts", "Data-path worker restarts",
                              value=dp.get("restarts", 0))
    yield GaugeMetricFamily(f"{NS}_datapath_up", "1 when the data-path worker runs",
                            value=1 if dp.get("state") == "running" else 0)
    yield CounterMetricFamily(f"{NS}_gue_pings_sent", "GUE pings sent by the data path",
                              value=dp.get("pingsSent", 0))
    fds = dp.get("descriptors") or {}
    yield CounterMetricFamily(f"{NS}_datapath_fd_exhausted", "Accepts and dials of the data "
                              "path that waited for a free file descriptor",
                              value=fds.get("exhausted", 0))
    descriptors = GaugeMetricFamily(f"{NS}_datapath_descriptors", "File descriptors of the "
                                    "data-path worker: its limit, held now, needed with every "
                                    "Proxy at maxConnections", labels=["kind"])
    for kind in ("limit", "open", "needed"):
        if isinstance(fds.get(kind), int):
            descriptors.add_metric([kind], fds[kind])
    yield descriptors
    learned = [t for t in r.get("tunnels", []) if t.get("learned")]
    yield GaugeMetricFamily(f"{NS}_tunnels_learned", "Tunnels whose remote was learned",
                            value=len(learned))
    conns = GaugeMetricFamily(f"{NS}_proxy_active_connections", "Open proxied connections",
                              labels=["proxy"])
    healthy = GaugeMetricFamily(f"{NS}_proxy_backend_healthy", "1 when a backend passes its "
                                "health check", labels=["proxy", "backend"])
    for p in r.get("proxies", []):
        conns.add_metric([p["name"]], p.get("active", 0))
        for b in p.get("backends", []):
            healthy.add_metric([p["name"], b["address"] or b["backend"]], 1 if b["healthy"] else 0)
    yield conns
    yield healthy
    tps = r.get("transparentProxies") or {}
    tp_counters = CounterMetricFamily(f"{NS}_transparent_proxy", "Connects seen by a "
                                      "TransparentProxy's programs, by outcome",
                                      labels=["transparent_proxy", "outcome"])
    for tp in tps.get("resources", []):
        for outcome, value in tp["counters"].items():
            tp_counters.add_metric([tp["name"], outcome], value)
    yield tp_counters
    ic_counters = CounterMetricFamily(f"{NS}_intercept", "Packets and connections seen by an "
                                      "Intercept's programs, by outcome",
                                      labels=["intercept", "outcome"])
    for ic in r.get("intercepts") or []:
        for outcome, value in ic["counters"].items():
            ic_counters.add_metric([ic["name"], outcome], value)
    yield ic_counters
    bpf = CounterMetricFamily(f"{NS}_bpf_counter", "Counters kept by the BPF programs",
                              labels=["counter"])
    for name, value in sorted(kernel.items()):
        bpf.add_metric([name], value)
    yield bpf


class DaemonCollector(Collector):
    def __init__(self, report: Callable[[], dict[str, Any]],
                 kernel_counters: Callable[[], dict[str, int]]) -> None:
        self.report = report
        self.kernel_counters = kernel_counters

    def collect(self) -> Iterator[Metric]:
        try:
            kernel = self.kernel_counters()
        except OSError as exc:
            log.debug("reading BPF counters failed: %s", exc)
            kernel = {}
        yield from _families(self.report(), kernel)


def serve(address: str, report: Callable[[], dict[str, Any]],
          kernel_counters: Callable[[], dict[str, int]]) -> str:
    """Start the HTTP endpoint on address ("127.0.0.1:9470", or ":9470" meaning localhost;
    port 0 picks a free one) and return the address it listens on."""
    host, _, port = address.rpartition(":")
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DaemonCollector(report, kernel_counters))
    server, _thread = start_http_server(int(port), addr=host or "127.0.0.1", registry=registry)
    bound_host, bound_port = server.server_address[:2]
    where = f"{bound_host}:{bound_port}"
    log.info("metrics on http://%s/metrics", where)
    return where

"""Building a Proxy from a schema-valid document."""

from __future__ import annotations

from reconciler.core.model import network_order
from reconciler.load.build import Spec, ms
from reconciler.steering.model import HealthCheck, Proxy, backend_address_problem, split_backend

# Every local address of both families: a Proxy steers IPv4 and IPv6 connections unless its
# destinations say otherwise.
DEFAULT_DESTINATIONS = ["0.0.0.0/0", "::/0"]


def build_proxy(spec: Spec) -> Proxy | None:
    ports = spec.port_ranges(spec.get("ports", []), ("ports",))
    destinations = spec.prefixes(spec.get("destinations", DEFAULT_DESTINATIONS),
                                 ("destinations",), ipv6=True)
    if spec.get("preconnect", 0) and not spec.get("backends"):
        spec.problem(("preconnect",), "preconnect needs backends: without them each "
                                      "connection goes to a destination known only once it comes")
    if ports and not spec.get("backends"):
        spec.problem(("ports",), "a Proxy that steers ports needs backends: without them it would "
                            "connect to the steered destination itself and be steered back")
    for i, b in enumerate(spec.get("backends", [])):
        host, port = split_backend(b)
        if not 1 <= port <= 65535:
            spec.problem(("backends", i), f"backend {b!r}: port must be 1-65535")
        elif (problem := backend_address_problem(host)) is not None:
            spec.problem(("backends", i), f"backend {b!r}: {problem}")
    hc = spec.get("healthCheck", {})
    health = HealthCheck(hc.get("enabled", True), ms(hc.get("intervalSeconds", 2)),
                         ms(hc.get("timeoutSeconds", 1)), hc.get("rise", 2), hc.get("fall", 3))
    if health.timeout_ms > health.interval_ms:
        spec.problem(("healthCheck", "timeoutSeconds"), "the check timeout must not exceed its "
                                                   "interval")
    if spec.bad:
        return None
    drain = spec.get("drainTimeoutSeconds")
    return Proxy(spec.name, spec["id"], spec.get("netns"), tuple(sorted(set(ports))),
                 tuple(sorted(set(destinations), key=network_order)), tuple(spec.get("backends", [])),
                 spec.get("balance", "round-robin"), health,
                 ms(spec.get("connectTimeoutSeconds", 5)), ms(spec.get("idleTimeoutSeconds", 300)),
                 None if drain is None else round(drain * 1000), spec.get("maxConnections", 10000),
                 ms(spec.get("resolveSeconds", 30)), spec.origin, spec.get("preconnect", 0))

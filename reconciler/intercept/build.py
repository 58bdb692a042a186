"""Building an Intercept from a schema-valid document."""

from __future__ import annotations

from reconciler.core.model import PROTOCOLS, network_order
from reconciler.intercept.model import Intercept, InterceptRule, Routing
from reconciler.load.build import DEFAULT_PRIORITY, Spec


def build_intercept(spec: Spec) -> Intercept | None:
    rules = []
    for i, r in enumerate(spec["rules"]):
        path = ("rules", i)
        proto = r.get("protocol", "tcp")
        if r["action"] == "redirect" and proto != "tcp":
            spec.problem((*path, "protocol"), "redirect takes TCP connections only (protocol: tcp)")
        rules.append(InterceptRule(
            r["priority"], r["action"],
            tuple(sorted(set(spec.prefixes(r.get("destinations", ["0.0.0.0/0"]),
                                           (*path, "destinations"), ipv6=True)),
                         key=network_order)),
            tuple(sorted(set(spec.port_ranges(r.get("ports", ["*"]), (*path, "ports"))))),
            tuple(PROTOCOLS.values()) if proto == "any" else (PROTOCOLS[proto],),
            tuple(sorted(set(spec.port_ranges(r.get("sourcePorts", []),
                                          (*path, "sourcePorts"))))),
            r.get("proxy")))
        if any(p.wildcard for p in rules[-1].source_ports):
            spec.problem((*path, "sourcePorts"), "\"*\" is the default of sourcePorts; leave it out")
    seen: dict[int, int] = {}
    for i, r in enumerate(spec["rules"]):
        if r["priority"] in seen:
            spec.problem(("rules", i, "priority"), f"priority {r['priority']} is also rule "
                                              f"{seen[r['priority']]}'s: the order would be "
                                              f"ambiguous")
        seen.setdefault(r["priority"], i)
    if spec["device"] == "lo":
        spec.problem(("device",), "lo cannot be intercepted: redirected connections are delivered "
                             "through it")
    rt = spec.get("routing", {})
    routing = Routing(rt.get("mark", 1), rt.get("proxyMark", 2), rt.get("table", 100),
                      rt.get("rulePriority", 100))
    if routing.mark & routing.proxy_mark:
        spec.problem(("routing", "proxyMark"), f"proxyMark {routing.proxy_mark:#x} shares bits with "
                                          f"mark {routing.mark:#x}: the data path's own "
                                          f"connections would be routed to lo")
    if 253 <= routing.table <= 255:
        spec.problem(("routing", "table"), f"table {routing.table} is one of the kernel's "
                                      f"(default 253, main 254, local 255)")
    if spec.bad:
        return None
    return Intercept(spec.name, spec["id"], spec["device"], spec.get("netns"),
                     spec.get("priority", DEFAULT_PRIORITY),
                     tuple(sorted(rules, key=lambda r: r.priority)), routing, spec.origin)

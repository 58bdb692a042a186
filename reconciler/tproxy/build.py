"""Building a TransparentProxy from a schema-valid document."""

from __future__ import annotations

from reconciler.core.model import network_order
from reconciler.load.build import Spec
from reconciler.tproxy.model import TrafficMatch, TransparentProxy


def build_transparent(spec: Spec) -> TransparentProxy | None:
    def matches(field: str) -> tuple[TrafficMatch, ...]:
        out = []
        for i, m in enumerate(spec.get(field, [])):
            out.append(TrafficMatch(
                tuple(sorted(set(spec.prefixes(m.get("destinations", ["0.0.0.0/0"]),
                                               (field, i, "destinations"), ipv6=True)),
                             key=network_order)),
                tuple(sorted(set(spec.port_ranges(m.get("ports", ["*"]),
                                              (field, i, "ports")))))))
        return tuple(out)

    intercept, exclude = matches("intercept"), matches("exclude")
    for path, cgroup in (("cgroup",), spec["cgroup"]), *(
            (("excludeCgroups", i), c) for i, c in enumerate(spec.get("excludeCgroups", []))):
        if {".", ".."} & set(cgroup.split("/")):
            spec.problem(path, f"{cgroup!r}: '.' and '..' are not cgroup names; write the path "
                          f"as /proc/PID/cgroup shows it")
    if spec.bad:
        return None
    return TransparentProxy(spec.name, spec["id"], spec["cgroup"], spec["proxy"], intercept, exclude,
                            tuple(spec.get("excludeCgroups", [])),
                            spec.get("whenProxyDown", "refuse") == "direct", spec.origin,
                            spec.get("ipv6", "direct") == "refuse")

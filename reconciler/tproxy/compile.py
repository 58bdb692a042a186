"""The cgroup transparent-proxy data path's entries: each TransparentProxy's configuration
(TP_CONFIG) and its intercept/exclude rules (TP_RULES, TP_RULES6 by family)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from reconciler.core.desired import CompileContext, DesiredTables
from reconciler.core.model import destination_ports
from reconciler.core.state import DesiredState
from reconciler.core.tables import slot_key
from reconciler.steering.model import Proxy
from reconciler.tproxy import tables as tpt
from reconciler.tproxy.cgroups import NAME, HostFacts, datapath_cgroup, level
from reconciler.tproxy.model import TrafficMatch, TransparentProxy

if TYPE_CHECKING:
    from pathlib import Path


def _rule_entries(out: DesiredTables, tp: TransparentProxy, kind: int,
                  matches: tuple[TrafficMatch, ...]) -> None:
    for m in matches:
        for net, port in destination_ports(m.destinations, m.ports):
            key = tpt.tp_rule_key(tp.id, kind, port, str(net.network_address), net.prefixlen)
            out.put(tpt.tp_rules_table(net), key, tpt.tp_rule_value(key, tp.id), tp.ref)


def _transparent(out: DesiredTables, state: DesiredState, facts: HostFacts,
                 pin_root: Path) -> None:
    """A TransparentProxy's configuration needs its Proxy's namespace (its cookie): without
    it nothing is written, and the attach plan says what is waited for."""
    if facts.netns_cookie is None:
        return
    mine = datapath_cgroup(pin_root)
    for tp in sorted(state.of(TransparentProxy).values(), key=lambda x: x.id):
        proxy = state.of(Proxy)[tp.proxy]
        excluded = [(facts.cgroup_ids[c], level(c)) for c in (mine, *tp.exclude_cgroups)
                    if c in facts.cgroup_ids]
        key = slot_key(tp.id)
        out.put(tpt.TP_CONFIG, key, tpt.tp_config_value(key, proxy.id, tp.fail_open,
                                                    facts.netns_cookie, excluded,
                                                    tp.refuse_ipv6), tp.ref)
        _rule_entries(out, tp, tpt.TP_KIND_INTERCEPT, tp.intercept)
        _rule_entries(out, tp, tpt.TP_KIND_EXCLUDE, tp.exclude)


def compile_tproxy(out: DesiredTables, state: DesiredState, context: CompileContext) -> None:
    """Needs the host facts and pin root (context); without them nothing is compiled."""
    facts = (context.facts or {}).get(NAME)
    if state.of(TransparentProxy) and facts is not None and context.pin_root is not None:
        _transparent(out, state, facts, context.pin_root)

"""The port-steering data path's entries: each Proxy's configuration (PS_PROXY) and its
steering trie entries (PS_DEST)."""

from __future__ import annotations

from reconciler.core.desired import CompileContext, DesiredTables
from reconciler.core.model import destination_ports
from reconciler.core.state import DesiredState
from reconciler.core.tables import slot_key
from reconciler.intercept.model import Intercept
from reconciler.steering import proxyconf
from reconciler.steering import tables as st
from reconciler.steering.model import Proxy


def compile_steering(out: DesiredTables, state: DesiredState, _context: CompileContext) -> None:
    marks = proxy_marks(state)
    for proxy in sorted(state.of(Proxy).values(), key=lambda x: x.id):
        skey = slot_key(proxy.id)
        out.put(st.PROXY, skey, st.proxy_value(skey, proxyconf.encode(proxy, marks.get(proxy.name))),
                proxy.ref)
        for net, port in destination_ports(proxy.destinations, proxy.ports):
            key = st.steer_key(port, str(net.network_address), net.prefixlen)
            out.put(st.steer_table(net), key, st.steer_value(key, proxy.id), proxy.ref)


def proxy_marks(state: DesiredState) -> dict[str, int]:
    """SO_MARK of the connections of Proxies that Intercepts redirect to (never intercepted
    themselves): the proxyMark of their namespace's Intercepts."""
    return {r.proxy: ic.routing.proxy_mark for ic in state.of(Intercept).values()
            for r in ic.rules if r.proxy}

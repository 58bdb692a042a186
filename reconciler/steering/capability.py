"""The port-steering data path (proxify): sk_lookup steering of ports to a Proxy's listener."""

from __future__ import annotations

from reconciler.core.capability import Capability, Kind
from reconciler.steering import tables as st
from reconciler.steering.attach import STEERING_LINK
from reconciler.steering.build import build_proxy
from reconciler.steering.checks import cross_check
from reconciler.steering.compile import compile_steering
from reconciler.steering.inventory import proxies
from reconciler.steering.model import Proxy
from reconciler.steering.status import steering_status, steering_status_lines

STEERING = Capability(
    name="steering",
    kinds=(Kind("Proxy", "proxies", Proxy, build_proxy,
                inventory=lambda observed, _keys_dir: proxies(observed), programs=True,
                kernel_ref=lambda proxy: proxy.ref),),
    entries=(st.PROXY, st.STEER, st.STEER6),
    maps=(st.SOCKETS, st.SOCKETS6, st.PS_STATS),
    # a proxy's configuration is written before its steering entries and deleted after them
    upserts=(st.PROXY, st.STEER, st.STEER6),
    deletes=(st.STEER, st.STEER6, st.PROXY),
    codecs=st.CODECS,
    summarized=(st.STEER, st.STEER6),
    cross_check=cross_check,
    status=steering_status,
    status_lines=steering_status_lines,
    compile=compile_steering,
    attachments=STEERING_LINK,
)

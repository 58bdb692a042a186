"""The cgroup transparent-proxy data path (Pipy's): connect() of a cgroup sent to a Proxy."""

from __future__ import annotations

from reconciler.core.capability import Capability, Kind
from reconciler.core.tables import id_ref
from reconciler.tproxy import host
from reconciler.tproxy import tables as tpt
from reconciler.tproxy.attach import CGROUP_LINKS
from reconciler.tproxy.build import build_transparent
from reconciler.tproxy.cgroups import NAME
from reconciler.tproxy.checks import cross_check
from reconciler.tproxy.compile import compile_tproxy
from reconciler.tproxy.model import TransparentProxy
from reconciler.tproxy.status import tproxy_status, tproxy_status_lines

TPROXY = Capability(
    name=NAME,
    kinds=(Kind("TransparentProxy", "transparent proxies", TransparentProxy,
                build_transparent, programs=True,
                kernel_ref=lambda tp: id_ref("TransparentProxy", tp.id)),),
    entries=(tpt.TP_CONFIG, tpt.TP_RULES, tpt.TP_RULES6),
    maps=(tpt.TP_CONNS, tpt.TP_CONNS6, tpt.TP_STATS, tpt.TP6_STATS),
    created_by_bcc=(tpt.TP_ORIG, tpt.TP_ORIG6),
    upserts=(tpt.TP_CONFIG, tpt.TP_RULES, tpt.TP_RULES6),
    deletes=(tpt.TP_RULES, tpt.TP_RULES6, tpt.TP_CONFIG),
    codecs=tpt.CODECS,
    summarized=(tpt.TP_RULES, tpt.TP_RULES6),
    cross_check=cross_check,
    status=tproxy_status,
    status_lines=tproxy_status_lines,
    compile=compile_tproxy,
    facts=host.facts,
    attachments=CGROUP_LINKS,
    destroy=host.destroy,
)

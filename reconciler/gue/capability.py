"""The GUE data path (TrueIngress): tunnels, services, the interfaces its TC programs run on."""

from __future__ import annotations

from reconciler.core.capability import Capability, Kind, TcPrograms
from reconciler.gue import hooks, programs
from reconciler.gue import tables as gt
from reconciler.gue.build import (
    build_interface,
    build_service,
    build_tunnel,
    interface_row,
    interface_unrow,
    service_row,
    service_unrow,
    tunnel_row,
    tunnel_unrow,
)
from reconciler.gue.checks import cross_check
from reconciler.gue.compile import compile_gue
from reconciler.gue.inventory import services, tunnels
from reconciler.gue.model import Interface, Service, Tunnel
from reconciler.gue.status import gue_status, gue_status_lines

GUE = Capability(
    name="gue",
    kinds=(Kind("Tunnel", "tunnels", Tunnel, build_tunnel, tunnel_row, tunnel_unrow, tunnels,
                kernel_ref=lambda t: gt.tunnel_ref(t.id), capacity="tunnels"),
           Kind("Service", "services", Service, build_service, service_row, service_unrow,
                services, kernel_ref=lambda s: gt.service_ref(s.group_id, s.service_id),
                capacity="services"),
           Kind("Interface", "interfaces", Interface, build_interface, interface_row,
                interface_unrow, programs=True)),
    entries=(gt.TUNNEL, gt.DECAP, gt.TUNNEL6, gt.DECAP6, gt.VERIFY, gt.ENCAP, gt.REPLY,
             gt.VERIFY6, gt.ENCAP6, gt.REPLY6, gt.NEXT_KEY_TABLE, gt.LEARNED, gt.LEARNED6),
    maps=(gt.STATS, gt.FRESH),
    # A second accepted key is written before the slot it may move out of (compile.py keeps
    # the two accepted keys in a fixed order, so a rotation never drops a key still in use);
    # tunnels and decap entries before the services that use them, and deleted after them.
    upserts=(gt.NEXT_KEY_TABLE, gt.TUNNEL, gt.TUNNEL6, gt.DECAP, gt.DECAP6, gt.VERIFY,
             gt.VERIFY6, gt.ENCAP, gt.ENCAP6, gt.REPLY, gt.REPLY6),
    deletes=(gt.REPLY, gt.REPLY6, gt.ENCAP, gt.ENCAP6, gt.NEXT_KEY_TABLE, gt.VERIFY,
             gt.VERIFY6, gt.TUNNEL, gt.TUNNEL6, gt.DECAP, gt.DECAP6),
    codecs=gt.CODECS,
    cross_check=cross_check,
    status=gue_status,
    status_lines=gue_status_lines,
    compile=compile_gue,
    tc=TcPrograms("Interface", hooks.ProgramConfig, frozenset(hooks.FUNCTIONS.values()),
                  hooks.wanted, programs.compiled),
)

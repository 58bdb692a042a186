"""IPv6 Services in the pure core: the family chooses ti_encap6/ti_verify6/ti_reply6, both
families in one directory plan and diff apart, addresses are compared in one spelling, and
what the data path cannot carry is refused where it is written."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from reconciler.core.compile import compile_tables
from reconciler.core.planning import compute_plan
from reconciler.datapath import pinger
from reconciler.gue import hooks
from reconciler.gue import tables as gt
from reconciler.gue.inventory import services, tunnels
from reconciler.gue.model import Service
from tests.unit.helpers import load_docs as load
from tests.unit.helpers import problems, service, tunnel

NODE = ("apiVersion: bpfsync/v1\nkind: Interface\nmetadata: {name: up}\n"
        "spec: {device: eth0, role: node}\n")


def v6(name: str = "web6", sid: int = 6, proxy: str = "2001:db8:10::10",
       backend: str = "2001:db8:10::100") -> str:
    return service(name, sid=sid, proxy=f"'{proxy}'", backend=f"'{backend}'")



def test_an_ipv6_service_fills_the_ipv6_tables_only(tmp_path: Path) -> None:
    state = load(tmp_path, t=tunnel(), s=service(), s6=v6(), i=NODE)
    desired = compile_tables(state)
    e = desired.entries
    assert [len(e[s.name]) for s in (gt.ENCAP, gt.VERIFY, gt.REPLY)] == [1, 1, 1]
    assert [len(e[s.name]) for s in (gt.ENCAP6, gt.VERIFY6, gt.REPLY6)] == [1, 1, 1]
    ekey = gt.endpoint_key("2001:db8:10::10", 80, 6)
    assert ekey == socket.inet_pton(socket.AF_INET6, "2001:db8:10::10") + bytes([0, 80, 6, 0])
    assert ekey in e[gt.ENCAP6.name]
    assert gt.decode_endpoint(next(iter(e[gt.REPLY6.name]))) == {
        "address": "2001:db8:10::100", "port": 8080, "protocol": "tcp"}
    assert desired.owners[gt.ENCAP6.name][ekey] == "Service/web6"
    # read back as `get services` shows them: both families, brackets-free addresses
    docs = {d["metadata"]["name"]: d["spec"] for d in services(desired.entries)}
    assert docs["web6"]["proxy"] == {"address": "2001:db8:10::10", "port": 80}
    assert docs["web6"]["backend"] == {"address": "2001:db8:10::100", "port": 8080}
    assert docs["web"]["backend"] == {"address": "198.51.100.20", "port": 8080}


def test_mixed_families_plan_apart_and_are_in_sync_after(tmp_path: Path) -> None:
    # the planner is (desired, observed): an IPv4-only kernel, then both families declared
    v4only = compile_tables(load(tmp_path / "a", t=tunnel(), s=service()))
    both = compile_tables(load(tmp_path / "b", t=tunnel(), s=service(), s6=v6()))
    plan = compute_plan(both, v4only.entries)
    assert {(op.table, op.owner) for op in plan.operations} == {
        (gt.VERIFY6.name, "Service/web6"), (gt.ENCAP6.name, "Service/web6"),
        ("bs_names", "Service/web6")}  # its declared name beside it
    assert not compute_plan(both, both.entries).operations
    # the IPv6 proxy moves: one IPv6 entry replaced, nothing of IPv4 touched
    moved = compile_tables(load(tmp_path / "c", t=tunnel(), s=service(),
                                s6=v6(proxy="2001:db8:10::11")))
    ops = compute_plan(moved, both.entries).operations
    assert {op.table for op in ops} <= {gt.ENCAP6.name, "bs_names"}
    assert [(op.action.name, op.key) for op in ops if op.table == gt.ENCAP6.name] == [
        ("CREATE", gt.endpoint_key("2001:db8:10::11", 80, 6)),
        ("DELETE", gt.endpoint_key("2001:db8:10::10", 80, 6))]


def test_one_address_in_two_spellings_is_one_endpoint(tmp_path: Path) -> None:
    state = load(tmp_path, t=tunnel(), s6=v6(proxy="2001:DB8:10:0::10"))
    assert state.of(Service)["web6"].proxy.address == "2001:db8:10::10"
    out = problems(tmp_path / "b", t=tunnel(), s6=v6(),
                   s7=v6("web7", sid=7, proxy="2001:db8:10:0:0:0:0:10", backend="2001:db8::7"))
    assert "proxy endpoint [2001:db8:10::10]:80/tcp" in out and "s7.yaml" in out


@pytest.mark.parametrize(("proxy", "backend", "where", "says"), [
    ("2001:db8:10::10", "198.51.100.20", "backend.address", "different families"),
    ("::ffff:203.0.113.10", "2001:db8::1", "proxy.address", "write 203.0.113.10"),
    ("fe80::1", "2001:db8::1", "proxy.address", "link-local"),
    ("2001:db8::1", "ff02::1", "backend.address", "not a unicast address"),
    ("2001:db8::1", "::", "backend.address", "not a unicast address"),
    ("2001:db8::g", "2001:db8::1", "proxy.address", "is not an IPv4 or IPv6 address"),
])
def test_what_the_data_path_cannot_carry_is_refused_where_it_stands(
        tmp_path: Path, proxy: str, backend: str, where: str, says: str) -> None:
    out = problems(tmp_path, t=tunnel(), s6=v6(proxy=proxy, backend=backend))
    assert f"spec.{where}" in out and says in out, out
    assert "s6.yaml:" in out


def test_a_service_id_is_unique_across_families(tmp_path: Path) -> None:
    out = problems(tmp_path, t=tunnel(), s=service(), s6=v6(sid=1))
    assert "(groupId 1, serviceId 1)" in out


TUNNEL6 = """\
apiVersion: bpfsync/v1
kind: Tunnel
metadata: {{name: t1}}
spec:
  id: 100
  local: {{address: '2001:db8:1::1'}}
  remote: {remote}
  keyFrom: {{file: web.key}}
{extra}"""


def tunnel6(remote: str = "{address: '2001:DB8:1::2', port: 7000}",
            extra: str = "  zeroChecksum: true\n") -> str:
    return TUNNEL6.format(remote=remote, extra=extra)


def test_an_ipv6_underlay_fills_the_ipv6_tunnel_tables(tmp_path: Path) -> None:
    state = load(tmp_path, t=tunnel6(), s=service(), s6=v6(), i=NODE)
    e = compile_tables(state).entries
    assert not e[gt.TUNNEL.name] and not e[gt.DECAP.name]
    (key, value), = e[gt.TUNNEL6.name].items()
    assert key == gt.tunnel_key(100) and len(value) == gt.TUNNEL6.value_size
    assert value[:32] == b"".join(socket.inet_pton(socket.AF_INET6, a)
                                  for a in ("2001:db8:1::1", "2001:db8:1::2"))
    assert gt.decode_endpoint(next(iter(e[gt.DECAP6.name]))) == {
        "address": "2001:db8:1::1", "port": 6080, "protocol": "udp"}
    # both families of Services ride it; `get tunnels` gives back a document that validates
    assert len(e[gt.ENCAP.name]) == len(e[gt.ENCAP6.name]) == 1
    doc, = tunnels(e)
    assert doc["spec"]["local"] == {"address": "2001:db8:1::1", "port": 6080}
    assert doc["spec"]["remote"] == {"address": "2001:db8:1::2", "port": 7000}
    assert doc["spec"]["zeroChecksum"] is True
    # the MTU check counts the IPv6 underlay's 76 bytes on every encapsulating egress
    assert {w.overhead for w in hooks.wanted(state) if w.overhead} == {gt.GUE_OVERHEAD6} == {76}


def test_pings_go_to_ipv6_remotes(tmp_path: Path) -> None:
    state = load(tmp_path, t=tunnel6(extra="  zeroChecksum: true\n  ping: {intervalSeconds: 2}\n"))
    target = pinger.targets(compile_tables(state).entries[gt.TUNNEL6.name])[100]
    assert (target.local, target.remote) == (("2001:db8:1::1", 6080), ("2001:db8:1::2", 7000))
    assert target.describe() == "tunnel 100 [2001:db8:1::1]:6080 -> [2001:db8:1::2]:7000 every 2s"


@pytest.mark.parametrize(("doc", "where", "says"), [
    (tunnel6(extra=""), "local.address", "zeroChecksum: true on both ends"),
    (tunnel6("{address: 192.0.2.2}"), "remote.address", "of different families"),
    (tunnel6("{address: '::ffff:192.0.2.2'}"), "remote.address", "write 192.0.2.2"),
])
def test_an_ipv6_underlay_is_declared_whole(tmp_path: Path, doc: str, where: str,
                                            says: str) -> None:
    out = problems(tmp_path, t=doc)
    assert "t.yaml:" in out and f"spec.{where}" in out and says in out, out

"""IPv6 port steering in the pure core: prefixes and backends of both families, the ps_dest6
trie's entries, plans that touch one family only, get's view, the checks across families."""

from __future__ import annotations

import ipaddress
import socket
from collections import Counter
from pathlib import Path

import pytest

from reconciler.core import registry
from reconciler.core.compile import compile_tables
from reconciler.core.plan import Action
from reconciler.core.planning import compute_plan
from reconciler.datapath.addresses import family, is_address
from reconciler.steering import proxyconf
from reconciler.steering import tables as st
from reconciler.steering.inventory import proxies
from reconciler.steering.model import Proxy, hostport, split_backend
from tests.unit.helpers import load_docs as load
from tests.unit.helpers import problems

PROXY = """\
apiVersion: bpfsync/v1
kind: Proxy
metadata: {{name: {name}}}
spec:
  id: {id}
  ports: [443, "*"]
{destinations}  backends: [{backends}]
"""


def doc(name: str = "web", pid: int = 1,
        destinations: str = "  destinations: [203.0.113.0/24, '2001:db8:1::/48']\n",
        backends: str = '"[2001:db8::10]:8080", "192.0.2.10:8080"') -> str:
    return PROXY.format(name=name, id=pid, destinations=destinations, backends=backends)



def test_each_family_goes_to_its_own_trie_with_the_documented_key(tmp_path: Path) -> None:
    state = load(tmp_path, web=doc())
    p = state.of(Proxy)["web"]
    assert [str(d) for d in p.destinations] == ["203.0.113.0/24", "2001:db8:1::/48"]
    desired = compile_tables(state)
    assert len(desired.entries[st.STEER.name]) == 2 and len(desired.entries[st.STEER6.name]) == 2
    key = st.steer_key(443, "2001:db8:1::", 48)
    # bpf/README.md: prefixlen u32 host order (32 + 48), proto, pad, port big-endian, address
    assert key == ((32 + 48).to_bytes(4, "little") + bytes([6, 0]) + (443).to_bytes(2, "big")
                   + socket.inet_pton(socket.AF_INET6, "2001:db8:1::"))
    assert len(key) == st.STEER6.key_size == 24
    assert key in desired.entries[st.STEER6.name]
    assert registry.decode_key(st.STEER6.name, key) == {
        "port": 443, "protocol": "tcp", "prefix": "2001:db8:1::/48"}
    assert registry.decode_value(st.STEER6.name, desired.entries[st.STEER6.name][key]) == {
        "slot": 1}


def test_default_destinations_are_every_address_of_both_families(tmp_path: Path) -> None:
    state = load(tmp_path, web=doc(destinations=""))
    assert [str(d) for d in state.of(Proxy)["web"].destinations] == ["0.0.0.0/0", "::/0"]
    desired = compile_tables(state)
    assert st.steer_key(0, "::", 0) in desired.entries[st.STEER6.name]
    assert st.steer_key(0, "0.0.0.0", 0) in desired.entries[st.STEER.name]


def test_an_ipv6_change_writes_only_the_ipv6_trie(tmp_path: Path) -> None:
    before = compile_tables(load(tmp_path / "a", web=doc()))
    observed = {name: dict(entries) for name, entries in before.entries.items()}
    assert compute_plan(before, observed).operations == []
    after = compile_tables(load(tmp_path / "b", web=doc(
        destinations="  destinations: [203.0.113.0/24, '2001:db8:2::/48']\n")))
    plan = compute_plan(after, observed)
    assert Counter((op.action, op.table) for op in plan.operations) == {
        (Action.CREATE, st.STEER6.name): 2, (Action.DELETE, st.STEER6.name): 2}
    assert {op.owner for op in plan.operations} == {"Proxy/web"}


def test_get_reads_both_families_back(tmp_path: Path) -> None:
    observed = {n: dict(e) for n, e in compile_tables(load(tmp_path, web=doc())).entries.items()}
    (web,) = proxies(observed)
    assert web["spec"]["destinations"] == ["203.0.113.0/24", "2001:db8:1::/48"]
    assert web["spec"]["backends"] == ["[2001:db8::10]:8080", "192.0.2.10:8080"]
    assert web["status"]["steering"]["entries"] == 4


def test_backends_of_both_families_reach_the_data_path_without_brackets(tmp_path: Path) -> None:
    state = load(tmp_path, web=doc())
    rc = proxyconf.decode(1, proxyconf.encode(state.of(Proxy)["web"]))
    assert rc.backends == (("2001:db8::10", 8080), ("192.0.2.10", 8080))
    assert [hostport(*b) for b in rc.backends] == ["[2001:db8::10]:8080", "192.0.2.10:8080"]
    assert split_backend("app.internal:80") == ("app.internal", 80)
    assert is_address("2001:db8::10") and is_address("192.0.2.1")
    assert not is_address("app.internal") and not is_address("2001:db8::g")
    assert family("2001:db8::10") == socket.AF_INET6 and family("192.0.2.1") == socket.AF_INET


@pytest.mark.parametrize(("destinations", "backends", "said"), [
    ("['2001:db8::1/48']", '"192.0.2.1:80"', "did you mean 2001:db8::/48?"),
    ("['::ffff:192.0.2.0/120']", '"192.0.2.1:80"', "IPv4-mapped: such connections travel as "
                                                   "IPv4; write 192.0.2.0/24"),
    ("['2001:db8::/129']", '"192.0.2.1:80"', "is not an IPv4 or IPv6 prefix"),
    ("['2001:db8::/32']", '"[ff02::1]:80"', "ff02::1 is not a unicast address"),
    ("['2001:db8::/32']", '"[::]:80"', ":: is not a unicast address"),
    ("['2001:db8::/32']", '"[::ffff:192.0.2.1]:80"', "IPv4-mapped: write 192.0.2.1"),
    ("['2001:db8::/32']", '"[2001:db8::1::2]:80"', "is not an IPv6 address"),
    ("['2001:db8::/32']", '"[2001:db8::1]:70000"', "port must be 1-65535"),
    ("['2001:db8::/32']", '"2001:db8::1:80"', "backends"),  # brackets required: schema
])
def test_bad_ipv6_input_is_a_located_problem(tmp_path: Path, destinations: str, backends: str,
                                             said: str) -> None:
    text = problems(tmp_path, web=doc(destinations=f"  destinations: {destinations}\n",
                                  backends=backends))
    assert said in text and "web.yaml:" in text


def test_overlap_is_per_family_and_capacity_per_trie(tmp_path: Path) -> None:
    # the same ports on both families of two Proxies do not overlap...
    load(tmp_path / "a", a=doc("a", 1, "  destinations: [0.0.0.0/0]\n"),
         b=doc("b", 2, "  destinations: ['::/0']\n"))
    # ...but two IPv6 prefixes that contain one another do
    text = problems(tmp_path / "b", a=doc("a", 1, "  destinations: ['2001:db8::/32']\n"),
                    b=doc("b", 2, "  destinations: ['2001:db8:5::/48']\n"))
    assert "also steered by Proxy/a" in text
    # 65535 ports x 5 IPv6 prefixes: more than ps_dest6 holds, said with the table's name
    many = "\n".join(f"    - 2001:db8:{i}::/48" for i in range(1, 6))
    text = problems(tmp_path / "c", a=PROXY.format(
        name="a", id=1, destinations=f"  destinations:\n{many}\n", backends='"192.0.2.1:80"'
    ).replace('[443, "*"]', '["1-65535"]'))
    assert "IPv6 destinations" in text and "ps_dest6" in text


def test_network_order_puts_ipv4_first() -> None:
    from reconciler.core.model import network_order
    nets = [ipaddress.ip_network(x) for x in ("2001:db8::/32", "198.51.100.0/24", "::/0",
                                              "0.0.0.0/0")]
    assert [str(n) for n in sorted(nets, key=network_order)] == [
        "0.0.0.0/0", "198.51.100.0/24", "::/0", "2001:db8::/32"]

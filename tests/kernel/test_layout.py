"""bpf/trueingress.h and reconciler/core/tables.py must describe the same bytes: compile the header
with BCC (as the data-path programs will be) and compare sizes and field offsets."""

from __future__ import annotations

import ctypes
import socket
from pathlib import Path
from typing import Any

from reconciler.core import registry
from reconciler.core import tables as t
from reconciler.gue import tables as gt
from reconciler.intercept import tables as ict
from reconciler.kernel.bcc_env import ensure_kernel_source
from reconciler.load.secrets import Secret
from reconciler.steering import tables as st
from reconciler.tproxy import tables as tpt

HEADER = Path(__file__).resolve().parents[2] / "bpf" / "trueingress.h"
STEER_HEADER = HEADER.with_name("steer.h")

PROGRAM = f"""
#include "{HEADER}"
BPF_HASH(ti_encap, struct ti_endpoint, struct ti_service, 4);
BPF_HASH(ti_verify, struct ti_sid, struct ti_verify, 4);
BPF_HASH(ti_tunnel, __be32, struct ti_tunnel, 4);
BPF_HASH(ti_decap, struct ti_endpoint, struct ti_decap, 4);
BPF_HASH(ti_learned, __be32, struct ti_learned, 4);
BPF_HASH(ti_reply, struct ti_endpoint, struct ti_reply, 4);
BPF_HASH(ti_next, struct ti_next_key, struct ti_next, 4);
BPF_HASH(ti_fresh, __be32, struct ti_fresh, 4);
BPF_HASH(ti_encap6, struct ti_endpoint6, struct ti_service, 4);
BPF_HASH(ti_verify6, struct ti_sid, struct ti_verify6, 4);
BPF_HASH(ti_reply6, struct ti_endpoint6, struct ti_reply6, 4);
BPF_HASH(ti_tunnel6, __be32, struct ti_tunnel6, 4);
BPF_HASH(ti_decap6, struct ti_endpoint6, struct ti_decap, 4);
BPF_HASH(ti_learned6, __be32, struct ti_learned6, 4);
BPF_ARRAY(ti_stats, u64, TI_STATS_SLOTS);
BPF_HASH(gue_data, struct ti_gue_hdr, struct ti_gue_data, 1);
BPF_HASH(gue_ping, u32, struct ti_gue_ping, 1);
BPF_ARRAY(stat_max, u32, TI_STAT_MAX);
int unused(void *ctx) {{ return 0; }}
"""

def test_header_matches_python_layout() -> None:
    ensure_kernel_source()
    from bcc import BPF

    bpf = BPF(text=PROGRAM.encode())
    try:
        for spec in (x for x in registry.PINNED if x.name.startswith("ti_")):
            table = bpf[spec.name.encode()]
            if spec is gt.STATS:
                assert ctypes.sizeof(table.Leaf) == spec.value_size
                assert table.max_entries == spec.max_entries
                continue
            assert ctypes.sizeof(table.Key) == spec.key_size, spec.name
            assert ctypes.sizeof(table.Leaf) == spec.value_size, spec.name
        _encoders_fill_the_c_structs(bpf)
        # GUE wire structs: 4-byte base header, 24-byte data and 20-byte ping private data.
        assert ctypes.sizeof(bpf[b"gue_data"].Key) == 4
        assert ctypes.sizeof(bpf[b"gue_data"].Leaf) == 4 * gt.GUE_DATA_HLEN
        assert ctypes.sizeof(bpf[b"gue_ping"].Leaf) == 4 * gt.GUE_PING_HLEN
        assert bpf[b"stat_max"].max_entries == len(gt.STAT_NAMES) <= gt.STATS_SLOTS
        # Same capacities in C and Python.
        text = HEADER.read_text()
        assert f"#define TI_MAX_SERVICES {gt.MAX_SERVICES}" in text
        assert f"#define TI_MAX_TUNNELS {gt.MAX_TUNNELS}" in text
        assert f"#define TI_TUNNEL_LEARN 0x{gt.TUNNEL_FLAG_LEARN:x}" in text
        assert f"#define TI_TUNNEL_PING 0x{gt.TUNNEL_FLAG_PING:x}" in text
        assert f"#define TI_TUNNEL_KEYED 0x{gt.TUNNEL_FLAG_KEYED:x}" in text
        assert f"#define TI_TUNNEL_SEND_NEXT 0x{gt.TUNNEL_FLAG_SEND_NEXT:x}" in text
        assert f"#define TI_STATS_SLOTS {gt.STATS_SLOTS}" in text
        assert f"#define TI_GUE_CTYPE_PING {gt.GUE_CTYPE_PING}" in text
        assert f"#define TI_NEXT_TUNNEL {gt.NEXT_TUNNEL}" in text
        assert f"#define TI_NEXT_SERVICE {gt.NEXT_SERVICE}" in text
        assert f"#define TI_PING_WINDOW_NS ({gt.PING_WINDOW_S}ULL * 1000000000ULL)" in text
        # Counter names follow the enum's order.
        enum = text[text.index("enum ti_stat {"):text.index("TI_STAT_MAX,")]
        names = [line.split()[0].rstrip(",").removeprefix("TI_STAT_").lower()
                 for line in enum.splitlines()[1:] if line.strip().startswith("TI_STAT_")]
        assert names == list(gt.STAT_NAMES)
    finally:
        bpf.cleanup()


STEER_PROGRAM = f"""
#include "{STEER_HEADER}"
BPF_HASH(ps_dest, struct ps_dest_key, struct ps_dest, 4);
BPF_HASH(ps_dest6, struct ps_dest6_key, struct ps_dest, 4);
BPF_ARRAY(counters, u32, PS_COUNTERS);
int unused(void *ctx) {{ return 0; }}
"""


def test_steering_header_matches_python_layout() -> None:
    ensure_kernel_source()
    from bcc import BPF

    bpf = BPF(text=STEER_PROGRAM.encode())
    try:
        for name, spec in ((b"ps_dest", st.STEER), (b"ps_dest6", st.STEER6)):
            table = bpf[name]
            assert ctypes.sizeof(table.Key) == spec.key_size
            assert ctypes.sizeof(table.Leaf) == spec.value_size
            assert {n: getattr(table.Key, n).offset for n, *_ in table.Key._fields_} == {
                "prefixlen": 0, "proto": 4, "pad": 5, "port": 6, "addr": 8}
        # The trie key Python writes: a /24 on port 8080 counts 32 + 24 bits.
        key = bpf[b"ps_dest"].Key.from_buffer_copy(st.steer_key(8080, "203.0.113.0", 24))
        assert (key.prefixlen, key.proto, key.port, key.addr) == (
            56, 6, 0x901F, 0x007100CB)  # port and address big-endian in memory
        # The IPv6 key Python writes: a /48 on port 443 counts 32 + 48 bits.
        key6 = bpf[b"ps_dest6"].Key.from_buffer_copy(st.steer_key(443, "2001:db8:7::", 48))
        assert (key6.prefixlen, key6.proto, key6.port) == (80, 6, 0xBB01)
        assert bytes(key6)[8:] == bytes.fromhex("20010db8000700000000000000000000")
        assert list(key6.addr) == [0xB80D0120, 0x0700, 0, 0]  # u32s as the program reads
        assert bpf[b"counters"].max_entries == st.PS_COUNTERS == len(st.PS_STAT_NAMES)
        text = STEER_HEADER.read_text()
        assert f"#define PS_MAX_DEST {st.MAX_STEER}" in text
        assert f"#define PS_MAX_PROXIES {st.MAX_PROXIES}" in text
    finally:
        bpf.cleanup()


TPROXY_HEADER = HEADER.with_name("tproxy.h")
TPROXY_PROGRAM = f"""
#include "{TPROXY_HEADER}"
BPF_HASH(tp_rules, struct tp_rule_key, struct tp_rule, 4);
BPF_HASH(tp_config, u32, struct tp_config, 4);
BPF_HASH(tp_conns, struct tp_conn_key, struct tp_orig, 4);
BPF_HASH(tp_rules6, struct tp_rule6_key, struct tp_rule, 4);
BPF_HASH(tp_conns6, struct tp_conn6_key, struct tp_orig6, 4);
int unused(void *ctx) {{ return 0; }}
"""


def test_tproxy_header_matches_python_layout() -> None:
    ensure_kernel_source()
    from bcc import BPF

    bpf = BPF(text=TPROXY_PROGRAM.encode())
    try:
        for spec in (tpt.TP_RULES, tpt.TP_CONFIG, tpt.TP_CONNS, tpt.TP_RULES6, tpt.TP_CONNS6):
            table = bpf[spec.name.encode()]
            assert ctypes.sizeof(table.Key) == spec.key_size, spec.name
            assert ctypes.sizeof(table.Leaf) == spec.value_size, spec.name
        assert ctypes.sizeof(bpf[b"tp_conns"].Leaf) == tpt.TP_ORIG.value_size
        assert ctypes.sizeof(bpf[b"tp_conns6"].Leaf) == tpt.TP_ORIG6.value_size
        key6 = bpf[b"tp_rules6"].Key.from_buffer_copy(
            tpt.tp_rule_key(3, tpt.TP_KIND_INTERCEPT, 443, "2001:db8::", 32))
        assert (key6.prefixlen, key6.kind, key6.tp, key6.port) == (
            64, tpt.TP_KIND_INTERCEPT, 3, 0xBB01)
        assert bytes(key6)[8:] == bytes.fromhex("20010db8" + "00" * 12)
        conn6 = bpf[b"tp_conns6"]
        assert {n: getattr(conn6.Key, n).offset for n, *_ in conn6.Key._fields_} == {
            "client_ip": 0, "proxy_ip": 16, "client_port": 32, "proxy_port": 34}
        assert {n: getattr(conn6.Leaf, n).offset for n, *_ in conn6.Leaf._fields_} == {
            "addr": 0, "port": 16, "tp": 18}
        config = bpf[b"tp_config"].Leaf
        assert {n: getattr(config, n).offset for n, *_ in config._fields_} == {
            "slot": 0, "flags": 4, "netns_cookie": 8, "cgroup_id": 16, "cgroup_level": 48,
            "pad": 64, "stamp": 68}
        value = config.from_buffer_copy(tpt.tp_config_value(b"\1\0\0\0", 7, True, 99, [(5, 2)]))
        assert (value.slot, value.flags, value.netns_cookie) == (7, tpt.TP_FLAG_FAIL_OPEN, 99)
        assert (value.cgroup_id[0], value.cgroup_level[0], value.cgroup_id[1]) == (5, 2, 0)
        key = bpf[b"tp_rules"].Key.from_buffer_copy(
            tpt.tp_rule_key(3, tpt.TP_KIND_EXCLUDE, 443, "198.51.100.0", 24))
        assert (key.prefixlen, key.kind, key.tp, key.port, key.addr) == (
            56, tpt.TP_KIND_EXCLUDE, 3, 0xBB01, 0x006433C6)
        conn = bpf[b"tp_conns"]
        assert {n: getattr(conn.Key, n).offset for n, *_ in conn.Key._fields_} == {
            "client_ip": 0, "proxy_ip": 4, "client_port": 8, "proxy_port": 10}
        text = TPROXY_HEADER.read_text()
        for name, value in (("TP_MAX", tpt.TP_MAX), ("TP_MAX_RULES", tpt.TP_MAX_RULES),
                            ("TP_MAX_CONNS", tpt.TP_MAX_CONNS), ("TP_COUNTERS", tpt.TP_COUNTERS),
                            ("TP_EXCLUDE_CGROUPS", tpt.TP_EXCLUDE_CGROUPS),
                            ("TP_KIND_INTERCEPT", tpt.TP_KIND_INTERCEPT),
                            ("TP_KIND_EXCLUDE", tpt.TP_KIND_EXCLUDE),
                            ("TP_FLAG_FAIL_OPEN", tpt.TP_FLAG_FAIL_OPEN)):
            assert f"#define {name} {value} " in text or f"#define {name} {value}\n" in text
        enum = text[text.index("enum tp_stat {"):]
        names = [line.split()[0].removeprefix("TP_STAT_").lower()
                 for line in enum.splitlines()[1:] if line.strip().startswith("TP_STAT_")]
        assert names == list(tpt.TP_STAT_NAMES)
    finally:
        bpf.cleanup()


INTERCEPT_HEADER = HEADER.with_name("intercept.h")
INTERCEPT_PROGRAM = f"""
#include "{INTERCEPT_HEADER}"
BPF_HASH(ic_rules, struct ic_key, struct ic_rule, 4);
BPF_HASH(ic_syn, struct ic_flow, struct ic_pending, 4);
BPF_HASH(ic_rules6, struct ic_key6, struct ic_rule, 4);
BPF_HASH(ic_syn6, struct ic_flow6, struct ic_pending, 4);
BPF_HASH(ic_host, struct {{ char name[64]; }}, struct ic_host, 4);
int unused(void *ctx) {{ return 0; }}
"""


def test_intercept_header_matches_python_layout() -> None:
    ensure_kernel_source()
    from bcc import BPF

    bpf = BPF(text=INTERCEPT_PROGRAM.encode())
    try:
        for spec in (ict.IC_RULES, ict.IC_SYN, ict.IC_HOST, ict.IC_RULES6, ict.IC_SYN6):
            table = bpf[spec.name.encode()]
            assert ctypes.sizeof(table.Key) == spec.key_size, spec.name
            assert ctypes.sizeof(table.Leaf) == spec.value_size, spec.name
        key = bpf[b"ic_rules"].Key.from_buffer_copy(ict.ic_key(7, 6, 443, "198.51.100.0", 24))
        assert (key.prefixlen, key.ic, key.proto, key.port, key.addr) == (
            56, 7, 6, 0xBB01, 0x006433C6)
        key6 = bpf[b"ic_rules6"].Key.from_buffer_copy(ict.ic_key(7, 6, 443, "2001:db8::", 32))
        assert (key6.prefixlen, key6.ic, key6.proto, key6.port) == (64, 7, 6, 0xBB01)
        assert bytes(key6)[8:] == bytes.fromhex("20010db8" + "00" * 12)
        flow6 = bpf[b"ic_syn6"].Key
        assert {n: getattr(flow6, n).offset for n, *_ in flow6._fields_} == {
            "saddr": 0, "daddr": 16, "sport": 32, "dport": 34}
        raw = ict.ic_rule_value(bytes(12), [(1000, 1999, ict.IC_ACTION_DROP, 0, 30),
                                          (0, 0, ict.IC_ACTION_REDIRECT, 5, 40)])
        rule = bpf[b"ic_rules"].Leaf.from_buffer_copy(raw)
        assert rule.count == 2
        c0, c1 = rule.c[0], rule.c[1]
        assert (c0.sport_first, c0.sport_last, c0.action, c0.slot, c0.priority) == (
            1000, 1999, ict.IC_ACTION_DROP, 0, 30)
        assert (c1.action, c1.slot, c1.priority) == (ict.IC_ACTION_REDIRECT, 5, 40)
        host = bpf[b"ic_host"].Leaf.from_buffer_copy(ict.ic_host_value(99, 0))
        assert (host.netns_cookie, host.accept_local_before) == (99, 0)
        text = INTERCEPT_HEADER.read_text()
        for name, value in (("IC_MAX", ict.IC_MAX), ("IC_MAX_ENTRIES", ict.IC_MAX_ENTRIES),
                            ("IC_CHAIN", ict.IC_CHAIN), ("IC_MAX_SYN", ict.IC_MAX_SYN),
                            ("IC_COUNTERS", ict.IC_COUNTERS), ("IC_PORT_ANY", ict.IC_PORT_ANY),
                            ("IC_ACTION_PASS", ict.IC_ACTION_PASS),
                            ("IC_ACTION_DROP", ict.IC_ACTION_DROP),
                            ("IC_ACTION_REDIRECT", ict.IC_ACTION_REDIRECT),
                            ("IC_SYSCTL_UNTOUCHED", hex(ict.IC_SYSCTL_UNTOUCHED)),
                            ("IC_EXT_MAX", 8)):
            assert f"#define {name} {value} " in text or f"#define {name} {value}\n" in text, name
        enum = text[text.index("enum ic_stat {"):]
        names = [line.split()[0].removeprefix("IC_STAT_").lower()
                 for line in enum.splitlines()[1:] if line.strip().startswith("IC_STAT_")]
        assert names == list(ict.IC_STAT_NAMES)
    finally:
        bpf.cleanup()


def _be(n: int, size: int) -> int:
    """A big-endian field as ctypes reads it on this (little-endian) machine."""
    return int.from_bytes(n.to_bytes(size, "big"), "little")


def _addr(a: str) -> int:
    return int.from_bytes(socket.inet_aton(a), "little")


def _endpoint(c: Any, addr: str, port: int, proto: int) -> None:
    assert (c.addr, c.port, c.proto, c.pad) == (_addr(addr), _be(port, 2), proto, 0)


def _endpoint6(c: Any, addr: str, port: int, proto: int) -> None:
    assert bytes(c.addr) == socket.inet_pton(socket.AF_INET6, addr)
    assert (c.port, c.proto, c.pad) == (_be(port, 2), proto, 0)


def _ipv6_encoders_fill_the_c_structs(bpf: Any, key: Secret) -> None:
    """The IPv6 Service tables: 20-byte endpoints in ti_encap6, ti_verify6 and ti_reply6."""
    ep = gt.endpoint_key("2001:db8:10::10", 80, 6)
    _endpoint6(bpf[b"ti_encap6"].Key.from_buffer_copy(ep), "2001:db8:10::10", 80, 6)
    v = bpf[b"ti_encap6"].Leaf.from_buffer_copy(gt.encap_value(ep, 100, 1, 2, key))
    assert (v.tunnel_id, v.sid.service_id, bytes(v.key)) == (_be(100, 4), _be(2, 2), key.value)
    sid = gt.sid_key(1, 2)
    backend = gt.endpoint_key("2001:db8:10::100", 8080, 17)
    value = gt.verify_value(sid, key, backend)
    v = bpf[b"ti_verify6"].Leaf.from_buffer_copy(value)
    assert bytes(v.key) == key.value and t.stamp_ok(sid, value)
    _endpoint6(v.backend, "2001:db8:10::100", 8080, 17)
    v = bpf[b"ti_reply6"].Leaf.from_buffer_copy(gt.reply_value(backend, ep, 100, 1, 2, key))
    _endpoint6(v.proxy, "2001:db8:10::10", 80, 6)
    assert (v.tunnel_id, v.sid.group_id, v.sid.service_id, bytes(v.key)) == (
        _be(100, 4), _be(1, 2), _be(2, 2), key.value)
    assert registry.decode_value(gt.REPLY6.name, bytes(v))["proxy"] == "[2001:db8:10::10]:80"
    # a tunnel over an IPv6 underlay
    tk = gt.tunnel_key(100)
    v = bpf[b"ti_tunnel6"].Leaf.from_buffer_copy(
        gt.tunnel_value(tk, ("2001:db8:1::1", 6080), ("2001:db8:1::2", 6081), key, 500))
    assert (bytes(v.local_addr), bytes(v.remote_addr)) == tuple(
        socket.inet_pton(socket.AF_INET6, a) for a in ("2001:db8:1::1", "2001:db8:1::2"))
    assert (v.local_port, v.remote_port, v.ping_interval_ms) == (
        _be(6080, 2), _be(6081, 2), _be(500, 4))
    assert v.flags == _be(gt.TUNNEL_FLAG_PING | gt.TUNNEL_FLAG_KEYED, 4)
    assert bytes(v.key) == key.value
    learn = bpf[b"ti_tunnel6"].Leaf.from_buffer_copy(
        gt.tunnel_value(tk, ("2001:db8:1::1", 6080), None))
    assert (bytes(learn.remote_addr), learn.flags) == (bytes(16), _be(gt.TUNNEL_FLAG_LEARN, 4))
    dk = gt.endpoint_key("2001:db8:1::1", 6080, 17)
    _endpoint6(bpf[b"ti_decap6"].Key.from_buffer_copy(dk), "2001:db8:1::1", 6080, 17)
    learned = bpf[b"ti_learned6"].Leaf()
    learned.remote_addr[:] = list(socket.inet_pton(socket.AF_INET6, "2001:db8:1::7"))
    learned.remote_port, learned.updated_ns = _be(7000, 2), 123_456_789
    out = registry.decode_value(gt.LEARNED6.name, bytes(learned))
    assert out == {"remote": "[2001:db8:1::7]:7000", "updatedNs": 123_456_789}, out


def _encoders_fill_the_c_structs(bpf: Any) -> None:
    """Bytes from tables.py's encoders, read through the structs BCC compiled from
    trueingress.h: every field lands where the C programs read it."""
    key = Secret(bytes(range(1, 17)))
    ep = gt.endpoint_key("203.0.113.10", 80, 6)
    _endpoint(bpf[b"ti_encap"].Key.from_buffer_copy(ep), "203.0.113.10", 80, 6)
    v = bpf[b"ti_encap"].Leaf.from_buffer_copy(gt.encap_value(ep, 100, 1, 2, key))
    assert (v.tunnel_id, v.sid.group_id, v.sid.service_id) == (_be(100, 4), _be(1, 2), _be(2, 2))
    assert (bytes(v.key), v.reserved) == (key.value, 0)
    assert t.stamp_ok(ep, gt.encap_value(ep, 100, 1, 2, key))

    sid = gt.sid_key(1, 2)
    k = bpf[b"ti_verify"].Key.from_buffer_copy(sid)
    assert (k.group_id, k.service_id) == (_be(1, 2), _be(2, 2))
    backend = gt.endpoint_key("198.51.100.20", 8080, 17)
    v = bpf[b"ti_verify"].Leaf.from_buffer_copy(gt.verify_value(sid, key, backend))
    assert bytes(v.key) == key.value and v.reserved == 0
    _endpoint(v.backend, "198.51.100.20", 8080, 17)

    tk = gt.tunnel_key(100)
    assert bpf[b"ti_tunnel"].Key.from_buffer_copy(tk).value == _be(100, 4)
    v = bpf[b"ti_tunnel"].Leaf.from_buffer_copy(
        gt.tunnel_value(tk, ("192.0.2.1", 6080), ("198.51.100.2", 6081), key, 500))
    assert (v.local_addr, v.remote_addr, v.local_port, v.remote_port) == (
        _addr("192.0.2.1"), _addr("198.51.100.2"), _be(6080, 2), _be(6081, 2))
    assert v.flags == _be(gt.TUNNEL_FLAG_PING | gt.TUNNEL_FLAG_KEYED, 4)
    assert (v.ping_interval_ms, bytes(v.key)) == (_be(500, 4), key.value)
    learn = bpf[b"ti_tunnel"].Leaf.from_buffer_copy(gt.tunnel_value(tk, ("192.0.2.1", 6080), None))
    assert (learn.remote_addr, learn.remote_port, learn.flags) == (
        0, 0, _be(gt.TUNNEL_FLAG_LEARN, 4))

    v = bpf[b"ti_reply"].Leaf.from_buffer_copy(gt.reply_value(backend, ep, 100, 1, 2, key))
    _endpoint(v.proxy, "203.0.113.10", 80, 6)
    assert (v.tunnel_id, v.sid.group_id, v.sid.service_id, bytes(v.key)) == (
        _be(100, 4), _be(1, 2), _be(2, 2), key.value)
    _ipv6_encoders_fill_the_c_structs(bpf, key)
    dk = gt.endpoint_key("192.0.2.1", 6080, 17)
    assert bytes(bpf[b"ti_decap"].Leaf.from_buffer_copy(gt.decap_value(dk))) == gt.decap_value(dk)

    # the other way: ti_learned is written by the programs and decoded by Python
    learned = bpf[b"ti_learned"].Leaf()
    learned.remote_addr, learned.remote_port = _addr("198.51.100.7"), _be(7000, 2)
    learned.updated_ns = 123_456_789
    out = registry.decode_value(gt.LEARNED.name, bytes(learned))
    assert out == {"remote": "198.51.100.7:7000", "updatedNs": 123_456_789}, out

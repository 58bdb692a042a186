"""The registry of data paths: what every kind and table must provide, and that everything
that lists kinds or tables follows it."""

from __future__ import annotations

import json
from pathlib import Path

from reconciler.cli.main import parser
from reconciler.core import registry
from reconciler.core.compile import compile_tables
from reconciler.core.planning import compute_plan
from reconciler.core.tables import stamp_ok
from reconciler.inventory import by_owner, documents
from reconciler.load.directory import load_directory
from reconciler.load.schema import SCHEMA_DIR
from reconciler.tproxy.cgroups import HostFacts
from tests.unit.helpers import service, tunnel, write_tree

PIN = Path("/sys/fs/bpf/test-registry")
EVERY_KIND = {
    "t.yaml": tunnel(),
    "t6.yaml": "apiVersion: bpfsync/v1\nkind: Tunnel\nmetadata: {name: t6}\nspec:\n  id: 600\n"
               "  local: {address: '2001:db8:1::1'}\n  remote: {address: '2001:db8:1::2'}\n"
               "  zeroChecksum: true\n",  # ti_tunnel6 and ti_decap6
    "s.yaml": service() + "  nextKeyFrom: {file: next.key}\n",  # ti_next too
    "s6.yaml": service("web6", sid=6, proxy="'2001:db8:10::10'",  # ti_encap6 and its twins
                       backend="'2001:db8:10::100'"),
    "p.yaml": "apiVersion: bpfsync/v1\nkind: Proxy\nmetadata: {name: web}\nspec:\n  id: 1\n"
              "  ports: [80, '8000-8001']\n  backends: ['192.0.2.10:8080']\n",
    "tp.yaml": "apiVersion: bpfsync/v1\nkind: TransparentProxy\nmetadata: {name: app}\nspec:\n"
               "  id: 3\n  cgroup: /app\n  proxy: web\n  intercept: [{ports: [443]}, "
               "{destinations: ['2001:db8::/32'], ports: [443]}]\n",
    "ic.yaml": "apiVersion: bpfsync/v1\nkind: Intercept\nmetadata: {name: mail}\nspec:\n"
               "  id: 2\n  device: eth1\n"
               "  rules: [{priority: 1, action: redirect, proxy: web, ports: [25], "
               "destinations: [0.0.0.0/0, '::/0']}]\n",
    "i.yaml": "apiVersion: bpfsync/v1\nkind: Interface\nmetadata: {name: up}\nspec:\n"
              "  device: eth0\n  role: node\n",  # a node has ti_reply entries too
}


def _state(tmp_path: Path):
    root = write_tree(tmp_path / "d", EVERY_KIND)
    (root / "next.key").write_text("unit-next-key\n")
    (root / "next.key").chmod(0o600)
    return load_directory(root)


def test_every_schema_has_a_kind_and_every_kind_a_schema() -> None:
    kinds = {json.loads(f.read_text())["properties"]["kind"]["const"]
             for f in SCHEMA_DIR.glob("*.json") if f.name not in ("common.json", "bpfsync.json")}
    assert kinds == set(registry.KINDS)


def test_the_orders_are_those_of_before_the_registry() -> None:
    """Behaviour unchanged by the restructuring: the very orders plan.py once listed (with
    ps_dest6, tp_rules6 and ic_rules6, the IPv6 tries, beside their IPv4 twins)."""
    assert [s.name for s in registry.UPSERT_ORDER] == [
        "bs_names", "ti_next", "ti_tunnel", "ti_tunnel6", "ti_decap", "ti_decap6", "ti_verify",
        "ti_verify6", "ti_encap",
        "ti_encap6", "ti_reply", "ti_reply6", "ps_proxy", "ps_dest", "ps_dest6", "tp_config",
        "tp_rules", "tp_rules6", "ic_rules", "ic_rules6"]
    assert [s.name for s in registry.DELETE_ORDER] == [
        "ic_rules", "ic_rules6", "tp_rules", "tp_rules6", "tp_config", "ps_dest", "ps_dest6", "ps_proxy",
        "ti_reply", "ti_reply6", "ti_encap", "ti_encap6",
        "ti_next", "ti_verify", "ti_verify6", "ti_tunnel", "ti_tunnel6", "ti_decap", "ti_decap6",
        "bs_names"]
    assert registry.ENTRY_KINDS == ("Tunnel", "Service", "Proxy", "TransparentProxy",
                                    "Intercept")


def test_every_entry_compiled_reads_back_and_is_named_after_its_owner(tmp_path: Path) -> None:
    state = _state(tmp_path)
    assert {k: state.count(k) for k in registry.KINDS} == {
        **dict.fromkeys(registry.KINDS, 1), "Service": 2, "Tunnel": 2}
    desired = compile_tables(state, facts={"tproxy": HostFacts(netns_cookie=7)}, pin_root=PIN)
    for spec in registry.OWNED_TABLES:
        entries = desired.entries[spec.name]
        assert entries, f"{spec.name}: nothing compiled"
        for key, value in entries.items():
            assert stamp_ok(key, value)
            registry.decode_value(spec.name, value)
            assert registry.describe_key(spec.name, key)
    # deleting everything names each entry after the resource that declared it (the names
    # table), or without it after the kernel ref its kind derives from ids
    declared = {r.ref: r for rs in state.resources.values() for r in rs.values()}
    plan = compute_plan(compile_tables(type(state)()), desired.entries)
    # (a decap entry is shared by the tunnels of one local endpoint: named after it)
    decaps = ("ti_decap", "ti_decap6")
    assert {op.owner for op in plan.operations if op.table not in decaps} <= set(declared)
    unnamed = {t: e for t, e in desired.entries.items() if t != "bs_names"}
    refs = {registry.KINDS[r.kind].kernel_ref(r): ref for ref, r in declared.items()
            if registry.KINDS[r.kind].kernel_ref}
    for op in compute_plan(compile_tables(type(state)()), unnamed).operations:
        kind = registry.BY_NAME[op.table].kind
        assert op.owner.startswith(kind + "/"), op
        assert op.owner in refs or op.table in decaps, op  # decap: shared by tunnels
        if op.owner in refs:
            assert refs[op.owner] == desired.owners[op.table][op.key], op


def test_get_shows_every_kind_with_entries(tmp_path: Path) -> None:
    observed = compile_tables(_state(tmp_path), facts={"tproxy": HostFacts(netns_cookie=7)},
                              pin_root=PIN).entries
    shown = {d["kind"]: d for k in registry.KINDS.values()
             for d in documents(k, observed, tmp_path / "keys")}
    assert set(shown) == set(registry.ENTRY_KINDS)
    tp = by_owner("TransparentProxy", observed)
    assert [d["metadata"]["name"] for d in tp] == ["app"]  # as declared: the names table
    assert tp[0]["status"] == {"managed": True, "entries": {"tp_config": 1, "tp_rules": 1,
                                                             "tp_rules6": 1},
                               "source": {"file": "tp.yaml"}}
    assert tp[0]["spec"]["tp_rules"] == [{"id": 3, "rule": "intercept", "port": 443,
                                          "prefix": "0.0.0.0/0"}]
    assert by_owner("Intercept", observed)[0]["metadata"]["name"] == "mail"
    unnamed = {t: e for t, e in observed.items() if t != "bs_names"}
    assert [d["metadata"]["name"] for d in by_owner("Intercept", unnamed)] == ["(id 2)"]


def test_the_command_line_offers_every_kind() -> None:
    get = parser().parse_args(["get", "transparentproxies"])
    assert get.kind == "transparentproxies"
    for kind in registry.ENTRY_KINDS:
        assert parser().parse_args(["diff", "d", "--keep", kind]).keep == [kind]


def test_status_text_prints_every_data_paths_sections() -> None:
    from reconciler.daemon.statustext import status_text

    doc = {
        "daemon": {"pid": 1, "directory": "/etc/bpfsync", "pinRoot": "/sys/fs/bpf/x",
                   "resyncSeconds": 30, "drift": "enforce"},
        "lastReconcile": None, "lastApplied": None, "errors": [], "resources": {},
        "outOfSync": [], "drift": {"correctedOperations": 0, "recentCorrections": []},
        "dataPath": {"state": "running", "workerPids": [11, 12], "workersAccepting": 1},
        "warnings": [],
        "tunnels": [{"name": "up", "remote": "learn", "learned": None, "healthy": False}],
        "proxies": [{"name": "web", "healthy": 1, "backends": [{}, {}], "active": 3}],
        "transparentProxies": {
            "resources": [{"name": "apps", "cgroup": "/a", "proxy": "web", "counters": {
                "intercepted": 4, "excluded": 0, "no_proxy": 0, "track_full": 0}}],
            "tracking": {"entries": 1, "capacity": 65536}},
        "intercepts": [{"name": "wan", "device": "eth0", "rules": 2, "counters": {
            "redirected": 5, "dropped": 1, "passed": 0, "unmatched": 0, "assigned": 5,
            "no_listener": 0}}],
    }
    text = status_text(doc)
    # the second worker stands by (datapath/standby.py)
    assert "data path:       running (2 of 2 workers, pids 11, 12, 1 accepting)" in text
    assert "  tunnel up: remote not learned yet (not fresh)" in text
    assert "  proxy web: 1/2 backends healthy, 3 connections" in text
    assert "  transparent proxy apps (cgroup /a -> proxy web): 4 intercepted" in text
    assert "  intercepted connections tracked: 1/65536" in text
    assert "  intercept wan (eth0, 2 rules): 5 redirected, 1 dropped" in text
    lines = text.splitlines()
    assert [i for i, line in enumerate(lines) if line.startswith("  tunnel")] < [
        i for i, line in enumerate(lines) if line.startswith("  intercept ")]  # registry order


def test_the_readme_states_every_table_capacity() -> None:
    """Each pinned table bpfsync writes, or that traffic fills, is in README's capacity
    table with its max_entries (counters, sockets and the host record are left out)."""
    import re

    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    table = text[text.index("**Table capacities**"):text.index("Numbers mean what they")]
    rows = {}
    for line in table.splitlines():
        if line.startswith("| `"):
            cells = line.split("|")
            for name in re.findall(r"`(\w+)`", cells[1]):
                rows[name] = int(cells[3].split()[0].replace(",", ""))
    left_out = {"ps_sockets", "ps_sockets6", "ic_host"}
    wanted = {s.name: s.max_entries for s in registry.PINNED
              if s.kind != "Stats" and s.name not in left_out}
    assert rows == wanted

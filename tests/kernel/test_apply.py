"""apply / diff / get against real pinned maps, read back with bpftool."""

from __future__ import annotations

import fcntl
import json
import os
import socket
import struct
import subprocess
import zlib
from pathlib import Path

from tests.kernel.conftest import bpffs_entries, bpfsync, bpftool_dump, bpftool_update
from tests.kernel.desired import KEY_ENV, write_services

KEY = b"kernel-test-key!"


def _be_ep(addr: str, port: int, proto: int) -> bytes:
    return socket.inet_aton(addr) + struct.pack(">HBB", port, proto, 0)


def _stamp(key: bytes, body: bytes) -> bytes:
    return body + struct.pack(">I", zlib.crc32(key + body))


def test_apply_writes_exact_entries_read_back_by_bpftool(tmp_path: Path, pin_root: Path) -> None:
    root = write_services(tmp_path / "d", 2)
    r = bpfsync("apply", str(root), pin_root=pin_root, env=KEY_ENV)
    assert r.returncode == 0, r.stderr
    # 2 tunnels, their shared decap entry, 2 x 2 service entries, and 4 names entries
    assert "Applied: 11 created, 0 updated, 0 deleted (11 map writes)" in r.stdout
    maps = pin_root / "maps"

    # the names table: each resource's declared name and file, by the ref its ids give it
    names = bpftool_dump(maps / "bs_names")
    nkey = b"Service/svc-0-1".ljust(48, b"\0")
    body = b"s1".ljust(64, b"\0") + b"services-00000.yaml".ljust(128, b"\0") + bytes(24)
    assert names[nkey] == _stamp(nkey, body)
    assert {k.rstrip(b"\0") for k in names} == {
        b"Tunnel/tunnel-100", b"Tunnel/tunnel-101", b"Service/svc-0-0", b"Service/svc-0-1"}

    tunnels = bpftool_dump(maps / "ti_tunnel")
    k100, k101 = struct.pack(">I", 100), struct.pack(">I", 101)
    body100 = socket.inet_aton("192.0.2.1") + socket.inet_aton("198.51.100.2") + struct.pack(
        ">HHII", 6080, 6080, 0, 0) + bytes(16)
    # learn (0x1) | keyed (0x4), no ping interval, then the 16-byte key
    body101 = socket.inet_aton("192.0.2.1") + b"\0" * 4 + struct.pack(
        ">HHII", 6080, 0, 0x5, 0) + b"kernel-test-key!"
    assert tunnels == {k100: _stamp(k100, body100), k101: _stamp(k101, body101)}

    dkey = _be_ep("192.0.2.1", 6080, 17)
    assert bpftool_dump(maps / "ti_decap") == {dkey: _stamp(dkey, b"")}

    encap = bpftool_dump(maps / "ti_encap")
    verify = bpftool_dump(maps / "ti_verify")
    expected_encap, expected_verify = {}, {}
    for i in range(2):
        ekey = _be_ep("203.0.113.1", 1024 + i, 6)
        expected_encap[ekey] = _stamp(ekey, struct.pack(">IHH", 100, 0, i) + KEY + b"\0" * 4)
        vkey = struct.pack(">HH", 0, i)
        expected_verify[vkey] = _stamp(vkey, KEY + _be_ep("198.51.100.20", 8080, 6) + b"\0" * 4)
    assert encap == expected_encap
    assert verify == expected_verify
    assert bpftool_dump(maps / "ti_learned") == {}

    again = bpfsync("diff", str(root), pin_root=pin_root, env=KEY_ENV)
    assert again.returncode == 0 and "No changes" in again.stdout


def test_in_sync_is_zero_writes_and_one_change_is_one_write(tmp_path: Path, pin_root: Path,
                                                             write_counter) -> None:
    root = write_services(tmp_path / "d", 10_000)
    first = bpfsync("apply", "-q", str(root), pin_root=pin_root, env=KEY_ENV, counter=write_counter)
    assert first.returncode == 0, first.stderr
    assert write_counter.counts() == (2 + 1 + 20_000 + 10_002, 0)  # + a name per resource

    second = bpfsync("apply", str(root), pin_root=pin_root, env=KEY_ENV, counter=write_counter)
    assert second.returncode == 0, second.stderr
    assert "0 writes" in second.stdout
    assert write_counter.counts() == (0, 0)

    write_services(root, 10_000, changed={4321: 9999})
    d = bpfsync("diff", str(root), pin_root=pin_root, env=KEY_ENV)
    assert d.returncode == 2
    assert "backend: 198.51.100.20:8080 → 198.51.100.20:9999" in d.stdout
    third = bpfsync("apply", "-q", str(root), pin_root=pin_root, env=KEY_ENV, counter=write_counter)
    assert third.returncode == 0, third.stderr
    assert write_counter.counts() == (1, 0)
    vkey = struct.pack(">HH", 0, 4321)
    assert bpftool_dump(pin_root / "maps" / "ti_verify")[vkey][16:20] == socket.inet_aton(
        "198.51.100.20")


def test_drift_from_bpftool_is_reported_and_reverted(tmp_path: Path, pin_root: Path) -> None:
    root = write_services(tmp_path / "d", 3)
    assert bpfsync("apply", str(root), pin_root=pin_root, env=KEY_ENV).returncode == 0
    maps = pin_root / "maps"
    wanted = bpftool_dump(maps / "ti_encap")
    changed_key = _be_ep("203.0.113.1", 1025, 6)
    bpftool_update(maps / "ti_encap", changed_key, b"\0\0\0\x65" + wanted[changed_key][4:])
    foreign_key = _be_ep("203.0.113.200", 443, 6)
    bpftool_update(maps / "ti_encap", foreign_key, b"\x01" * 32)

    d = bpfsync("diff", "-o", "json", str(root), pin_root=pin_root, env=KEY_ENV)
    assert d.returncode == 2, d.stderr
    doc = json.loads(d.stdout)
    assert doc["resources"] == []
    drift = {(x["action"], x["entry"], x["reason"]) for x in doc["drift"]}
    assert drift == {("update", "203.0.113.1:1025/tcp", "changed outside bpfsync"),
                     ("delete", "203.0.113.200:443/tcp", "added outside bpfsync")}
    change = next(x for x in doc["drift"] if x["action"] == "update")["changes"]
    assert change == [{"field": "tunnelId", "from": 101, "to": 100}]

    a = bpfsync("apply", str(root), pin_root=pin_root, env=KEY_ENV)
    assert a.returncode == 0 and "2 drift reverted" in a.stdout
    assert bpftool_dump(maps / "ti_encap") == wanted


def test_mismatched_pin_is_refused_and_left_untouched(tmp_path: Path, pin_root: Path) -> None:
    maps = pin_root / "maps"
    maps.mkdir(parents=True)
    subprocess.run(["bpftool", "map", "create", str(maps / "ti_encap"), "type", "hash", "key",
                    "8", "value", "16", "entries", "64", "name", "ti_encap"], check=True)
    before = json.loads(subprocess.run(["bpftool", "-j", "map", "show", "pinned",
                                        str(maps / "ti_encap")], capture_output=True,
                                       check=True, text=True).stdout)
    root = write_services(tmp_path / "d", 2)
    for cmd in ("apply", "diff"):
        r = bpfsync(cmd, str(root), pin_root=pin_root, env=KEY_ENV)
        assert r.returncode == 1, (cmd, r.stdout, r.stderr)
        assert "value size 16 (expected 32)" in r.stderr and "max entries 64" in r.stderr
        assert "left untouched" in r.stderr
    after = json.loads(subprocess.run(["bpftool", "-j", "map", "show", "pinned",
                                       str(maps / "ti_encap")], capture_output=True,
                                      check=True, text=True).stdout)
    assert after["id"] == before["id"]
    assert bpffs_entries(pin_root) == ["maps", "maps/ti_encap"]


def test_diff_creates_nothing_and_invalid_input_applies_nothing(tmp_path: Path,
                                                                pin_root: Path) -> None:
    root = write_services(tmp_path / "d", 2)
    d = bpfsync("diff", str(root), pin_root=pin_root, env=KEY_ENV)
    assert d.returncode == 2 and "Plan: 11 to create" in d.stdout
    assert not pin_root.exists()
    assert bpfsync("apply", str(root), pin_root=pin_root, env=KEY_ENV).returncode == 0
    before = bpftool_dump(pin_root / "maps" / "ti_encap")
    write_services(root, 3)
    (root / "broken.yaml").write_text("apiVersion: bpfsync/v1\nkind: Service\n")
    r = bpfsync("apply", str(root), pin_root=pin_root, env=KEY_ENV)
    assert r.returncode == 1
    assert "broken.yaml:1:1: error: kind/None" not in r.stderr
    assert "broken.yaml:1:1" in r.stderr and "nothing applied" in r.stderr
    assert bpftool_dump(pin_root / "maps" / "ti_encap") == before


def test_empty_directory_does_not_wipe_without_allow_empty(tmp_path: Path, pin_root: Path) -> None:
    root = write_services(tmp_path / "d", 5)
    assert bpfsync("apply", str(root), pin_root=pin_root, env=KEY_ENV).returncode == 0
    empty = tmp_path / "empty"
    empty.mkdir()
    r = bpfsync("apply", str(empty), pin_root=pin_root)
    assert r.returncode == 1 and "--allow-empty" in r.stderr
    assert len(bpftool_dump(pin_root / "maps" / "ti_encap")) == 5
    kept = bpfsync("apply", "--no-prune", str(empty), pin_root=pin_root)
    assert kept.returncode == 0 and len(bpftool_dump(pin_root / "maps" / "ti_encap")) == 5
    r = bpfsync("apply", "--allow-empty", str(empty), pin_root=pin_root)
    assert r.returncode == 0, r.stderr
    for name in ("ti_encap", "ti_verify", "ti_tunnel", "ti_decap"):
        assert bpftool_dump(pin_root / "maps" / name) == {}


def test_get_yaml_round_trips_through_validate(tmp_path: Path, pin_root: Path) -> None:
    root = write_services(tmp_path / "d", 4)
    assert bpfsync("apply", str(root), pin_root=pin_root, env=KEY_ENV).returncode == 0
    adopted = tmp_path / "adopted"
    adopted.mkdir()
    g = bpfsync("get", "all", "-o", "yaml", "--keys-dir", str(adopted / "keys"), pin_root=pin_root)
    assert g.returncode == 0, g.stderr
    assert "kernel-test-key" not in g.stdout + g.stderr
    (adopted / "state.yaml").write_text(g.stdout)
    v = bpfsync("validate", str(adopted), pin_root=pin_root)
    assert v.returncode == 0, v.stderr
    d = bpfsync("diff", str(adopted), pin_root=pin_root)
    assert d.returncode == 0, d.stdout
    table = bpfsync("get", "services", pin_root=pin_root)
    assert "s3 " in table.stdout and "203.0.113.1:1027/tcp" in table.stdout


def test_keep_spares_a_kind_from_pruning(tmp_path: Path, pin_root: Path) -> None:
    root = write_services(tmp_path / "d", 3)
    assert bpfsync("apply", str(root), pin_root=pin_root, env=KEY_ENV).returncode == 0
    maps = pin_root / "maps"
    before = {m: bpftool_dump(maps / m) for m in ("ti_verify", "ti_encap", "ti_tunnel")}
    # one Service and one Tunnel leave the YAML (t2 is the learned tunnel nobody uses)
    write_services(root, 2)
    tunnels = (root / "tunnels.yaml").read_text()
    (root / "tunnels.yaml").write_text(tunnels[:tunnels.index("---\napiVersion: bpfsync/v1\n"
                                                              "kind: Tunnel\nmetadata: {name: t2}")])
    r = bpfsync("apply", "--keep", "Service", str(root), pin_root=pin_root, env=KEY_ENV)
    assert r.returncode == 0, r.stderr
    assert bpftool_dump(maps / "ti_verify") == before["ti_verify"]  # Service 2 kept
    assert bpftool_dump(maps / "ti_encap") == before["ti_encap"]
    assert len(bpftool_dump(maps / "ti_tunnel")) == len(before["ti_tunnel"]) - 1  # pruned
    r = bpfsync("apply", str(root), pin_root=pin_root, env=KEY_ENV)  # without --keep
    assert r.returncode == 0 and len(bpftool_dump(maps / "ti_verify")) == 2, r.stdout


def test_a_second_writer_of_the_pin_root_is_refused(tmp_path: Path, pin_root: Path) -> None:
    """Two applies to one pin root never interleave: while another writer holds the pin
    root's lock (here the test itself, with flock(2) as bpfsync takes it), apply refuses
    and writes nothing; once released, it applies."""
    root = write_services(tmp_path / "d", 2)
    assert bpfsync("apply", str(root), pin_root=pin_root, env=KEY_ENV).returncode == 0
    before = bpftool_dump(pin_root / "maps" / "ti_verify")
    write_services(root, 3)
    fd = os.open(pin_root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        r = bpfsync("apply", str(root), pin_root=pin_root, env=KEY_ENV)
        assert r.returncode == 1 and "another bpfsync is applying" in r.stderr, r
        assert bpftool_dump(pin_root / "maps" / "ti_verify") == before
    finally:
        os.close(fd)
    r = bpfsync("apply", str(root), pin_root=pin_root, env=KEY_ENV)
    assert r.returncode == 0 and len(bpftool_dump(pin_root / "maps" / "ti_verify")) == 3


def test_get_one_resource_names_wide_and_watch(tmp_path: Path, pin_root: Path) -> None:
    import queue
    import sys
    import threading
    import time

    root = write_services(tmp_path / "d", 3)
    assert bpfsync("apply", str(root), pin_root=pin_root, env=KEY_ENV).returncode == 0
    one = bpfsync("get", "service", "s1", pin_root=pin_root)
    assert one.returncode == 0 and "s1 " in one.stdout and "s2 " not in one.stdout
    missing = bpfsync("get", "service", "nope", pin_root=pin_root)
    assert missing.returncode == 1 and "no Service named 'nope'" in missing.stderr
    names = bpfsync("get", "all", "-o", "name", pin_root=pin_root)
    assert names.stdout.split() == ["Tunnel/t1", "Tunnel/t2", "Service/s0", "Service/s1",
                                    "Service/s2"]
    wide = bpfsync("get", "services", "-o", "wide", pin_root=pin_root)
    assert "ENTRIES" in wide.stdout and "ti_encap 1, ti_verify 1" in wide.stdout
    assert "SOURCE" in wide.stdout and "services-00000.yaml" in wide.stdout
    # --watch prints again when what it shows changes: here, a Service's backend port
    watch = subprocess.Popen(
        [sys.executable, "-m", "reconciler", "--pin-root", str(pin_root), "get", "service",
         "s1", "--watch", "--interval", "0.2"], stdout=subprocess.PIPE, text=True)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in watch.stdout or ()],
                     daemon=True).start()

    def until(text: str) -> list[str]:
        got: list[str] = []
        deadline = time.monotonic() + 60
        while not any(text in x for x in got):
            got.append(lines.get(timeout=max(0.1, deadline - time.monotonic())))
        return got

    try:
        until("198.51.100.20:8080")
        write_services(root, 3, changed={1: 9090})
        assert bpfsync("apply", str(root), pin_root=pin_root, env=KEY_ENV).returncode == 0
        changed = until("198.51.100.20:9090")
        assert any(x.startswith("--- ") for x in changed), changed
    finally:
        watch.terminate()
        watch.wait(30)


def _git(root: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(root), "-c", "user.name=t", "-c", "user.email=t@example.com",
                    *args], check=True, capture_output=True)


def _revision(root: Path) -> str:
    return subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], check=True,
                          capture_output=True, text=True).stdout.strip()


def test_names_record_the_revision_that_last_wrote_each_resource(
        tmp_path: Path, pin_root: Path, write_counter) -> None:
    """A resource's names entry records the git commit that last wrote it: a commit that
    leaves the data path as it was writes nothing (counted in the kernel); a change writes
    its entry and its names entry, and the other resources keep their revision. Deletions
    and `get` use the declared names, from another process (as after a daemon restart)."""
    root = write_services(tmp_path / "d", 3)
    _git(root, "init", "-q")
    _git(root, "add", ".")
    _git(root, "commit", "-qm", "three services")
    first = _revision(root)
    assert bpfsync("apply", str(root), pin_root=pin_root, env=KEY_ENV).returncode == 0
    (root / "README").write_text("not YAML\n")
    _git(root, "add", ".")
    _git(root, "commit", "-qm", "a readme")
    r = bpfsync("apply", str(root), pin_root=pin_root, env=KEY_ENV, counter=write_counter)
    assert r.returncode == 0 and write_counter.counts() == (0, 0), r.stdout

    write_services(root, 3, changed={1: 9090})
    _git(root, "commit", "-qam", "s1 moves")
    second = _revision(root)
    r = bpfsync("apply", str(root), pin_root=pin_root, env=KEY_ENV, counter=write_counter)
    assert r.returncode == 0 and write_counter.counts() == (2, 0), r.stdout
    assert f"revision: {first[:12]} → {second[:12]}" in r.stdout
    wide = bpfsync("get", "services", "-o", "wide", pin_root=pin_root).stdout
    rows = {line.split()[1]: line for line in wide.splitlines()[1:]}
    assert rows["s1"].endswith(f"services-00000.yaml@{second[:12]}"), wide
    assert rows["s0"].endswith(f"services-00000.yaml@{first[:12]}"), wide

    # a deleted Service is named as declared, in diff and in apply
    write_services(root, 2, changed={1: 9090})
    d = bpfsync("diff", str(root), pin_root=pin_root, env=KEY_ENV)
    assert d.returncode == 2 and "Service/s2" in d.stdout and "svc-0-2" not in d.stdout.replace(
        "bs_names Service/svc-0-2", ""), d.stdout
    r = bpfsync("apply", str(root), pin_root=pin_root, env=KEY_ENV)
    assert r.returncode == 0 and "Service/s2" in r.stdout
    assert b"Service/svc-0-2".ljust(48, b"\0") not in bpftool_dump(pin_root / "maps" / "bs_names")


def _max_entries(path: Path) -> int:
    out = subprocess.run(["bpftool", "-j", "map", "show", "pinned", str(path)], check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out)["max_entries"]


def test_capacity_is_chosen_at_the_first_apply_and_kept(tmp_path: Path, pin_root: Path) -> None:
    """--capacity sizes a new pin root's tables; later commands read the size from the pins,
    refuse a different one before touching anything, and bound the directory by it."""
    d = write_services(tmp_path / "d", 10)
    r = bpfsync("apply", "--capacity", "services=2048", str(d), pin_root=pin_root, env=KEY_ENV)
    assert r.returncode == 0, r.stderr
    maps = pin_root / "maps"
    assert {t: _max_entries(maps / t) for t in ("ti_verify", "ti_encap6", "ti_next",
                                                "ti_tunnel", "ps_dest", "bs_names")} == {
        "ti_verify": 2048, "ti_encap6": 2048, "ti_next": 2048, "ti_tunnel": 65536,
        "ps_dest": 262144, "bs_names": 262144}  # names: at least the default
    before = bpffs_entries(pin_root)

    r = bpfsync("apply", "--capacity", "services=4096", str(d), pin_root=pin_root, env=KEY_ENV)
    assert r.returncode == 1 and "cannot be resized" in r.stderr, r.stderr
    assert "created for 2,048 entries" in r.stderr and "bpfsync destroy" in r.stderr
    assert bpffs_entries(pin_root) == before and _max_entries(maps / "ti_verify") == 2048
    r = bpfsync("diff", str(d), pin_root=pin_root, env=KEY_ENV)  # no --capacity: the pins' size
    assert r.returncode == 0, r.stdout + r.stderr

    big = write_services(tmp_path / "big", 2049)
    for cmd in ("validate", "diff", "apply"):
        r = bpfsync(cmd, str(big), pin_root=pin_root, env=KEY_ENV)
        assert r.returncode == 1, (cmd, r.stdout, r.stderr)
        assert "2,049 Services exceed the table capacity of 2,048" in r.stderr, (cmd, r.stderr)
        assert "services-00020.yaml:" in r.stderr, r.stderr  # the 2,049th, where it stands
    assert len(bpftool_dump(maps / "ti_verify")) == 10  # nothing of it applied
    r = bpfsync("apply", "--capacity", "services=99", str(d), pin_root=pin_root, env=KEY_ENV)
    assert r.returncode == 1 and "a number from 1,024 to 16,777,216" in r.stderr, r.stderr


def test_the_names_table_grows_with_the_capacities(tmp_path: Path, pin_root: Path) -> None:
    """One name per resource of every kind: a pin root made for 300,000 Services gets a names
    table with room for them, the Tunnels and 65,536 others (not the default 262,144)."""
    d = write_services(tmp_path / "d", 3)
    r = bpfsync("apply", "--capacity", "services=300000,tunnels=1024", str(d),
                pin_root=pin_root, env=KEY_ENV)
    assert r.returncode == 0, r.stderr
    maps = pin_root / "maps"
    assert (_max_entries(maps / "ti_verify"), _max_entries(maps / "bs_names")) == (
        300_000, 300_000 + 1024 + 65_536)
    assert len(bpftool_dump(maps / "bs_names")) == 5  # three Services, two Tunnels
    r = bpfsync("diff", str(d), pin_root=pin_root, env=KEY_ENV)
    assert r.returncode == 0, r.stdout + r.stderr


def test_tables_larger_than_one_batch_are_written_and_read_in_batches(
        pin_root: Path, monkeypatch) -> None:
    """A write of more entries than one batch syscall takes (WRITE_BATCH, made small here)
    is split, and the table reads back the same whole and as a stream; checked with
    bpftool, then a split delete."""
    from reconciler import engine
    from reconciler.core.plan import Action, Operation
    from reconciler.gue import tables as gt
    from reconciler.kernel import maps
    from reconciler.load.secrets import Secret

    monkeypatch.setattr(maps, "WRITE_BATCH", 1000)
    spec = gt.VERIFY
    backend = gt.endpoint_key("198.51.100.20", 8080, 6)
    ops = [Operation(Action.CREATE, spec.name, key, gt.verify_value(
        key, Secret(bytes([i % 251]) * 16), backend), None, f"Service/s{i}", "test")
        for i in range(3500) for key in [gt.sid_key(1, i)]]
    tables = engine.open_pinned(pin_root, create=True)
    try:
        tables.write(spec.name, ops, delete=False)
        dump = bpftool_dump(pin_root / "maps" / spec.name)
        assert dump == {op.key: op.value for op in ops}
        assert dict(tables.entries(spec)) == tables.read((spec,))[spec.name] == dump
        tables.write(spec.name, ops[:2500], delete=True)
        assert bpftool_dump(pin_root / "maps" / spec.name) == {op.key: op.value
                                                               for op in ops[2500:]}
    finally:
        tables.close()

"""Confirm-or-revert on a real kernel: an Intercept rule that locks out new "management"
connections (port 81) is applied with --confirm-within; nothing confirms, and the change
reverts by itself — with the apply alive, and with the apply killed by SIGKILL — leaving
the pin root and the host plumbing exactly as before (bpftool, tc and ip read them). A
confirmed change stays.

    client netns 192.0.2.1 ──veth── 192.0.2.2 server netns (203.0.113.2: ports 81, 82)
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from reconciler.confirm import store
from reconciler.confirm.revert import run_directory
from reconciler.core import registry
from tests.kernel import owned
from tests.kernel.conftest import bpfsync, bpftool_dump
from tests.kernel.daemonkit import RunningDaemon, wait_for
from tests.kernel.guekit import udp_ends, udp_stream
from tests.kernel.interception import TPKIT, sh, start_server, teardown, veth_pair
from tests.kernel.topology import KEYS, PROXY, TRAFFIC

SERVER = "203.0.113.2"
SAFE = """\
    - priority: 10
      action: drop
      ports: [82]
"""
LOCKOUT = SAFE + """\
    - priority: 20
      action: drop
      ports: [81]
"""


def confirming_apply(pin_root: Path, directory: Path, *args: str,
                     env: dict[str, str] | None = None) -> tuple[subprocess.Popen[str], str]:
    """`bpfsync apply directory args` (--confirm-within among them), once it waits for the
    confirmation (the change is in the kernel then), and what it printed until then (the
    plan it applied)."""
    p = subprocess.Popen([sys.executable, "-m", "reconciler", "--pin-root", str(pin_root),
                          "apply", str(directory), *args], env=env, stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert p.stdout is not None
    printed = []
    for line in p.stdout:
        printed.append(line)
        if line.startswith("Awaiting confirmation"):
            return p, "".join(printed)
    raise AssertionError(f"no confirmation asked: {p.communicate(timeout=60)}")


@dataclass
class Env:
    ns: str
    device: str
    pin_root: Path
    directory: Path
    procs: list[subprocess.Popen[str]] = field(default_factory=list)
    daemons: list[RunningDaemon] = field(default_factory=list)
    applied: str = ""  # what the last apply_confirming printed before it waited

    def write(self, rules: str, confirm_within: str = "") -> None:
        self.directory.mkdir(exist_ok=True)
        asks = (f", annotations: {{bpfsync.dev/confirm-within: \"{confirm_within}\"}}"
                if confirm_within else "")
        (self.directory / "intercept.yaml").write_text(
            f"apiVersion: bpfsync/v1\nkind: Intercept\nmetadata: {{name: wan{asks}}}\n"
            f"spec:\n  id: 1\n  device: {self.device}\n  netns: {self.ns}\n  rules:\n{rules}")

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "reconciler", "--pin-root",
                               str(self.pin_root), *args], capture_output=True, text=True,
                              timeout=300)

    def apply_confirming(self, seconds: int, *more: str) -> subprocess.Popen[str]:
        """`apply --confirm-within seconds [more]`, once it waits for the confirmation (what
        it printed until then: self.applied)."""
        p, self.applied = confirming_apply(self.pin_root, self.directory, "--confirm-within",
                                           str(seconds), *more)
        self.procs.append(p)
        return p

    def connect(self, timeout: float) -> dict[str, Any]:
        """A new management connection: one line echoed through port 81."""
        out = sh(f"TPKIT_TIMEOUT={timeout} ip netns exec {self.ns} {sys.executable} {TPKIT} "
                 f"client {SERVER} 81 hello", check=False)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    def hold(self) -> subprocess.Popen[str]:
        """A management session opened before the change (kept until a line on stdin)."""
        p = subprocess.Popen(["ip", "netns", "exec", self.ns, sys.executable, TPKIT, "hold",
                              SERVER, "81", "stdin"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, stdin=subprocess.PIPE, text=True,
                             env={**os.environ, "TPKIT_TIMEOUT": "120"})
        self.procs.append(p)
        return p

    def snapshot(self) -> dict[str, Any]:
        """What bpfsync owns, read by other tools: every owned table (bpftool), the pins, the
        TC filters with their program ids (tc), the policy rules, routes and sysctl (ip)."""
        maps = self.pin_root / "maps"
        owned_tables = {s.name for s in registry.OWNED_TABLES}
        return {
            "tables": {p.name: sorted(bpftool_dump(p).items()) for p in sorted(maps.iterdir())
                       if p.name in owned_tables},
            "pins": sorted(str(p.relative_to(self.pin_root)) for p in self.pin_root.rglob("*")),
            "tc": [sh(f"ip netns exec {self.ns} tc -j filter show dev {dev} {d}").stdout
                   for dev in (self.device, "lo") for d in ("ingress", "egress")],
            "rules": sh(f"ip -n {self.ns} rule show").stdout,
            "routes": sh(f"ip -n {self.ns} route show table all").stdout,
            "sysctl": sh(f"ip netns exec {self.ns} sysctl -n net.ipv4.conf.lo.accept_local"
                         ).stdout,
        }

    def record(self) -> Any:
        return store.read(run_directory(self.pin_root))


@pytest.fixture
def env(tmp_path: Path, pin_root: Path) -> Iterator[Env]:
    tag, base = owned.tag()[:6], owned.name("cf")
    e = Env(f"{base}-c", f"bcf{tag}c", pin_root, tmp_path / "desired")
    server_ns = f"{base}-s"
    try:
        veth_pair(e.ns, server_ns, e.device, f"bcf{tag}s", "192.0.2.1/24", "192.0.2.2/24")
        sh(f"ip -n {server_ns} addr add {SERVER}/32 dev lo")
        sh(f"ip -n {e.ns} route add 203.0.113.0/24 via 192.0.2.2")
        e.procs.append(start_server(server_ns, "0.0.0.0", 81, 82))
        e.write(SAFE)
        r = e.cli("apply", str(e.directory))
        assert r.returncode == 0, r.stdout + r.stderr
        yield e
    finally:
        try:
            for d in e.daemons:
                d.cleanup()
            record = e.record() if pin_root.is_dir() else None
            if record is not None and store.alive(record.guard):  # its guard, never another
                os.kill(record.guard.pid, signal.SIGKILL)
                wait_for(lambda: not store.alive(record.guard), 30)
        finally:  # whatever went wrong above, the namespaces and servers go
            teardown(e.procs, (e.ns, server_ns))


def test_an_unconfirmed_lockout_reverts_exactly_by_itself(env: Env) -> None:
    session = env.hold()
    assert session.stdout is not None
    before = env.snapshot()
    env.write(LOCKOUT)
    apply = env.apply_confirming(10)
    # locked out: a new session cannot be opened (so nobody can log in to confirm). The
    # window is 10 s for a 1 s attempt: the record says it was still pending afterwards.
    attempt = env.connect(timeout=1)
    assert env.record().pending, "the 10 s window closed during a 1 s connect"
    assert attempt["error"] is not None and "timed out" in attempt["error"], attempt
    out, err = apply.communicate(timeout=120)
    assert apply.returncode == 3, out + err  # applied, then reverted
    assert "Reverted: not confirmed within 10 s; 1 entry put back." in out, out
    assert "- ic_rules" in out, out  # the revert shown as a plan
    assert env.snapshot() == before
    assert env.connect(timeout=15)["error"] is None  # new sessions work again
    result = json.loads(session.communicate("\n", timeout=60)[0])
    assert result["error"] is None and result["echoed"] == result["sent"] > 5, result
    assert env.cli("diff", str(env.directory)).returncode == 2  # the YAML still says lockout
    # (a later apply is not refused: nothing is pending any more)
    assert env.cli("confirm").returncode == 1


def test_sigkill_of_the_apply_still_reverts(env: Env) -> None:
    before = env.snapshot()
    env.write(LOCKOUT)
    apply = env.apply_confirming(10)
    assert env.snapshot()["tables"] != before["tables"]
    guard = env.record().guard
    assert store.alive(guard)  # in a session of its own
    apply.send_signal(signal.SIGKILL)
    apply.wait(30)
    # the guard reverts at the deadline, and exits
    record = wait_for(lambda: (r := env.record()) and not r.pending and r, 120)
    assert record.state == "reverted", record.outcome
    assert record.outcome.startswith("reverted: not confirmed within 10 s"), record.outcome
    wait_for(lambda: not store.alive(guard), 60)
    assert env.snapshot() == before
    assert env.connect(timeout=15)["error"] is None
    log = (run_directory(env.pin_root) / "confirm.log").read_text()
    assert "reverted the change applied from" in log, log


def test_a_confirmed_change_stays_and_blocks_nothing_after(env: Env) -> None:
    before = env.snapshot()
    env.write(LOCKOUT)
    apply = env.apply_confirming(60)
    refused = env.cli("apply", str(env.directory))  # no apply over a pending change
    assert refused.returncode == 1 and "awaits confirmation" in refused.stderr, refused
    shown = env.cli("confirm", "--show")
    assert "pending confirmation: 1 entry from" in shown.stdout, shown
    noted = env.cli("diff", str(env.directory))  # in sync with it, and says it may go
    assert noted.returncode == 0 and "note: pending confirmation" in noted.stderr, noted
    confirmed = env.cli("confirm")
    assert confirmed.returncode == 0 and "Confirmed" in confirmed.stdout, confirmed
    out, err = apply.communicate(timeout=60)
    assert apply.returncode == 0 and "Confirmed by `bpfsync confirm`." in out, out + err
    record = env.record()
    assert record.state == "confirmed"
    wait_for(lambda: not store.alive(record.guard), 60)  # the guard is gone: nothing reverts
    assert env.snapshot()["tables"] != before["tables"]
    assert env.cli("diff", str(env.directory)).returncode == 0
    assert env.connect(timeout=1)["error"] is not None  # the rule stands


def test_the_daemon_reverts_an_unconfirmed_change_holds_it_and_keeps_a_confirmed_one(
        env: Env, tmp_path: Path) -> None:
    daemon = RunningDaemon(env.directory, env.pin_root, tmp_path / "daemon.log",
                           "--confirm-within", "15", "--no-datapath", "--debounce", "0.05")
    env.daemons.append(daemon)
    daemon.start()
    before = env.snapshot()
    assert daemon.status()["confirmation"]["pending"] is None  # in sync: nothing to confirm
    env.write(LOCKOUT)
    # nobody confirms: reverted by the daemon at the deadline, and held back after that
    status = wait_for(lambda: (s := daemon.status())["confirmation"]["rejected"] and s, 120)
    assert "reverted: not confirmed within 15 s; 1 entry put back" in status["confirmation"][
        "rejected"], status["confirmation"]
    assert env.snapshot() == before
    assert env.connect(timeout=15)["error"] is None
    seen = daemon.reconciles()
    daemon.signal(signal.SIGHUP)  # a reconcile of the same YAML does not apply it again
    status = daemon.wait_reconciles(seen)
    assert status["confirmation"]["heldEntries"] == 1 and status["heldOff"] is None, status
    assert env.snapshot() == before
    assert "awaiting confirmation" in daemon.log()
    # another change: pending, then confirmed from another process; it stays
    env.write(LOCKOUT.replace("[81]", "[83]"))
    wait_for(lambda: daemon.status()["confirmation"]["pending"], 60)
    confirmed = env.cli("confirm")
    assert confirmed.returncode == 0, confirmed
    status = wait_for(lambda: (s := daemon.status())["confirmation"]["pending"] is None and s, 60)
    assert status["confirmation"]["rejected"] is None  # the YAML moved on
    assert env.record().state == "confirmed"
    assert env.snapshot()["tables"] != before["tables"]
    assert env.cli("diff", str(env.directory)).returncode == 0


def test_suspend_reports_without_applying_and_resume_applies(env: Env, tmp_path: Path) -> None:
    daemon = RunningDaemon(env.directory, env.pin_root, tmp_path / "daemon.log",
                           "--no-datapath", "--debounce", "0.05")
    env.daemons.append(daemon)
    daemon.start()
    before = env.snapshot()
    r = env.cli("suspend")
    assert r.returncode == 0 and "Suspended" in r.stdout, r
    env.write(LOCKOUT)
    # drift too: an entry removed behind bpfsync's back (bpftool)
    rules = env.pin_root / "maps" / "ic_rules"
    key = next(iter(bpftool_dump(rules)))
    sh(f"bpftool map delete pinned {rules} key hex {key.hex(' ')}")
    r = env.cli("reconcile")
    assert r.returncode == 0 and r.stdout.startswith("reconcile suspended"), r
    status = daemon.status()
    reasons = [why for o in status["outOfSync"] for why in o["reasons"]]
    # both held and reported: the new rule and the one deleted behind bpfsync's back
    assert reasons == ["not applied (suspended): create ic_rules entry (declared in YAML)"
                       ] * 2, reasons
    assert status["suspendedSince"] is not None
    assert env.cli("status").returncode == 2  # degraded while suspended
    tables = env.snapshot()["tables"]
    assert key not in dict(tables["ic_rules"]) and tables != before["tables"]
    assert len(tables["ic_rules"]) == len(before["tables"]["ic_rules"]) - 1  # nothing written
    r = env.cli("resume")
    assert r.returncode == 0, r
    wait_for(lambda: env.cli("diff", str(env.directory)).returncode == 0, 60)
    status = daemon.quiet()
    assert status["suspendedSince"] is None and status["outOfSync"] == [], status
    assert env.connect(timeout=1)["error"] is not None  # the lockout applied on resume


def test_a_wrong_tunnel_key_fails_its_probe_and_reverts_under_traffic(gue: Any) -> None:
    """A GUE gateway carrying a steady UDP stream (1,000 datagrams/s) gets a wrong Service
    key with --probe (a TCP transfer through the tunnel): the node drops what the wrong key
    signs, the probe never passes, the deadline reverts the key. Datagrams are lost only
    while the wrong key was in place: at most the window's length times the rate."""
    net = gue.net
    gdir, sink, sender, stop = udp_stream(gue, rate=RATE)
    server = net.server()
    probe = (f"ip netns exec {net.client} /usr/bin/python3 {TRAFFIC} tcp-client {PROXY[0]} "
             f"{PROXY[1]} 1000 {1 << 20} 2")
    assert sh(probe, check=False).returncode == 0  # the probe passes with the right key
    bad_before = gue.stats(gue.node_root)["drop_bad_key"]
    started = time.monotonic()
    apply = subprocess.run(
        [sys.executable, "-m", "reconciler", "--pin-root", str(gue.gw_root), "apply",
         str(gdir), "--confirm-within", "8", "--probe", probe],
        env={**os.environ, **KEYS, "BPFSYNC_SERVICE_KEY": KEYS["BPFSYNC_OTHER_KEY"]},
        capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    window = time.monotonic() - started  # from before the apply to after its revert
    assert apply.returncode == 3, apply.stdout + apply.stderr
    assert "probe: exit" in apply.stderr, apply.stderr  # it ran, and failed
    assert "Reverted: not confirmed within 8 s" in apply.stdout, apply.stdout
    assert gue.stats(gue.node_root)["drop_bad_key"] > bad_before  # the wrong key was used
    assert sh(probe, check=False).returncode == 0  # the tunnel carries traffic again
    stop.touch()
    sent = json.loads(sender.communicate(timeout=60)[0].splitlines()[-1])["sent"]
    received = json.loads(sink.communicate(timeout=60)[0].splitlines()[-1])["received"]
    lost = sent - received
    print(f"\nwrong key for {window:.1f} s (apply, 8 s window, revert): {lost} of {sent} "
          f"datagrams lost at {RATE}/s")
    assert 0 < lost <= window * RATE, (lost, window)
    net.stop(server)


RATE = 1000


def test_history_and_rollback_across_a_daemon_restart(env: Env, tmp_path: Path) -> None:
    def daemon() -> RunningDaemon:
        d = RunningDaemon(env.directory, env.pin_root, tmp_path / "daemon.log",
                          "--no-datapath", "--debounce", "0.05")
        env.daemons.append(d)
        return d.start()

    first = daemon()
    safe = env.snapshot()
    env.write(LOCKOUT)
    wait_for(lambda: env.cli("diff", str(env.directory)).returncode == 0, 60)
    first.stop()
    second = daemon()  # the history is on disk: a restart keeps it
    history = json.loads(env.cli("history", "-o", "json").stdout)
    assert [(h["number"], h["by"], h["reverted"]) for h in history] == [
        (1, "apply", False), (2, "daemon", False)], history
    rows = [line.split() for line in env.cli("history").stdout.splitlines()]
    assert rows[0][0] == "REVISION" and rows[2][0] == "2" and "daemon" in rows[2], rows
    r = env.cli("rollback", "--yes")  # to revision 1, the one before the current
    assert r.returncode == 0, r.stdout + r.stderr
    assert "The daemon holds off" in r.stderr and "- ic_rules" in r.stdout, r
    assert env.snapshot()["tables"] == safe["tables"]
    assert env.connect(timeout=15)["error"] is None  # the lockout is gone
    # the daemon does not fight it: a reconcile reports, applies nothing
    assert env.cli("reconcile").stdout.startswith("reconcile suspended")
    status = second.status()
    assert status["suspendedUntilChange"] and status["outOfSync"], status
    assert env.snapshot()["tables"] == safe["tables"]
    assert json.loads(env.cli("history", "-o", "json").stdout)[-1]["by"] == "rollback to 1"
    # the next save ends the hold: applied as any change
    env.write(LOCKOUT.replace("[81]", "[83]"))
    wait_for(lambda: env.cli("diff", str(env.directory)).returncode == 0, 60)
    assert second.status()["suspendedSince"] is None


def test_a_new_intercept_reverts_with_its_programs_and_host_plumbing(env: Env) -> None:
    (env.directory / "intercept.yaml").unlink()  # no Intercept at all to start from
    r = env.cli("apply", str(env.directory), "--allow-empty")
    assert r.returncode == 0, r.stdout + r.stderr
    before = env.snapshot()
    assert "bpfsync" not in "".join(before["tc"]) and "proto 181" not in before["rules"]
    env.write(LOCKOUT)
    apply = env.apply_confirming(10)
    during = env.snapshot()  # a filter, the policy rule, the route and accept_local=1 added
    assert "bpfsync" in "".join(during["tc"]) and "proto 181" in during["rules"], during
    assert during["sysctl"].strip() == "1"
    out, err = apply.communicate(timeout=120)
    assert apply.returncode == 3, out + err
    assert "- tc " in out and "ip rule priority" in out, out  # the revert, shown as a plan
    assert env.snapshot() == before


def test_a_replaced_program_is_put_back_itself(gue: Any) -> None:
    """A TC program replaced under --confirm-within (the GUE gateway's egress program, by
    turning fibLookup on) comes back on revert as the very program it was: the same id, the
    kept pin gone. bpfsync's `get interfaces` and bpftool say so."""
    gdir, _ = udp_ends(gue)

    def programs() -> dict[str, int]:
        r = bpfsync("get", "interfaces", "-o", "json", pin_root=gue.gw_root)
        return {d["direction"]: d["programId"] for d in json.loads(r.stdout)}

    before = programs()
    iface = gdir / "interface.yaml"
    iface.write_text(iface.read_text() + "  fibLookup: true\n")
    apply, _ = confirming_apply(gue.gw_root, gdir, "--confirm-within", "6",
                                env={**os.environ, **KEYS})
    during = programs()
    assert during["ingress"] == before["ingress"] and during["egress"] != before["egress"]
    kept = list((gue.gw_root / "confirm").iterdir())
    assert len(kept) == 1  # the egress program before, pinned until the change is settled
    out, err = apply.communicate(timeout=120)
    assert apply.returncode == 3, out + err
    assert "(the program it ran before)" in out, out
    assert programs() == before
    pins = {p.name: json.loads(sh(f"bpftool -j prog show pinned {p}").stdout)["id"]
            for p in (gue.gw_root / "progs").iterdir()}
    assert sorted(pins.values()) == sorted(before.values()), pins
    assert not (gue.gw_root / "confirm").exists()


def test_a_removed_intercept_comes_back_exactly(env: Env) -> None:
    """The other way round: the Intercept removed under --confirm-within — its filters
    detached, its rule, route and accept_local given back, its record dropped — and put
    back by the revert: the same programs (ids), the same plumbing and record."""
    before = env.snapshot()
    hosts = bpftool_dump(env.pin_root / "maps" / "ic_host")
    assert hosts and "proto 181" in before["rules"] and before["sysctl"].strip() == "1"
    (env.directory / "intercept.yaml").unlink()
    p = env.apply_confirming(8, "--allow-empty")
    during = env.snapshot()
    assert "bpfsync" not in "".join(during["tc"]) and "proto 181" not in during["rules"]
    assert during["sysctl"].strip() == "0"
    out, err = p.communicate(timeout=120)
    assert p.returncode == 3, out + err
    assert env.snapshot() == before  # program ids in `tc -j filter show` included
    assert bpftool_dump(env.pin_root / "maps" / "ic_host") == hosts
    assert not (env.pin_root / "confirm").exists()


def test_a_removed_proxy_gets_its_steering_link_back_with_the_same_program(env: Env) -> None:
    (env.directory / "proxy.yaml").write_text(
        "apiVersion: bpfsync/v1\nkind: Proxy\nmetadata: {name: web}\nspec:\n  id: 1\n"
        f"  netns: {env.ns}\n  ports: [8080]\n  destinations: [203.0.113.50/32]\n"
        "  backends: [\"192.0.2.2:81\"]\n")
    r = env.cli("apply", str(env.directory))
    assert r.returncode == 0, r.stdout + r.stderr

    def link_programs() -> list[int]:
        return sorted(json.loads(sh(f"bpftool -j link show pinned {p}").stdout)["prog_id"]
                      for p in (env.pin_root / "links").iterdir())

    before, programs = env.snapshot(), link_programs()
    assert programs
    (env.directory / "proxy.yaml").unlink()
    p = env.apply_confirming(8)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 3 and "- sk_lookup link" in env.applied, env.applied + out + err
    assert "sk_lookup link in netns" in out and "the program it ran before" in out, out
    assert env.snapshot()["tables"] == before["tables"]
    assert link_programs() == programs  # the link made again, running the very program
    assert env.cli("diff", str(env.directory)).returncode == 2  # the YAML says it goes


def test_a_resource_asks_the_daemon_for_confirmation_itself(env: Env, tmp_path: Path) -> None:
    daemon = RunningDaemon(env.directory, env.pin_root, tmp_path / "daemon.log",
                           "--no-datapath", "--debounce", "0.05")  # no --confirm-within
    env.daemons.append(daemon)
    daemon.start()
    before = env.snapshot()
    env.write(LOCKOUT, confirm_within="5")  # the risky change asks for confirmation itself
    status = wait_for(lambda: (s := daemon.status())["confirmation"] and s["confirmation"][
        "rejected"] and s, 120)
    assert "not confirmed within 5 s" in status["confirmation"]["rejected"], status
    assert env.snapshot()["tables"] == before["tables"]
    assert env.connect(timeout=15)["error"] is None


def test_verify_reverts_at_once_when_another_writer_changes_the_pending_change(
        env: Env) -> None:
    rules = env.pin_root / "maps" / "ic_rules"
    known = set(bpftool_dump(rules))
    env.write(LOCKOUT)
    p = env.apply_confirming(300, "--verify")
    (new,) = set(bpftool_dump(rules)) - known  # the lockout's rule, deleted by someone else
    sh(f"bpftool map delete pinned {rules} key hex {new.hex(' ')}")
    out, err = p.communicate(timeout=120)  # long before the 300 s
    assert p.returncode == 3, out + err
    assert ("Reverted: it did not verify: Intercept/wan: ic_rules entry no longer as "
            "applied") in out, out
    assert set(bpftool_dump(rules)) == known

"""The daemon's pure parts: debouncing, drift classification, the parse cache, event
filtering, and the sd_notify wire format."""

from __future__ import annotations

import dataclasses
import os
import socket
import time
from pathlib import Path

from watchdog.events import (
    DirCreatedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
)

from reconciler.core import drift
from reconciler.core.compile import compile_tables
from reconciler.core.model import Endpoint
from reconciler.core.plan import Action
from reconciler.core.planning import compute_plan
from reconciler.daemon.debounce import Debouncer
from reconciler.daemon.notify import Notifier
from reconciler.daemon.watch import relevant
from reconciler.gue.model import Service, Tunnel
from reconciler.load.directory import load_directory
from reconciler.load.filecache import FileCache
from reconciler.load.files import load_files
from reconciler.load.schema import Schemas
from tests.unit.helpers import service, tunnel, write_tree
from tests.unit.test_plan import observed_from, state


def test_debounce_coalesces_a_burst_and_a_trickle_cannot_starve_it() -> None:
    d = Debouncer(quiet=0.1, max_delay=1.0)
    assert d.due() is None and d.take(5.0) == 0
    for i in range(50):  # a burst: 50 events within 50 ms
        d.poke(10.0 + i / 1000)
    assert d.take(10.1) == 0  # still quiet period
    assert d.take(10.15) == 50 and d.due() is None
    for i in range(30):  # a save every 50 ms for 1.5 s: due 1 s after the first anyway
        d.poke(20.0 + i * 0.05)
        if d.take(20.0 + i * 0.05):
            assert 20.0 + i * 0.05 >= 21.0
            break
    else:
        raise AssertionError("never due")


def test_drift_is_corrected_held_or_applied_as_a_change() -> None:
    s = state(3)
    observed = observed_from(s)
    observed["ti_verify"].pop(next(iter(observed["ti_verify"])))  # someone deleted an entry
    plan = compute_plan(compile_tables(s), observed)
    assert [op.action for op in plan.operations] == [Action.CREATE]
    owner = plan.operations[0].owner
    base = s
    enforce = drift.split(plan, s, base, drift.ENFORCE)
    assert len(enforce.apply.operations) == 1 and enforce.corrected == {owner: 1}
    warn = drift.split(plan, s, base, drift.WARN)
    assert warn.apply.operations == [] and [h.owner for h in warn.held] == [owner]
    assert "SUPERSECRET" not in repr(warn.held)
    s.drift[owner] = drift.ENFORCE  # the annotation wins over the default
    assert len(drift.split(plan, s, base, drift.WARN).apply.operations) == 1
    # the first reconcile (no baseline) applies everything
    assert len(drift.split(plan, s, None, drift.OFF).apply.operations) == 1
    # an edit in YAML is a change, whatever the policy
    edited = state(3)
    name = owner.split("/")[1]
    edited.of(Service)[name] = dataclasses.replace(edited.of(Service)[name],
                                                backend=Endpoint("198.51.100.21", 8080))
    plan2 = compute_plan(compile_tables(edited), observed_from(s))
    held = drift.split(plan2, edited, base, drift.OFF)
    assert held.held == [] and len(held.apply.operations) == len(plan2.operations) > 0
    # a resource removed from YAML is pruned (a change); an entry someone else added is drift
    fewer = state(2)
    plan3 = compute_plan(compile_tables(fewer), observed_from(s))
    assert drift.split(plan3, fewer, base, drift.WARN).held == [] and plan3.operations
    foreign = observed_from(fewer)
    foreign["ti_verify"][b"\x09\x09\x09\x09"] = bytes(32)  # not stamped by bpfsync
    plan4 = compute_plan(compile_tables(fewer), foreign)
    split4 = drift.split(plan4, fewer, fewer, drift.WARN)
    assert [op.action for op in plan4.operations] == [Action.DELETE]
    assert split4.apply.operations == [] and len(split4.held) == 1


def test_file_cache_reparses_only_changed_files_and_sees_key_changes(tmp_path: Path) -> None:
    files = {"t.yaml": tunnel(), "web.key": "hex:00112233445566778899aabbccddeeff"}
    for i in range(5):
        files[f"s{i}.yaml"] = service(f"web{i}", sid=i, port=80 + i)
    root = write_tree(tmp_path, files)
    clock = [time.time() + 10]  # every file is "old": signatures are trusted
    cache = FileCache(clock=lambda: clock[0])
    schemas = Schemas()
    first = load_directory(root, schemas, cache)
    assert cache.last.parsed == 6 and len(first.of(Service)) == 5
    load_directory(root, schemas, cache)
    assert (cache.last.parsed, cache.last.reused) == (0, 6)
    (root / "s2.yaml").write_text(service("web2", sid=2, port=92))
    clock[0] = time.time() + 10
    again = load_directory(root, schemas, cache)
    assert cache.last.parsed == 1 and again.of(Service)["web2"].proxy.port == 92
    # same size, same mtime (a racy rewrite within one tick): a recent file is hashed
    st = (root / "s3.yaml").stat()
    (root / "s3.yaml").write_text(service("web3", sid=3, port=73))  # 83 -> 73, same length
    os.utime(root / "s3.yaml", ns=(st.st_atime_ns, st.st_mtime_ns))
    clock[0] = time.time()
    assert load_directory(root, schemas, cache).of(Service)["web3"].proxy.port == 73
    # a key file every Service reads changes: all of them are checked again
    clock[0] = time.time() + 10
    load_directory(root, schemas, cache)
    (root / "web.key").write_text("hex:ffeeddccbbaa99887766554433221100")
    clock[0] = time.time() + 10
    s = load_directory(root, schemas, cache)
    assert cache.last.parsed == 5 and s.of(Service)["web0"].key.value.startswith(b"\xff\xee")
    # a removed file is forgotten
    (root / "s4.yaml").unlink()
    assert "web4" not in load_directory(root, schemas, cache).of(Service)


def test_cached_results_equal_fresh_ones(tmp_path: Path) -> None:
    root = write_tree(tmp_path, {"t.yaml": tunnel(), "s.yaml": service(),
                                 "web.key": "hex:00112233445566778899aabbccddeeff"})
    files = sorted(root.glob("*.yaml"))
    cache = FileCache(clock=lambda: time.time() + 10)
    once = cache.load(files, lambda todo: load_files(todo, Schemas()))
    twice = cache.load(files, lambda todo: load_files(todo, Schemas()))
    assert [r.docs for r in once] == [r.docs for r in twice]


def test_only_complete_files_outside_dotfiles_count(tmp_path: Path) -> None:
    root = tmp_path
    f = str(root / "a.yaml")
    assert relevant(root, FileClosedEvent(f))
    assert relevant(root, FileDeletedEvent(f))
    assert relevant(root, FileMovedEvent(str(root / ".ansible_tmp1a.yaml"), f))
    assert relevant(root, FileMovedEvent(f, str(tmp_path.parent / "elsewhere")))  # moved away
    assert relevant(root, DirCreatedEvent(str(root / "sub")))
    assert relevant(root, FileClosedEvent(str(root / "keys" / "web.key")))
    assert not relevant(root, FileModifiedEvent(f))  # still being written
    assert not relevant(root, FileCreatedEvent(f))  # its close will count
    assert not relevant(root, FileClosedEvent(str(root / ".a.yaml.swp")))
    assert not relevant(root, FileClosedEvent(str(root / ".git" / "index")))
    assert not relevant(root, FileClosedEvent(str(root / "a.yaml~")))
    assert not relevant(root, FileMovedEvent(str(root / ".x"), str(root / ".y")))
    (root / "link.yaml").symlink_to(root / "a.yaml")
    assert relevant(root, FileCreatedEvent(str(root / "link.yaml")))


def test_notify_speaks_the_systemd_protocol(tmp_path: Path) -> None:
    assert Notifier({}).send(READY="1") is False
    path = tmp_path / "n.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind(str(path))
        n = Notifier({"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "3000000",
                      "WATCHDOG_PID": str(os.getpid())})
        assert n.watchdog_interval == 1.5
        assert n.send(READY="1", STATUS="in sync")
        assert s.recv(100) == b"READY=1\nSTATUS=in sync"
    assert Notifier({"WATCHDOG_USEC": "1000", "WATCHDOG_PID": "1"}).watchdog_interval is None


def test_detaching_what_no_resource_wants_is_a_change_not_drift() -> None:
    from reconciler.core.attachments import AttachAction, AttachPlan, Hook, Step
    from reconciler.core.filters import TcFilter

    s = state(1)
    plan = compute_plan(compile_tables(s), observed_from(s))
    hook = Hook("d0", "ns", "ingress")
    plan.attachments = AttachPlan([
        Step(AttachAction.DETACH, TcFilter(hook, 49152), f"Interface/({hook})",
             "no Interface wants it")])
    out = drift.split(plan, s, s, drift.WARN)
    assert len(out.apply.attachments.steps) == 1 and out.held == []


def test_compile_memo_updates_by_difference_and_matches_a_full_compile() -> None:
    from reconciler.core.desired import CompileMemo

    memo = CompileMemo()
    s = state(5)
    assert compile_tables(s, memo).entries == compile_tables(s).entries
    s.of(Service)["svc1"] = dataclasses.replace(s.of(Service)["svc1"],
                                             backend=Endpoint("198.51.100.21", 8080))
    del s.of(Service)["svc3"]
    s.of(Service)["svc9"] = dataclasses.replace(s.of(Service)["svc4"], name="svc9", service_id=9,
                                             proxy=Endpoint("203.0.113.10", 1009))
    got = compile_tables(s, memo)
    assert got.entries == compile_tables(s).entries and got.owners == compile_tables(s).owners
    s.of(Tunnel)["t1"] = dataclasses.replace(s.of(Tunnel)["t1"], id=200)  # every service's tunnel id
    assert compile_tables(s, memo).entries == compile_tables(s).entries


def test_json_logs_carry_the_reconcile_fields() -> None:
    import json
    import logging

    from reconciler.daemon.logs import JsonFormatter, TextFormatter

    record = logging.LogRecord("bpfsync.daemon", logging.INFO, __file__, 1, "reconcile", (), None)
    record.fields = {"result": "applied", "create": 2, "durationMs": 12.5}
    doc = json.loads(JsonFormatter().format(record))
    assert doc["message"] == "reconcile" and doc["level"] == "info"
    assert (doc["result"], doc["create"], doc["durationMs"]) == ("applied", 2, 12.5)
    assert doc["time"].endswith("Z")
    assert TextFormatter().format(record).endswith("reconcile result=applied create=2 "
                                                    "durationMs=12.5")


def test_git_is_busy_while_it_holds_the_index_lock(tmp_path: Path) -> None:
    """A directory is not loaded while git changes it (a checkout holds .git/index.lock);
    a subdirectory of the work tree counts too."""
    import subprocess

    from reconciler.daemon import gitrev

    sub = tmp_path / "repo" / "desired"
    sub.mkdir(parents=True)
    subprocess.run(["git", "init", "-q", str(tmp_path / "repo")], check=True)
    assert not gitrev.busy(sub) and not gitrev.busy(tmp_path)  # (not a repository)
    lock = tmp_path / "repo" / ".git" / "index.lock"
    lock.write_text("")
    assert gitrev.busy(sub) and gitrev.busy(tmp_path / "repo")
    lock.unlink()
    assert not gitrev.busy(sub)


def test_a_revision_whose_status_fails_is_unknown_not_clean(tmp_path: Path,
                                                            monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """git status failing or timing out (a loaded host, git at work) says nothing about the
    tree: the revision is unknown (and the daemon looks again), never "clean"."""
    import subprocess

    from reconciler.daemon import gitrev

    repo = tmp_path / "repo"
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (repo / "a.yaml").write_text("x: 1\n")
    subprocess.run(["git", "-C", str(repo), "-c", "user.email=t@example.invalid", "-c",
                    "user.name=t", "add", "-A"], check=True)
    subprocess.run(["git", "-C", str(repo), "-c", "user.email=t@example.invalid", "-c",
                    "user.name=t", "commit", "-qm", "a"], check=True)
    assert gitrev.revision(repo) is not None and not gitrev.revision(repo).dirty
    real = gitrev._git
    monkeypatch.setattr(gitrev, "_git", lambda d, *a: None if a[0] == "status" else real(d, *a))
    assert gitrev.revision(repo) is None


def test_an_invalid_reconcile_leaves_no_second_look_pending(tmp_path: Path) -> None:
    """A second look at the revision that came due must not outlive a reconcile that found
    the directory invalid: the loop would run reconcile after reconcile, as fast as it can,
    until the directory is fixed."""
    from reconciler.daemon.record import DaemonConfig
    from reconciler.daemon.service import Daemon

    directory = write_tree(tmp_path / "d", {"bad.yaml": "kind: [\n"})
    daemon = Daemon(DaemonConfig(directory, tmp_path / "pins"))
    daemon.revision_at = time.monotonic() - 1  # due: the loop is about to reconcile for it
    daemon.reconcile("revision")
    assert daemon.record.errors and daemon.revision_at is None

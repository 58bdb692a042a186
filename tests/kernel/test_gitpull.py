"""`bpfsync run --pull`: the daemon follows a branch of a scratch repository (file:// remote
only) and applies committed content, commit by commit; bad commits and rewritten history are
reported and the last good commit stays applied."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.gue import tables as gt
from tests.kernel import owned
from tests.kernel.conftest import bpftool_dump
from tests.kernel.daemonkit import RunningDaemon, wait_for
from tests.kernel.desired import KEY_ENV
from tests.scratch import IDENTITY, git

pytestmark = pytest.mark.kernel


def tunnel(name: str, id: int) -> str:
    return (f"apiVersion: bpfsync/v1\nkind: Tunnel\nmetadata: {{name: {name}}}\nspec:\n"
            f"  id: {id}\n  local: {{address: 192.0.2.1, port: 6080}}\n"
            f"  remote: {{address: 198.51.100.{id % 200 + 1}, port: 6080}}\n"
            f"  keyFrom: {{env: BPFSYNC_TEST_KEY}}\n")


class Repos:
    """A bare 'remote', an operator's clone (dev) and the host's clone the daemon follows."""

    def __init__(self, tmp: Path) -> None:
        self.remote, self.dev, self.host = tmp / "config.git", tmp / "dev", tmp / "host"
        git(tmp, "init", "-q", "--bare", "-b", "main", str(self.remote))
        git(tmp, "clone", "-q", f"file://{self.remote}", str(self.dev))
        git(self.dev, "checkout", "-q", "-b", "main")

    def commit(self, files: dict[str, str | None], message: str, push: bool = True) -> str:
        for name, text in files.items():
            path = self.dev / name
            if text is None:
                path.unlink()
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text)
        git(self.dev, "add", "-A")
        git(self.dev, *IDENTITY, "commit", "-q", "-m", message)
        if push:
            git(self.dev, "push", "-q", "origin", "main")
        return git(self.dev, "rev-parse", "HEAD")


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[Repos, Path, list[RunningDaemon]]]:
    root = owned.pin_root("pull")
    daemons: list[RunningDaemon] = []
    try:
        yield Repos(tmp_path), root, daemons
    finally:
        for d in daemons:
            d.cleanup()
        owned.remove_pin_root(root)


def tunnels(root: Path) -> int:
    return len(bpftool_dump(root / "maps" / gt.TUNNEL.name))


def applied(d: RunningDaemon, commit: str) -> dict | None:
    s = d.status()
    rev = (s["lastApplied"] or {}).get("revision") or {}
    return s if rev.get("commit") == commit and s["git"]["applied"] == commit else None


def test_follows_commits_refuses_bad_ones_and_rewritten_history(setup, tmp_path: Path) -> None:
    repos, root, daemons = setup
    # the README's layout: a role's files shared by symlink, one directory per host
    (repos.dev / "hosts" / "gw1").mkdir(parents=True)
    (repos.dev / "hosts" / "gw1" / "common").symlink_to("../../roles/gateway")
    first = repos.commit({"roles/gateway/shared.yaml": tunnel("shared", 50),
                          "hosts/gw1/tunnels.yaml": tunnel("t1", 100),
                          "hosts/gw2/tunnels.yaml": tunnel("other", 7)}, "gw1: t1")
    git(tmp_path, "clone", "-q", f"file://{repos.remote}", str(repos.host))
    d = RunningDaemon(repos.host / "hosts" / "gw1", root, tmp_path / "daemon.log",
                      "--pull", "0.2", "--no-datapath", env=KEY_ENV)
    daemons.append(d)
    d.start()
    status = wait_for(lambda: applied(d, first))
    assert status["git"]["upstream"] == "origin/main" and status["git"]["directory"] == "hosts/gw1"
    assert tunnels(root) == 2  # t1 and the role's shared one; gw2's file is not this host's
    assert git(repos.host, "rev-parse", "refs/bpfsync/applied") == first

    second = repos.commit({"hosts/gw1/more.yaml": tunnel("t2", 101)}, "gw1: t2")
    wait_for(lambda: applied(d, second))
    assert tunnels(root) == 3
    assert git(repos.host, "rev-parse", "HEAD") == second  # the clone was fast-forwarded

    # Uncommitted content in the clone never reaches the kernel, even on a forced reconcile.
    (repos.host / "hosts" / "gw1" / "local.yaml").write_text(tunnel("t3", 102))
    (repos.host / "hosts" / "gw1" / "more.yaml").write_text("kind: [\n")
    hups = d.by_trigger("SIGHUP")
    d.signal(signal.SIGHUP)
    d.wait_reconciles_by("SIGHUP", hups)
    assert tunnels(root) == 3 and not d.status()["errors"]
    git(repos.host, "checkout", "-q", "--", ".")
    (repos.host / "hosts" / "gw1" / "local.yaml").unlink()

    bad = repos.commit({"hosts/gw1/more.yaml": tunnel("t2", 101) + "  bogus: 1\n"}, "broken")
    status = wait_for(lambda: (s := d.status())["errors"] and s["git"]["head"] == bad and s)
    assert any(e.startswith(f"{bad[:12]}:hosts/gw1/more.yaml:") and "bogus" in e
               for e in status["errors"])
    assert status["lastApplied"]["revision"]["commit"] == second
    assert status["git"]["applied"] == second and tunnels(root) == 3
    cli = subprocess.run([sys.executable, "-m", "reconciler", "--pin-root", str(root), "status"],
                         capture_output=True, text=True, timeout=30)
    assert cli.returncode == 2 and f"applied {second[:12]}" in cli.stdout

    fixed = repos.commit({"hosts/gw1/more.yaml": tunnel("t2", 101) + "---\n" + tunnel("t3", 102)},
                         "fixed")
    status = wait_for(lambda: applied(d, fixed))
    assert not status["errors"] and tunnels(root) == 4

    # Rewritten upstream history is not followed: reported, and the last commit stays.
    git(repos.dev, "reset", "-q", "--hard", first)
    rewritten = repos.commit({"hosts/gw1/tunnels.yaml": tunnel("t9", 109)}, "rewritten",
                             push=False)
    git(repos.dev, "push", "-q", "--force", "origin", "main")
    status = wait_for(lambda: (s := d.status())["git"]["error"] and s)
    assert "not a descendant" in status["git"]["error"]
    assert status["git"]["head"] == fixed and rewritten != fixed
    assert tunnels(root) == 4 and git(repos.host, "rev-parse", "HEAD") == fixed
    assert d.stop() == 0
    assert tunnels(root) == 4  # stopping leaves the data path as it is


def test_refuses_to_start_outside_a_clone_or_without_upstream(setup, tmp_path: Path) -> None:
    repos, root, daemons = setup
    plain = tmp_path / "plain"
    plain.mkdir()
    repos.commit({"a/t.yaml": tunnel("t1", 100)}, "one", push=False)
    for directory, expect in ((plain, "is not in a git clone"),
                              (repos.dev / "a", "follows no upstream")):
        d = RunningDaemon(directory, root, tmp_path / "d.log", "--pull", "1", "--no-datapath")
        daemons.append(d)
        d.start(wait=False)
        assert d.proc is not None and d.proc.wait(60) == 1
        assert expect in d.log()

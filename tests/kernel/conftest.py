from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from reconciler.kernel.maps import BPF_FS_MAGIC, fs_magic
from tests.kernel import owned

BPFFS = Path("/sys/fs/bpf")


def _kernel_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    try:
        if fs_magic(BPFFS) != BPF_FS_MAGIC:
            return "/sys/fs/bpf is not a BPF filesystem"
    except OSError:
        return "/sys/fs/bpf is missing"
    if shutil.which("bpftool") is None:
        return "bpftool is not installed"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = _kernel_unavailable()
    for item in items:
        if "tests/kernel/" in str(item.fspath):
            item.add_marker(pytest.mark.kernel)
            if reason:
                if os.environ.get("BPFSYNC_REQUIRE_KERNEL") == "1":
                    raise pytest.UsageError(f"kernel tests required but cannot run: {reason}")
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session", autouse=True)
def _sweep_leftovers_of_killed_runs() -> Iterator[None]:
    """At the start of a session: remove what a killed earlier run left (only names the suite
    owns, and only when no other test session runs); held shared until the session ends."""
    if _kernel_unavailable():
        yield
        return
    lock = owned.SessionLock()
    try:
        removed = lock.sweep_if_alone()
        if removed:
            print(f"\nswept leftovers of an earlier run: {', '.join(removed)}")
        yield
    finally:
        lock.close()


@pytest.fixture
def pin_root() -> Iterator[Path]:
    root = owned.pin_root()
    try:
        yield root
    finally:
        owned.remove_pin_root(root)


@pytest.fixture
def gue(tmp_path: Path) -> Iterator[Any]:
    """Two ends of a GUE tunnel in namespaces of their own (tests/kernel/guekit.py)."""
    from tests.kernel.guekit import gue_ends  # it imports this module

    with gue_ends(tmp_path) as g:
        yield g


@pytest.fixture(scope="session")
def write_counter():
    from tests.kernel.writecount import WriteCounter

    counter = WriteCounter()
    yield counter
    counter.close()


def bpfsync(*args: str, pin_root: Path, env: dict[str, str] | None = None,
            counter=None) -> subprocess.CompletedProcess[str]:
    """Run the real CLI in a child process; with counter, count that process's map writes."""
    full_env = {**os.environ, "BPFSYNC_PIN_ROOT": str(pin_root), **(env or {})}
    cmd = [sys.executable, "-m", "reconciler", *args]
    if counter is None:
        return subprocess.run(cmd, env=full_env, capture_output=True, text=True, timeout=300)
    # The child waits for a byte on stdin before exec'ing bpfsync (same pid), so the counter
    # watches it from its very first syscall.
    gate = ("import os, sys; sys.stdin.buffer.read(1); "
            f"os.execv(sys.executable, {cmd!r})")
    proc = subprocess.Popen([sys.executable, "-c", gate], env=full_env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    counter.watch(proc.pid)
    out, err = proc.communicate("x", timeout=300)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def bpftool_dump(path: Path) -> dict[bytes, bytes]:
    """Map content read by bpftool, independent of bpfsync's own decoder."""
    out = subprocess.run(["bpftool", "-j", "map", "dump", "pinned", str(path)], check=True,
                         capture_output=True, text=True).stdout
    return {bytes(int(b, 16) for b in e["key"]): bytes(int(b, 16) for b in e["value"])
            for e in json.loads(out)}


def bpftool_update(path: Path, key: bytes, value: bytes) -> None:
    subprocess.run(["bpftool", "map", "update", "pinned", str(path), "key", "hex", *(
        f"{b:02x}" for b in key), "value", "hex", *(f"{b:02x}" for b in value)], check=True)


def bpffs_entries(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def bpftool_percpu_counters(path: Path, names: tuple[str, ...]) -> dict[str, int]:
    """A per-CPU array of u64 counters read by bpftool, summed over CPUs, by slot name."""
    out = subprocess.run(["bpftool", "-j", "map", "dump", "pinned", str(path)], check=True,
                         capture_output=True, text=True).stdout
    totals = {}
    for entry in json.loads(out):
        slot = int.from_bytes(bytes(int(b, 16) for b in entry["key"]), "little")
        totals[slot] = sum(int.from_bytes(bytes(int(b, 16) for b in v["value"]), "little")
                           for v in entry["values"])
    return {name: totals.get(i, 0) for i, name in enumerate(names)}

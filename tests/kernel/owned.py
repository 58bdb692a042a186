"""What the kernel tests create on the host, and how they remove exactly that.

Every object a test makes carries the suite's prefix, so it can never be mistaken for
anything else on the host (a real bpfsync installation, another tool, another test run):

    pin roots       /sys/fs/bpf/bpfsync-test-*
    namespaces      /run/netns/bpfsync-test-*
    cgroups         /bpfsync-test-*   (a test's own clients)
    derived         the run directory and data-path cgroup bpfsync derives from a test pin
                    root (reconciler.datapath.supervisor.run_dir, reconciler.cgroups.datapath_cgroup)
    state dirs      $TMPDIR/bpfsync-test-state-PID-*   (a session's history, tests/conftest.py)

A test removes what it made when it ends. A run that was killed (CI's timeout, ^C twice, a
crash) leaves its objects behind; the next session sweeps them at its start — but only when
no other test session is running, which a shared lock on LOCK_FILE tells: every session
holds it shared while it runs, and the sweep needs it exclusively.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from contextlib import suppress
from pathlib import Path

from reconciler.datapath.supervisor import run_dir
from reconciler.tproxy.cgroups import DATAPATH_PARENT, datapath_cgroup

PREFIX = "bpfsync-test-"
BPFFS = Path("/sys/fs/bpf")
NETNS_DIR = Path("/run/netns")
LOCK_FILE = Path("/run/lock/bpfsync-tests.lock")
STATE_PREFIX = "bpfsync-test-state-"  # + the session's PID (tests/conftest.py)


def tag() -> str:
    return uuid.uuid4().hex[:8]


def name(role: str) -> str:
    """A unique name the suite owns, e.g. bpfsync-test-proxy-1a2b3c4d."""
    return f"{PREFIX}{role}-{tag()}"


def pin_root(role: str = "pins") -> Path:
    return BPFFS / name(role)


def _cgroup_root() -> Path:
    from reconciler.kernel import cgroups

    return cgroups.hierarchy()


def remove_cgroup_tree(path: Path) -> None:
    """Kill every process in a cgroup the suite made and remove it with its children."""
    if not path.is_dir():
        return
    with suppress(OSError):
        (path / "cgroup.kill").write_text("1")
    for child in sorted((p for p in path.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        _rmdir_when_empty(child)
    _rmdir_when_empty(path)


def _rmdir_when_empty(path: Path, seconds: float = 10) -> None:
    """rmdir of a cgroup whose processes were killed: they take a moment to go."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def remove_pin_root(root: Path) -> None:
    """A test pin root and everything bpfsync derived from it: its data path's cgroup (the
    processes in it are the test's own daemon and worker), its run directory, the pins. The
    shared parent cgroup /bpfsync is removed only when it is empty (rmdir refuses otherwise):
    a real installation's data path, or another run's, lives beside ours."""
    with suppress(OSError):
        cg = _cgroup_root()
        remove_cgroup_tree(cg / datapath_cgroup(root).lstrip("/"))
        with suppress(OSError):
            (cg / DATAPATH_PARENT.lstrip("/")).rmdir()
    shutil.rmtree(run_dir(root), ignore_errors=True)
    shutil.rmtree(root, ignore_errors=True)


def kill_process_group(pgid: int, seconds: float = 30) -> None:
    """Every process of a group a test started with start_new_session=True: a daemon, its
    data-path worker (orphaned or not), nothing else. Returns once none of them runs any
    more (zombies aside): a worker still finishing its last status write would otherwise
    recreate the run directory the caller removes next."""
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
    deadline = time.monotonic() + seconds
    while _group_alive(pgid):
        if time.monotonic() > deadline:
            raise TimeoutError(f"process group {pgid} still runs {seconds} s after SIGKILL")
        time.sleep(0.02)


def _group_alive(pgid: int) -> bool:
    """True while a process of group pgid exists and is not a zombie."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with suppress(OSError):
            # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
                return True
    return False


def delete_netns(ns: str) -> None:
    """A namespace the suite made, and the processes still running inside it (deleting a
    namespace does not end them)."""
    pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True,
                          timeout=30).stdout.split()
    for pid in pids:
        with suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)
    subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)


def _test_processes() -> list[int]:
    """Processes of a dead run: bpfsync commands whose pin root is a test pin root (given on
    the command line or in BPFSYNC_PIN_ROOT)."""
    marker = str(BPFFS / PREFIX).encode()
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with suppress(OSError):
            cmdline = (entry / "cmdline").read_bytes()
            if b"reconciler" not in cmdline and b"bpfsync" not in cmdline:
                continue
            environ = (entry / "environ").read_bytes()
            if marker in cmdline or b"BPFSYNC_PIN_ROOT=" + marker in environ:
                out.append(int(entry.name))
    return out


def dead_sessions_state_dirs(parent: Path) -> list[Path]:
    """The state directories under parent of test sessions whose process is gone (named
    bpfsync-test-state-PID-*; any other name, or a live PID, is left alone: a unit-test
    session takes no lock, so only its PID tells that it still runs)."""
    out = []
    for path in sorted(parent.glob(STATE_PREFIX + "*")):
        pid = path.name[len(STATE_PREFIX):].partition("-")[0]
        if pid.isdigit() and int(pid) != os.getpid() and not Path(f"/proc/{pid}").exists():
            out.append(path)
    return out


def sweep() -> list[str]:
    """Remove what killed runs of the suite left behind. Call only under the exclusive lock."""
    removed: list[str] = []
    for path in dead_sessions_state_dirs(Path(tempfile.gettempdir())):
        shutil.rmtree(path, ignore_errors=True)
        removed.append(f"state directory {path}")
    for pid in _test_processes():
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
            removed.append(f"process {pid}")
    if NETNS_DIR.is_dir():
        for ns in sorted(NETNS_DIR.glob(PREFIX + "*")):
            delete_netns(ns.name)
            removed.append(f"netns {ns.name}")
    with suppress(OSError):
        cg = _cgroup_root()
        for path in sorted(cg.glob(PREFIX + "*")):
            remove_cgroup_tree(path)
            removed.append(f"cgroup /{path.name}")
    for root in sorted(BPFFS.glob(PREFIX + "*")):
        remove_pin_root(root)
        removed.append(f"pin root {root}")
    # run directories and data-path cgroups whose pin root is already gone
    probe = BPFFS / f"{PREFIX}x"
    # (and the names earlier versions derived, "/" and "-" both written "-")
    legacy = str(probe).strip("/").replace("/", "-")[:-1]
    run_prefixes = (run_dir(probe).name[:-1], legacy)
    cg_prefixes = (datapath_cgroup(probe).rsplit("/", 1)[-1][:-1], legacy)
    for prefix in run_prefixes:
        for path in sorted(run_dir(probe).parent.glob(prefix + "*")):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(f"run directory {path}")
    with suppress(OSError):
        parent = _cgroup_root() / DATAPATH_PARENT.lstrip("/")
        for prefix in cg_prefixes:
            for path in sorted(parent.glob(prefix + "*")):
                remove_cgroup_tree(path)
                removed.append(f"cgroup {DATAPATH_PARENT}/{path.name}")
        with suppress(OSError):
            parent.rmdir()
    return removed


class SessionLock:
    """Held shared by every running test session; the sweep runs only when it can be taken
    exclusively (no other session is running)."""

    def __init__(self) -> None:
        LOCK_FILE.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)

    def sweep_if_alone(self) -> list[str] | None:
        """Sweep leftovers when no other session runs (None: another one does); then hold the
        lock shared for this session."""
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fcntl.flock(self.fd, fcntl.LOCK_SH)
            return None
        try:
            return sweep()
        finally:
            # flock converts by unlocking first: a session starting in that instant may sweep,
            # which is harmless (this one has not created anything yet)
            fcntl.flock(self.fd, fcntl.LOCK_SH)

    def close(self) -> None:
        os.close(self.fd)


def private_state_dir() -> None:
    """bpfsync's state directory (the history) in a temporary directory of this process,
    removed at its exit, unless one is set already (a test session sets its own): a
    benchmark's throwaway pin roots leave nothing in /var/lib/bpfsync."""
    if not os.environ.get("BPFSYNC_STATE_DIR"):
        import atexit
        import tempfile

        path = tempfile.mkdtemp(prefix="bpfsync-bench-state-")
        os.environ["BPFSYNC_STATE_DIR"] = path
        atexit.register(shutil.rmtree, path, True)

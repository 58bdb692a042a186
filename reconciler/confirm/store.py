"""Where a pending change's record lives: `pending.json` in the pin root's run directory
(/run/bpfsync/<pin root>, tmpfs, root-only), written atomically, read only when root owns
it and nobody else can write it (it says what to write into the kernel), and bounded in
size. A reboot loses it, as it loses the pins it describes."""

from __future__ import annotations

import os
import stat
from contextlib import suppress
from pathlib import Path

from reconciler.confirm.record import Pending, Process, decode, encode
from reconciler.core.errors import KernelStateError
from reconciler.privatefiles import write_private

FILE = "pending.json"
MAX_BYTES = 512 << 20  # a 1M-entry plan's record is about 250 MiB


def path(run_directory: Path) -> Path:
    return run_directory / FILE


def read(run_directory: Path) -> Pending | None:
    """The record, or None when there is none. KernelStateError when it cannot be trusted
    (another owner, writable by others, too large, not a record)."""
    p = path(run_directory)
    try:
        fd = os.open(p, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise KernelStateError(f"{p}: cannot be read ({exc.strerror})") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
            raise KernelStateError(f"{p}: not bpfsync's record (owner or mode); not used")
        if st.st_size > MAX_BYTES:
            raise KernelStateError(f"{p}: larger than {MAX_BYTES >> 20} MiB; not used")
        raw = f.read(MAX_BYTES + 1)
    try:
        return decode(raw)
    except ValueError as exc:
        raise KernelStateError(f"{p}: {exc}; not used") from None


class Follower:
    """The record as it changes, for whoever waits on it (the guard, the waiting apply, the
    daemon): read again only when the file was replaced, since it may be large."""

    def __init__(self, run_directory: Path) -> None:
        self.directory = run_directory
        self._seen: tuple[int, int, int] | None = None
        self._last: Pending | None = None

    def read(self) -> Pending | None:
        """The record now (None: there is none); KernelStateError as read()."""
        try:
            st = os.stat(path(self.directory))
        except FileNotFoundError:
            self._seen = self._last = None
            return None
        if (st.st_ino, st.st_mtime_ns, st.st_size) != self._seen:
            self._last = read(self.directory)
            self._seen = (st.st_ino, st.st_mtime_ns, st.st_size)
        return self._last


def write(run_directory: Path, record: Pending) -> None:
    """Atomically (a reader sees the old record or the new one, never half of one)."""
    run_directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_private(path(run_directory), encode(record), sync=True)


def this_process() -> Process:
    return Process(os.getpid(), _start(os.getpid()) or 0)


def process(pid: int) -> Process | None:
    start = _start(pid)
    return None if start is None else Process(pid, start)


def alive(p: Process | None) -> bool:
    """True while p runs (a zombie or a later process with its pid does not count)."""
    if p is None:
        return False
    try:
        fields = Path(f"/proc/{p.pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return False
    return fields[0] not in ("Z", "X") and int(fields[19]) == p.start


def _start(pid: int) -> int | None:
    with suppress(OSError, IndexError, ValueError):
        # "pid (comm) state ppid ...": field 22 is the 20th after the comm
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    return None

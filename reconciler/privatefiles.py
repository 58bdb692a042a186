"""bpfsync's own files on disk: the state directory ($BPFSYNC_STATE_DIR, default
/var/lib/bpfsync: the history, the program tags) and files written whole, root-only."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_STATE_DIR = Path("/var/lib/bpfsync")


def state_directory() -> Path:
    return Path(os.environ.get("BPFSYNC_STATE_DIR") or DEFAULT_STATE_DIR)


def write_private(path: Path, data: bytes, sync: bool = False, tmp: Path | None = None) -> None:
    """data as path, mode 0600, atomically: written to tmp (default path~, never through a
    symlink) and renamed over path, so a reader sees the old file or the new one. sync:
    on disk before the rename."""
    tmp = tmp or path.with_name(path.name + "~")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        if sync:
            f.flush()
            os.fsync(f.fileno())
    tmp.replace(path)

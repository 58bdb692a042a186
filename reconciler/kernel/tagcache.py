"""Tags of BPF programs compiled before, so that a plan recognises an attached program as
the current one without compiling it again: BCC takes one to two seconds per program, in
every diff, apply and daemon reconcile of a data path with programs.

A program's tag depends only on its instructions (map references zeroed), so an entry is
keyed by the source file's name, its flags and the function, under a fingerprint of all the
instructions can depend on besides: the content of every file in bpf/, BCC's version, the
kernel release (its headers) and BCC_KERNEL_SOURCE. Any change of those starts afresh.
Loading a program always compiles it; only tags are remembered.

On disk, $BPFSYNC_STATE_DIR/program-tags.json (root-only, written whole and renamed), at
most MAX_ENTRIES entries, the oldest dropped first. The pin root's path is left out of the
flags (kernel/programs.Compiler), so every pin root of a host shares them. A file that
cannot be read or parsed is no cache, never an error.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from contextlib import suppress
from pathlib import Path

from reconciler.data import data_dir
from reconciler.privatefiles import state_directory, write_private

FILE_NAME = "program-tags.json"
MAX_ENTRIES = 256
MAX_FILE_BYTES = 1 << 20


def default_path() -> Path:
    """Beside the history, in the state directory ($BPFSYNC_STATE_DIR)."""
    return state_directory() / FILE_NAME


def _bcc_version() -> str:
    """BCC's version, read without importing BCC (a cache hit needs no BCC at all)."""
    spec = importlib.util.find_spec("bcc")
    if spec is None or spec.origin is None:
        return "none"
    try:
        return (Path(spec.origin).parent / "version.py").read_text()[:200]
    except OSError:
        return "unknown"


def fingerprint(bpf_dir: Path | None = None) -> str:
    """What the instructions compiled from bpf/ depend on besides source name and flags."""
    h = hashlib.sha256()
    for path in sorted((bpf_dir or data_dir("bpf")).iterdir()):
        if path.is_file():
            h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    for part in (_bcc_version(), os.uname().release, os.environ.get("BCC_KERNEL_SOURCE", "")):
        h.update(part.encode() + b"\0")
    return h.hexdigest()


class TagCache:
    """Tags by (source, flags, function), for one fingerprint; path None: in memory only."""

    def __init__(self, path: Path | None = None, bpf_dir: Path | None = None) -> None:
        self.path = path
        self._fingerprint = fingerprint(bpf_dir)
        self._entries: dict[str, list[str]] = {}
        self._dirty = False
        self.hits = self.misses = 0
        if path is not None:
            self._entries = self._read(path)

    @classmethod
    def in_state_directory(cls) -> TagCache:
        return cls(default_path())

    def _read(self, path: Path) -> dict[str, list[str]]:
        with suppress(OSError, ValueError, TypeError, AttributeError):
            if path.stat().st_size <= MAX_FILE_BYTES:
                data = json.loads(path.read_bytes())
                if data.get("fingerprint") == self._fingerprint:
                    entries = data["entries"]
                    return {k: v for k, v in entries.items() if isinstance(k, str) and
                            isinstance(v, list) and all(isinstance(t, str) for t in v)}
        return {}

    @staticmethod
    def _key(source: str, flags: list[str], function: str) -> str:
        return json.dumps([source, flags, function])

    def get(self, source: str, flags: list[str], function: str) -> frozenset[str] | None:
        tags = self._entries.get(self._key(source, flags, function))
        if tags is None:
            self.misses += 1
            return None
        self.hits += 1
        return frozenset(tags)

    def put(self, source: str, flags: list[str], function: str, tags: frozenset[str]) -> None:
        key = self._key(source, flags, function)
        self._entries.pop(key, None)  # the newest last: the oldest are dropped first
        self._entries[key] = sorted(tags)
        while len(self._entries) > MAX_ENTRIES:
            del self._entries[next(iter(self._entries))]
        self._dirty = True

    def save(self) -> None:
        """Write the entries when some were added (never an error: a cache)."""
        if self.path is None or not self._dirty:
            return
        with suppress(OSError):
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            data = json.dumps({"fingerprint": self._fingerprint, "entries": self._entries})
            # a temporary file per process: commands may save at the same time
            write_private(self.path, data.encode(),
                          tmp=self.path.with_name(f".{self.path.name}.{os.getpid()}"))
            self._dirty = False

"""Per-file results of loading, kept between the daemon's reconciles.

At 100k entries a full parse costs seconds, and a save touches one file. A file's result is
reused while its identity (inode, size, mtime, ctime) is unchanged; when the identity moved
but the bytes did not (touch, `git checkout` rewriting a file), the content hash says so.
Racy timestamps are handled as git does: a file modified within the last RACY_SECONDS may be
rewritten within one timestamp tick without changing size or mtime, so it is hashed every
time until it is old enough. Key files a result read are watched the same way.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from reconciler.load.assembly import Assembly

if TYPE_CHECKING:
    from reconciler.load.files import FileResult

RACY_SECONDS = 2.0
Signature = tuple[int, int, int, int] | None  # ino, size, mtime_ns, ctime_ns; None: missing


def signature(path: str) -> Signature:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def digest(path: str) -> bytes | None:
    try:
        return hashlib.blake2b(Path(path).read_bytes(), digest_size=16).digest()
    except OSError:
        return None


@dataclass(slots=True)
class _Entry:
    sig: Signature
    digest: bytes | None
    result: FileResult
    key_sigs: tuple[tuple[str, Signature], ...]


@dataclass
class CacheStats:
    reused: int = 0
    parsed: int = 0


class FileCache:
    """Results by path. Not thread-safe: one loader (the daemon's reconcile loop) owns it."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._entries: dict[str, _Entry] = {}
        self._clock = clock
        self.last = CacheStats()
        self.assembly = Assembly()  # the state of the last results, to assemble by difference

    def _fresh(self, sig: Signature, now_ns: int) -> bool:
        """Whether a matching signature can be trusted without reading the file."""
        return sig is not None and now_ns - max(sig[2], sig[3]) > RACY_SECONDS * 1e9

    def _valid(self, path: str, entry: _Entry, now_ns: int) -> bool:
        sig = signature(path)
        if sig != entry.sig or not self._fresh(sig, now_ns):
            if sig is None or digest(path) != entry.digest:
                return False
            entry.sig = sig
        for key_path, key_sig in entry.key_sigs:
            now_sig = signature(key_path)
            if now_sig != key_sig or (now_sig is not None and not self._fresh(now_sig, now_ns)):
                return False  # key files are small: any doubt means parse again
        return True

    def load(self, files: Sequence[Path],
             loader: Callable[[list[Path]], list[FileResult]]) -> list[FileResult]:
        """Results for files, in order: cached where still valid, from loader otherwise."""
        now_ns = int(self._clock() * 1e9)
        reused: dict[str, FileResult] = {}
        todo: list[Path] = []
        for path in files:
            entry = self._entries.get(str(path))
            if entry is not None and self._valid(str(path), entry, now_ns):
                reused[str(path)] = entry.result
            else:
                todo.append(path)
        # signatures are taken before parsing: a write during the parse makes them stale
        before = {str(p): (signature(str(p)), digest(str(p))) for p in todo}
        fresh = {str(p): r for p, r in zip(todo, loader(todo) if todo else [], strict=True)}
        for name, result in fresh.items():
            sig, dig = before[name]
            self._entries[name] = _Entry(
                sig, dig, dataclasses.replace(result, text=None),
                tuple((k, signature(k)) for k in result.key_files))
        for name in set(self._entries) - {str(p) for p in files}:
            del self._entries[name]
        self.last = CacheStats(len(reused), len(fresh))
        return [reused[str(p)] if str(p) in reused else fresh[str(p)] for p in files]

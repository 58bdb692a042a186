"""What the data path's workers share per Proxy: connections proxied now (for a
maxConnections that holds across workers) and the round-robin turn (so N connections over K
healthy backends differ by at most one, whichever worker accepted them).

One small file in the run directory (tmpfs), mapped by every worker, made empty by the
supervisor before it starts them. Per slot: the turn, then one connection count per worker
(each worker writes only its own count, so the supervisor can zero a dead worker's share:
its connections died with it). Every read-modify-write holds a POSIX record lock on the
slot's bytes: a lock the kernel drops when its holder dies, so a killed worker never wedges
the others. A lone worker (workers == 1) shares nothing and takes no lock.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

MAX_WORKERS = 64
SLOTS = 64  # steering's slots (1-63) and 0, unused
_CELL = struct.Struct("=q")
STRIDE = _CELL.size * (1 + MAX_WORKERS)  # the turn, then a count per worker
SIZE = STRIDE * SLOTS


def create(path: Path) -> None:
    """An empty table at path (the supervisor, before starting workers)."""
    tmp = path.with_name(path.name + "~")
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.ftruncate(fd, SIZE)
    finally:
        os.close(fd)
    tmp.replace(path)


class Shared:
    """One worker's view of the table: `worker` is its index (0 .. workers-1)."""

    def __init__(self, path: Path | None, worker: int = 0, workers: int = 1) -> None:
        if not 0 <= worker < workers <= MAX_WORKERS:
            raise ValueError(f"worker {worker} of {workers} (at most {MAX_WORKERS})")
        self.worker, self.workers = worker, workers
        self._fd = -1
        self._map: mmap.mmap | None = None
        self._local_turn = [0] * SLOTS
        self._local_count = [0] * SLOTS
        if path is not None and workers > 1:
            self._fd = os.open(path, os.O_RDWR)
            self._map = mmap.mmap(self._fd, SIZE)

    @property
    def shared(self) -> bool:
        return self._map is not None

    @contextmanager
    def _locked(self, slot: int) -> Iterator[mmap.mmap]:
        assert self._map is not None
        fcntl.lockf(self._fd, fcntl.LOCK_EX, STRIDE, slot * STRIDE)
        try:
            yield self._map
        finally:
            fcntl.lockf(self._fd, fcntl.LOCK_UN, STRIDE, slot * STRIDE)

    def _cell(self, slot: int, index: int) -> int:
        return slot * STRIDE + _CELL.size * index

    def admit(self, slot: int, limit: int) -> bool:
        """Count one more connection of this worker if all workers' stay below limit."""
        if self._map is None:
            if self._local_count[slot] >= limit:
                return False
            self._local_count[slot] += 1
            return True
        with self._locked(slot) as m:
            counts = struct.unpack_from(f"={self.workers}q", m, self._cell(slot, 1))
            if sum(counts) >= limit:
                return False
            mine = self._cell(slot, 1 + self.worker)
            _CELL.pack_into(m, mine, counts[self.worker] + 1)
            return True

    def release(self, slot: int) -> None:
        """One connection of this worker ended."""
        if self._map is None:
            self._local_count[slot] = max(0, self._local_count[slot] - 1)
            return
        with self._locked(slot) as m:
            mine = self._cell(slot, 1 + self.worker)
            _CELL.pack_into(m, mine, max(0, _CELL.unpack_from(m, mine)[0] - 1))

    def total(self, slot: int) -> int:
        """Connections all workers proxy for slot now (a snapshot)."""
        if self._map is None:
            return self._local_count[slot]
        return sum(struct.unpack_from(f"={self.workers}q", self._map, self._cell(slot, 1)))

    @contextmanager
    def turn(self, slot: int) -> Iterator[list[int]]:
        """The round-robin turn of slot, as a one-element list the caller may advance
        while it holds it."""
        if self._map is None:
            box = [self._local_turn[slot]]
            yield box
            self._local_turn[slot] = box[0]
            return
        with self._locked(slot) as m:
            box = [_CELL.unpack_from(m, self._cell(slot, 0))[0]]
            yield box
            _CELL.pack_into(m, self._cell(slot, 0), box[0])

    def forget_worker(self, worker: int) -> None:
        """Zero a dead worker's counts (its connections ended with it); supervisor only."""
        if self._map is None:
            return
        for slot in range(SLOTS):
            with self._locked(slot) as m:
                _CELL.pack_into(m, self._cell(slot, 1 + worker), 0)

    def close(self) -> None:
        if self._map is not None:
            self._map.close()
            os.close(self._fd)
            self._map = None

"""What the data path's workers share per Proxy: connections proxied now (for a
maxConnections that holds across workers) and the round-robin turn (so N connections over K
healthy backends differ by at most one, whichever worker accepted them).

One small file in the run directory (tmpfs), mapped by every worker, made empty by the
supervisor before it starts them. Per slot: the turn, then one connection count per worker
(each worker writes only its own count, so the supervisor can zero a dead worker's share:
its connections died with it). Admissions and the turn are read and written under a POSIX
record lock on the slot's bytes: a lock the kernel drops when its holder dies, so a killed
worker never wedges the others. A worker takes it once per wake-up of a listener, for every
connection that wake-up accepts (Cells), not once per connection. An ended connection is
written without it: a worker is the only writer of its own count, and a count that is read
just before it falls only makes another worker's admission the more careful. A lone worker
(workers == 1) shares nothing and takes no lock.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from reconciler.datapath.balancer import Pool, Target

MAX_WORKERS = 64
SLOTS = 64  # steering's slots (1-63) and 0, unused
_CELL = struct.Struct("=q")
STRIDE = _CELL.size * (1 + MAX_WORKERS)  # the turn, then a count per worker
LOADS = STRIDE * SLOTS  # then per worker: its load (CPU per second, in 1e-6) and when
_LOAD = struct.Struct("=qq")
SIZE = LOADS + _LOAD.size * MAX_WORKERS


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

    def cells(self, slot: int) -> Cells:
        """slot's counts and turn, held (locked) for the `with` block: a batch of admissions
        and their picks."""
        return Cells(self, slot)

    def admit(self, slot: int, limit: int) -> bool:
        """Count one more connection of this worker if all workers' stay below limit."""
        with self.cells(slot) as cells:
            if not cells.room(limit):
                return False
            cells.add()
            return True

    def release(self, slot: int) -> None:
        """One connection of this worker ended (no lock: see the module's docstring)."""
        if self._map is None:
            self._local_count[slot] = max(0, self._local_count[slot] - 1)
            return
        mine = self._cell(slot, 1 + self.worker)
        _CELL.pack_into(self._map, mine, max(0, _CELL.unpack_from(self._map, mine)[0] - 1))

    def total(self, slot: int) -> int:
        """Connections all workers proxy for slot now (a snapshot)."""
        if self._map is None:
            return self._local_count[slot]
        return sum(struct.unpack_from(f"={self.workers}q", self._map, self._cell(slot, 1)))

    @contextmanager
    def turn(self, slot: int) -> Iterator[list[int]]:
        """The round-robin turn of slot, as a one-element list the caller may advance
        while it holds it."""
        with self.cells(slot) as cells:
            box = [cells.turn]
            yield box
            cells.turn = box[0]

    def _enter(self, slot: int) -> tuple[int, int]:
        """Lock slot; (every worker's connections, the turn)."""
        if self._map is None:
            return self._local_count[slot], self._local_turn[slot]
        fcntl.lockf(self._fd, fcntl.LOCK_EX, STRIDE, slot * STRIDE)
        counts = struct.unpack_from(f"={self.workers}q", self._map, self._cell(slot, 1))
        return sum(counts), _CELL.unpack_from(self._map, self._cell(slot, 0))[0]

    def _exit(self, slot: int, added: int, turn: int) -> None:
        """Count added more of ours, store the turn, unlock slot."""
        if self._map is None:
            self._local_count[slot] += added
            self._local_turn[slot] = turn
            return
        try:
            mine = self._cell(slot, 1 + self.worker)
            _CELL.pack_into(self._map, mine, _CELL.unpack_from(self._map, mine)[0] + added)
            _CELL.pack_into(self._map, self._cell(slot, 0), turn)
        finally:
            fcntl.lockf(self._fd, fcntl.LOCK_UN, STRIDE, slot * STRIDE)

    def report_load(self, load: float, at: float) -> None:
        """This worker's load (CPU seconds per second) at `at` (time.monotonic(), which is
        the host's), for the standby workers (standby.py); one writer per cell, no lock."""
        if self._map is not None:
            _LOAD.pack_into(self._map, LOADS + _LOAD.size * self.worker, round(load * 1e6),
                            round(at * 1e9))

    def loads(self) -> list[tuple[float, float]]:
        """Every worker's last (load, reported at); (0, 0) for one that never reported."""
        if self._map is None:
            return [(0.0, 0.0)] * self.workers
        return [(load / 1e6, at / 1e9) for load, at in
                (_LOAD.unpack_from(self._map, LOADS + _LOAD.size * i)
                 for i in range(self.workers))]

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


class Cells:
    """One slot of the table, locked while a `with` block admits connections and picks
    their backends: one lock for all a listener's wake-up accepts. Other workers can only
    lower the total meanwhile (their ended connections), so the total read on entry plus
    our additions is an upper bound: room() never lets maxConnections be exceeded."""

    __slots__ = ("_added", "_shared", "_slot", "_total", "turn")

    def __init__(self, owner: Shared, slot: int) -> None:
        self._shared, self._slot = owner, slot
        self._total = self._added = self.turn = 0

    def __enter__(self) -> Cells:
        self._total, self.turn = self._shared._enter(self._slot)
        self._added = 0
        return self

    def __exit__(self, *exc: object) -> None:
        self._shared._exit(self._slot, self._added, self.turn)

    def room(self, limit: int) -> bool:
        """Another connection keeps every worker's total within limit."""
        return self._total < limit

    def add(self) -> None:
        """Count one more connection of ours."""
        self._total += 1
        self._added += 1

    def pick(self, pool: Pool) -> Target | None:
        """The next healthy target in the rotation all workers share (None: all down)."""
        target, self.turn = pool.pick_at(self.turn)
        return target

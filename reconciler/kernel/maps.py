"""Pinned maps under a pin root: open, check, create, read, write.

The only module (with libbpf.py) that touches the kernel for maps. Generic: which maps there
are is the caller's (the registry's) list of specs. A pin whose type, key size,
value size, max entries or flags differ from the spec is refused, never reused: BPF programs
would silently read garbage.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

from reconciler.core import capacity
from reconciler.core.capacity import Capacities
from reconciler.core.errors import KernelStateError
from reconciler.core.plan import Operation
from reconciler.core.tables import BPF_MAP_TYPE_HASH, Entries, MapSpec, Observed
from reconciler.kernel import libbpf

BPF_FS_MAGIC = 0xCAFE4A11
DEFAULT_PIN_ROOT = Path("/sys/fs/bpf/bpfsync")
# Entries per batch write: the joined buffers stay under 16 MB however large the table (1M
# names entries in one call were 250 MB), and more entries per call no longer measure faster
WRITE_BATCH = 65536


def fs_magic(path: Path) -> int:
    buf = ctypes.create_string_buffer(256)  # struct statfs; f_type is the first long
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.statfs(str(path).encode(), buf) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), str(path))
    return ctypes.c_long.from_buffer(buf).value & 0xFFFFFFFF


@dataclass
class PinnedTables:
    """Open file descriptors of the maps of specs (None: not created yet); specs with the
    pin root's capacities (core/capacity.py)."""

    root: Path
    specs: dict[str, MapSpec]
    fds: dict[str, int | None]
    capacities: Capacities = field(default_factory=lambda: Capacities({}))

    def close(self) -> None:
        for fd in self.fds.values():
            if fd is not None:
                with suppress(OSError):
                    os.close(fd)

    def read(self, specs: tuple[MapSpec, ...]) -> Observed:
        """Current content of the maps of specs, read with batch lookups where the map type
        has them."""
        out: Observed = {}
        for spec in specs:
            fd = self.fds.get(spec.name)
            if fd is None:
                out[spec.name] = {}
            elif spec.batch:
                out[spec.name] = libbpf.lookup_all(fd, spec.key_size, spec.value_size,
                                                   self.specs.get(spec.name, spec).max_entries)
            else:
                out[spec.name] = libbpf.lookup_each(fd, spec.key_size, spec.value_size)
        return out

    def entries(self, spec: MapSpec) -> Iterator[tuple[bytes, bytes]]:
        """The entries of spec's map as they are read (a batch at a time where the map type
        has batches): for a caller that looks at each once, without a copy of the map."""
        fd = self.fds.get(spec.name)
        if fd is None:
            return iter(())
        if spec.batch:
            return libbpf.batched_entries(fd, spec.key_size, spec.value_size,
                                          self.specs.get(spec.name, spec).max_entries)
        return libbpf.each_entry(fd, spec.key_size, spec.value_size)

    def read_keys(self, spec: MapSpec, keys: Iterable[bytes]) -> Entries:
        """The entries of keys that the hash map of spec holds (exact lookups, one per key:
        never for an LPM trie, whose lookup answers the longest matching prefix)."""
        assert spec.map_type == BPF_MAP_TYPE_HASH, spec.name
        fd = self.fds.get(spec.name)
        if fd is None:
            return {}
        found = ((key, libbpf.lookup_elem(fd, key, spec.value_size)) for key in keys)
        return {key: value for key, value in found if value is not None}

    def complete(self) -> bool:
        return all(fd is not None for fd in self.fds.values())

    def counters(self, spec: MapSpec, slots: int | None = None) -> list[int]:
        """A per-CPU counter array summed over CPUs ([] before it exists)."""
        fd = self.fds.get(spec.name)
        if fd is None:
            return []
        return libbpf.percpu_array_sums(fd, slots or spec.max_entries)

    def counter_rows(self, spec: MapSpec, names: tuple[str, ...], keep: set[int],
                     width: int | None = None) -> dict[int, dict[str, int]]:
        """A per-CPU counter array laid out as rows of width (default len(names)) counters,
        the first len(names) named: row -> name -> sum over CPUs; rows never counted are
        left out unless kept."""
        raw = self.counters(spec)
        if not raw:
            return {}
        width = width or len(names)
        out: dict[int, dict[str, int]] = {}
        for row in range(spec.max_entries // width):
            values = raw[row * width:row * width + len(names)]
            if any(values) or row in keep:
                out[row] = dict(zip(names, values, strict=True))
        return out

    def write(self, table: str, ops: list[Operation], delete: bool) -> None:
        """Upsert (or delete) the entries of ops in one table: batch syscalls of WRITE_BATCH
        entries where the map type has them, else one per entry."""
        fd = self.fds[table]
        if fd is None:
            raise KernelStateError(f"map {table} is not open for writing")
        if not self.specs[table].batch:
            for op in ops:
                if delete:
                    libbpf.delete_elem(fd, op.key)
                else:
                    libbpf.update_elem(fd, op.key, op.value or b"")
        else:
            for start in range(0, len(ops), WRITE_BATCH):
                batch = ops[start:start + WRITE_BATCH]
                keys = b"".join(op.key for op in batch)
                if delete:
                    libbpf.delete_batch(fd, keys, len(batch))
                else:
                    libbpf.update_batch(fd, keys, b"".join(op.value or b"" for op in batch),
                                        len(batch))


def read_pin(root: Path, spec: MapSpec) -> dict[bytes, bytes] | None:
    """Every entry of one pinned hash map, or None when it is not pinned (yet): for the
    data path, which reads a table or two without opening them all."""
    fd = libbpf.obj_get_if_pinned(str(root / "maps" / spec.name))
    if fd is None:
        return None
    try:
        return libbpf.lookup_all(fd, spec.key_size, spec.value_size, spec.max_entries)
    finally:
        os.close(fd)


def _mismatch(spec: MapSpec, info: libbpf.BpfMapInfo) -> list[str]:
    checks = (("type", info.type, spec.map_type), ("key size", info.key_size, spec.key_size),
              ("value size", info.value_size, spec.value_size),
              ("max entries", info.max_entries, spec.max_entries),
              ("flags", info.map_flags, spec.flags))
    return [f"{what} {have} (expected {want})" for what, have, want in checks if have != want]


def _check_root(root: Path, create: bool) -> bool:
    """True when the pin root exists (created if asked); refuses a root outside bpffs."""
    probe = root
    while not probe.exists():
        probe = probe.parent
    if fs_magic(probe) != BPF_FS_MAGIC:
        raise KernelStateError(
            f"pin root {root} is not on a BPF filesystem; mount one with "
            f"`mount -t bpf bpf /sys/fs/bpf` or choose another --pin-root")
    if create:
        (root / "maps").mkdir(mode=0o700, parents=True, exist_ok=True)
    return root.exists()


def open_tables(root: Path, create: bool, specs: tuple[MapSpec, ...],
                checked: tuple[MapSpec, ...] = (),
                requested: Mapping[str, int] | None = None) -> PinnedTables:
    """Open the maps of specs under root; with create, create and pin the missing ones.
    checked: maps created by someone else (BCC) whose pins are checked when they exist.
    requested: capacities asked for (group -> entries, `--capacity`); a sized group takes
    the size of its pinned maps, else the request, else the default (core/capacity.py).

    Every existing pin is checked before anything is created, so a mismatch leaves the pin
    root exactly as it was.
    """
    tables = PinnedTables(root, {s.name: s for s in specs}, {s.name: None for s in specs},
                          capacity.settle(capacity.defaults(specs), requested or {}, {}))
    if not _check_root(root, create):
        return tables
    problems: list[str] = []
    try:
        infos: dict[str, libbpf.BpfMapInfo] = {}
        for spec in (*specs, *checked):
            path = root / "maps" / spec.name
            if not path.exists():
                continue
            fd = libbpf.obj_get(str(path))
            infos[spec.name] = libbpf.map_info(fd)
            if spec in checked:
                os.close(fd)  # only checked: BCC's compilation opens it by its pin
            else:
                tables.fds[spec.name] = fd
        pinned: dict[str, dict[str, int]] = {}
        for spec in specs:
            if spec.sized_by is not None and spec.name in infos:
                pinned.setdefault(spec.sized_by, {})[spec.name] = infos[spec.name].max_entries
        tables.capacities = capacity.settle(capacity.defaults(specs), requested or {}, pinned)
        tables.specs = {s.name: tables.capacities.spec(s) for s in specs}
        for spec in (*tables.specs.values(), *checked):
            diff = _mismatch(spec, infos[spec.name]) if spec.name in infos else []
            if diff:
                problems.append(f"{root / 'maps' / spec.name}: {', '.join(diff)}")
        if problems:
            raise KernelStateError(
                "existing pinned maps do not match this version of bpfsync and were left "
                "untouched:\n  " + "\n  ".join(problems) +
                "\nmigrate or remove them (bpfsync never reuses a mismatched map)")
        if create:
            for spec in tables.specs.values():
                if tables.fds[spec.name] is None:
                    tables.fds[spec.name] = _create(root / "maps" / spec.name, spec)
    except BaseException:
        tables.close()
        raise
    return tables


def _create(path: Path, spec: MapSpec) -> int:
    fd = libbpf.map_create(spec.map_type, spec.name, spec.key_size, spec.value_size,
                           spec.max_entries, spec.flags)
    try:
        libbpf.obj_pin(fd, str(path))
    except OSError as exc:
        os.close(fd)
        if exc.errno != errno.EEXIST:
            raise
        fd = libbpf.obj_get(str(path))  # lost a race with another apply: use theirs
        if _mismatch(spec, libbpf.map_info(fd)):
            os.close(fd)
            raise KernelStateError(f"{path} was created concurrently with another layout") from None
    return fd


@contextmanager
def locked(root: Path, wait: float = 0) -> Iterator[None]:
    """Serialise writers of one pin root (two applies at once would interleave plans); wait:
    seconds to wait for another writer to finish (0: fail at once)."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    deadline = time.monotonic() + wait
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise KernelStateError(f"another bpfsync is applying to {root}; try "
                                           f"again when it is done") from None
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)


def remove_pins(root: Path, specs: tuple[MapSpec, ...]) -> list[str]:
    """Unlink the pins of specs under root/maps (the maps live on while a program or
    process holds them), then the directory if it is empty; what was removed, relative to
    root. Anything else pinned there is not bpfsync's and stays."""
    removed = []
    maps = root / "maps"
    for spec in specs:
        with suppress(FileNotFoundError):
            (maps / spec.name).unlink()
            removed.append(f"maps/{spec.name}")
    return removed + remove_empty_dirs(root, ("maps",))


def remove_empty_dirs(root: Path, names: tuple[str, ...]) -> list[str]:
    """rmdir root/name for each name that exists and is empty; what was removed."""
    out = []
    for name in names:
        try:
            (root / name).rmdir()
            out.append(f"{name}/")
        except FileNotFoundError:
            pass
        except OSError as exc:
            if exc.errno != errno.ENOTEMPTY:
                raise
    return out


class ReadOnDemand(Mapping[str, Entries]):
    """Pinned tables as observed state, read no earlier than they are needed: a table asked
    for by name is read whole once and kept; entries(name) gives a table's entries as they
    are read, kept nowhere (the kept copy once there is one). The planner compares most
    tables that way; at 1M Services, the kernel's copy of every table cost about 700 MB."""

    def __init__(self, tables: PinnedTables, specs: tuple[MapSpec, ...]) -> None:
        self._tables, self._specs = tables, {s.name: s for s in specs}
        self._whole: dict[str, Entries] = {}

    def __getitem__(self, name: str) -> Entries:
        if name not in self._whole:
            spec = self._specs[name]  # (KeyError for a table not among specs: Mapping.get)
            self._whole[name] = self._tables.read((spec,))[name]
        return self._whole[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._specs)

    def __len__(self) -> int:
        return len(self._specs)

    def entries(self, name: str) -> Iterable[tuple[bytes, bytes]]:
        whole = self._whole.get(name)
        return whole.items() if whole is not None else self._tables.entries(self._specs[name])

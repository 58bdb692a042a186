"""bs_names: one entry per declared resource, written in the same apply as its entries.

Key: the name the resource's entries derive from their ids when nothing names them (its
kernel ref, e.g. "Service/svc-1-2", "TransparentProxy/(id 3)"), ASCII, NUL-padded to
REF_LEN. Value: the declared name (NAME_LEN), the file that declares it relative to the
directory (FILE_LEN; a longer path keeps its end after "..."), the git commit of the
directory when the resource was last written (REVISION_LEN bytes, zero when none), flags
(bit 0: a revision is recorded, bit 1: the work tree had uncommitted changes), 3 bytes of
padding, bpfsync's stamp. The table is bpfsync's alone: no BPF program reads it.

A name is read back only from an entry bpfsync wrote (stamped) and only when it is a valid
resource name, so a foreign writer cannot put text of its choosing into a plan or `get`.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable, Mapping

from reconciler.core.capacity import NAMES_GROUP
from reconciler.core.tables import (
    BPF_F_NO_PREALLOC,
    Codec,
    Decoded,
    MapSpec,
    Owners,
    stamp_ok,
    stamped,
)

REF_LEN, NAME_LEN, FILE_LEN, REVISION_LEN = 48, 64, 128, 20
HAS_REVISION, DIRTY = 1, 2
_VALUE = struct.Struct(f"{NAME_LEN}s{FILE_LEN}s{REVISION_LEN}sB3x")
# Every resource of a kind with entries has one: as many as all of them together can be. The
# default; a pin root made with larger capacities gets more (core/capacity.py, NAMES_GROUP).
MAX_NAMES = 262144
# Not preallocated: a full table would be 70 MB of kernel memory that most hosts never use.
NAMES = MapSpec("bs_names", REF_LEN, _VALUE.size + 4, MAX_NAMES, "", flags=BPF_F_NO_PREALLOC,
                sized_by=NAMES_GROUP)
_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]{0,61}[a-z0-9])?")  # schema/common.json's pattern


def names_key(ref: str) -> bytes:
    raw = ref.encode("ascii")
    if len(raw) > REF_LEN:
        raise ValueError(f"kernel ref {ref!r} is longer than {REF_LEN} bytes")
    return raw.ljust(REF_LEN, b"\0")


def _fit_file(file: str) -> bytes:
    raw = file.encode()
    if len(raw) <= FILE_LEN:
        return raw
    tail = raw[-(FILE_LEN - 3):].decode(errors="ignore")  # whole characters only
    return b"..." + tail.encode()


def _revision(revision: str | None) -> tuple[bytes, int]:
    """A revision as the daemon and the command line read it: a commit in hex, "-dirty"
    when the tree had uncommitted changes; None or anything else: none recorded."""
    if not revision:
        return b"", 0
    commit, _, dirty = revision.partition("-")
    try:
        raw = bytes.fromhex(commit[:2 * REVISION_LEN])
    except ValueError:
        return b"", 0
    return raw, HAS_REVISION | (DIRTY if dirty == "dirty" else 0)


def names_value(key: bytes, name: str, file: str, revision: str | None) -> bytes:
    commit, flags = _revision(revision)
    return stamped(key, _VALUE.pack(name.encode(), _fit_file(file), commit, flags))


def _text(raw: bytes) -> str:
    return raw.rstrip(b"\0").decode(errors="replace")


def _ref(raw: bytes) -> str:
    """The kernel ref a key holds, or "(unknown)/(unknown)" for a foreign key that is not one
    (it is shown in plans: no bytes of a stranger's choosing reach a terminal)."""
    text = raw.rstrip(b"\0")
    if text and all(0x20 <= b < 0x7f for b in text) and b"/" in text:
        return text.decode("ascii")
    return "(unknown)/(unknown)"


def _checked(raw: bytes, valid: Callable[[str], object]) -> str:
    """A text field as written, or a placeholder saying what it is when it is not what
    bpfsync writes (a foreign entry's bytes never reach a terminal or a log)."""
    text = _text(raw)
    return text if valid(text) else f"(not valid: {len(text.encode())} bytes)"


def decode_key(raw: bytes) -> Decoded:
    return {"ref": _ref(raw)}


def decode_value(raw: bytes) -> Decoded:
    """name, file and (when one was recorded) revision: 12 hex digits, "-dirty" when the
    work tree had uncommitted changes."""
    name, file, commit, flags = _VALUE.unpack_from(raw)
    out: Decoded = {"name": _checked(name, _NAME.fullmatch), "file": _checked(file, str.isprintable)}
    if flags & HAS_REVISION:
        out["revision"] = commit.hex()[:12] + ("-dirty" if flags & DIRTY else "")
    return out


def names_still(key: bytes, old: bytes, name: str) -> bool:
    """The kernel's entry still names the resource right (bpfsync wrote it, with this name):
    it is kept with the file and revision that last wrote the resource, so a new commit, or
    a resource moved to another file, writes nothing (core/desired.DesiredTables.kept)."""
    raw = name.encode()
    return (len(old) == NAMES.value_size and old[:len(raw)] == raw and old[len(raw)] == 0
            and stamp_ok(key, old))


Source = dict[str, str | None]  # {"file", "revision"} of a declared resource


class Names:
    """The names the kernel holds, looked up one kernel ref at a time (nothing is decoded
    until asked: a plan of a few deletions among 100,000 services decodes a few)."""

    def __init__(self, observed: Mapping[str, Mapping[bytes, bytes]]) -> None:
        self._table = observed.get(NAMES.name) or {}

    @property
    def empty(self) -> bool:
        return not self._table

    def _decoded(self, ref: str) -> Decoded | None:
        if not self._table:
            return None
        try:
            key = names_key(ref)
        except (ValueError, UnicodeEncodeError):
            return None
        raw = self._table.get(key)
        if raw is None or len(raw) != NAMES.value_size or not stamp_ok(key, raw):
            return None
        value = decode_value(raw)
        return value if _NAME.fullmatch(value["name"]) else None

    def resolve(self, ref: str) -> str:
        """"Kind/declared-name" for a kernel ref, or the ref itself when nothing names it."""
        value = self._decoded(ref)
        return f"{ref.partition('/')[0]}/{value['name']}" if value else ref

    def source(self, ref: str) -> Source | None:
        """Where the resource with this kernel ref was declared, as last applied: its file
        and (when the directory was a git work tree) revision."""
        value = self._decoded(ref)
        return {k: v for k, v in value.items() if k != "name"} if value else None


NO_NAMES = Names({})  # entries named after their kernel refs only


def resolved(owners: Callable[[Mapping[str, Mapping[bytes, bytes]]], Owners],
             observed: Mapping[str, Mapping[bytes, bytes]], names: Names | None = None) -> Owners:
    """A codec's owners with declared names put in for the kernel refs they derive."""
    derive = owners(observed)
    names = names or Names(observed)
    if names.empty:
        return derive
    return lambda key, value: names.resolve(derive(key, value))


def _describe(k: Decoded) -> str:
    return str(k["ref"])


def _own_owner(_observed: Mapping[str, Mapping[bytes, bytes]]) -> Owners:
    """A names entry belongs to the resource its key is the kernel ref of."""
    return lambda key, _value: _ref(key)


CODECS: dict[str, Codec] = {
    NAMES.name: Codec(decode_key, decode_value, _describe, _own_owner)}

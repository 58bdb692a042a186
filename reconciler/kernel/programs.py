"""BPF programs compiled with BCC against the pinned tables, tagged, loaded. Generic: which
source, with which flags, and which of its functions is each data path's (their
programs.py, which the attachment parts call).

A program's tag is computed from its instructions before loading (as the kernel does:
SHA-256 since 6.18, SHA-1 before, over the instructions with map references zeroed), so an
unchanged program is recognised without loading anything.
"""

from __future__ import annotations

import hashlib
import struct
from contextlib import suppress
from pathlib import Path
from typing import Any

from reconciler.core.errors import KernelStateError
from reconciler.data import data_dir
from reconciler.kernel.bcc_env import ensure_kernel_source
from reconciler.kernel.tagcache import TagCache

BPF_DIR = data_dir("bpf")
BPF_PROG_TYPE_SCHED_CLS = 3
BPF_PROG_TYPE_SK_LOOKUP = 30
BPF_SK_LOOKUP = 36  # its expected attach type
_LD_IMM64 = 0x18
_PSEUDO_MAP_FD, _PSEUDO_MAP_VALUE = 1, 2


def program_tags(insns: bytes) -> frozenset[str]:
    """The tags the kernel may report for these instructions (hex, 16 digits)."""
    buf = bytearray(insns)
    was_ld_map = False
    for off in range(0, len(buf), 8):
        code, regs, ins_off, _ = struct.unpack_from("<BBhi", buf, off)
        if not was_ld_map and code == _LD_IMM64 and (regs >> 4) in (_PSEUDO_MAP_FD,
                                                                      _PSEUDO_MAP_VALUE):
            was_ld_map = True
            struct.pack_into("<i", buf, off + 4, 0)
        elif was_ld_map and code == 0 and regs == 0 and ins_off == 0:
            was_ld_map = False
            struct.pack_into("<i", buf, off + 4, 0)
        else:
            was_ld_map = False
    data = bytes(buf)
    return frozenset((hashlib.sha256(data).hexdigest()[:16], hashlib.sha1(data).hexdigest()[:16]))


class Compilation:
    """One program source with its flags, compiled by BCC when first needed: its tags may
    come from a TagCache instead (an unchanged program is recognised without compiling)."""

    def __init__(self, source: str, flags: list[str], what: str) -> None:
        self.source, self.flags, self.what = source, flags, what
        self._bpf: Any = None

    def bpf(self) -> Any:
        if self._bpf is None:
            Compiler.check()
            from bcc import BPF

            path = BPF_DIR / self.source
            try:
                self._bpf = BPF(src_file=str(path).encode(), cflags=[f"-I{BPF_DIR}", *self.flags])
            except Exception as exc:
                raise KernelStateError(f"compiling {path} ({self.what}) failed: {exc}") from exc
        return self._bpf

    def close(self) -> None:
        if self._bpf is not None:
            with suppress(Exception):
                self._bpf.cleanup()
            self._bpf = None


class Compiler:
    """Compilations by key, kept until close(): the loaded programs' fds belong to them.
    The tables must exist: BCC would otherwise create them, without bpfsync's layout checks.
    tags: tags of programs compiled before (the daemon keeps one for its lifetime; a command
    reads and updates the state directory's, kernel/tagcache.py)."""

    def __init__(self, tags: TagCache | None = None, pin_root: Path | None = None) -> None:
        self._compiled: dict[Any, Compilation] = {}
        self._tags = tags
        self._pin_root = str(pin_root) if pin_root is not None else None

    def _cache_flags(self, compilation: Compilation) -> list[str]:
        """The flags a program's tags are remembered by: the pin root's path left out (it
        only says where BCC finds the pinned maps, whose references the tag zeroes), so
        every pin root of this host shares the entries."""
        root = self._pin_root
        return [f.replace(root, "{pin root}") for f in compilation.flags] if root else compilation.flags

    @staticmethod
    def check() -> None:
        """Raise KernelStateError unless programs can be compiled here (BCC importable): an
        apply checks this before it creates anything, rather than failing after the pins."""
        ensure_kernel_source()
        try:
            import bcc  # noqa: F401
        except ImportError as exc:
            raise KernelStateError(
                "BCC is not importable (Debian package python3-bpfcc); run "
                "packaging/install.sh") from exc

    def compile(self, key: Any, source: str, flags: list[str], what: str) -> Compilation:
        """bpf/<source> with flags (one Compilation per key; BCC runs when first needed)."""
        if key not in self._compiled:
            self._compiled[key] = Compilation(source, flags, what)
        return self._compiled[key]

    def tags(self, compilation: Compilation, function: str) -> frozenset[str]:
        """The tags the kernel may report for function once loaded: remembered by the tag
        cache for this very source, flags, BCC and kernel, else compiled and computed."""
        flags = self._cache_flags(compilation)
        if self._tags is not None:
            known = self._tags.get(compilation.source, flags, function)
            if known is not None:
                return known
        tags = program_tags(compilation.bpf().dump_func(function.encode()))
        if self._tags is not None:
            self._tags.put(compilation.source, flags, function, tags)
        return tags

    @staticmethod
    def load(compilation: Compilation, function: str, prog_type: int,
             attach_type: int | None = None, what: str = "") -> int:
        """The loaded function's fd, owned by the compilation (closed by close())."""
        bpf = compilation.bpf()
        try:
            fn = bpf.load_func(function.encode(), prog_type, **(
                {"attach_type": attach_type} if attach_type is not None else {}))
        except Exception as exc:
            raise KernelStateError(f"loading {function}{f' ({what})' if what else ''} "
                                   f"failed: {exc}") from exc
        return fn.fd

    def close(self) -> None:
        for compilation in self._compiled.values():
            compilation.close()
        self._compiled.clear()
        if self._tags is not None:
            self._tags.save()

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
from typing import Any

from reconciler.core.errors import KernelStateError
from reconciler.data import data_dir
from reconciler.kernel.bcc_env import ensure_kernel_source

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


class Compiler:
    """BCC compilations by key, kept until close(): the loaded programs' fds belong to them.
    The tables must exist: BCC would otherwise create them, without bpfsync's layout checks."""

    def __init__(self) -> None:
        self._compiled: dict[Any, Any] = {}

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

    def compile(self, key: Any, source: str, flags: list[str], what: str) -> Any:
        """bpf/<source> compiled with flags (once per key)."""
        if key not in self._compiled:
            self.check()
            from bcc import BPF

            path = BPF_DIR / source
            try:
                self._compiled[key] = BPF(src_file=str(path).encode(),
                                          cflags=[f"-I{BPF_DIR}", *flags])
            except Exception as exc:
                raise KernelStateError(f"compiling {path} ({what}) failed: {exc}") from exc
        return self._compiled[key]

    @staticmethod
    def tags(bpf: Any, function: str) -> frozenset[str]:
        return program_tags(bpf.dump_func(function.encode()))

    @staticmethod
    def load(bpf: Any, function: str, prog_type: int, attach_type: int | None = None,
             what: str = "") -> int:
        """The loaded function's fd, owned by the compilation (closed by close())."""
        try:
            fn = bpf.load_func(function.encode(), prog_type, **(
                {"attach_type": attach_type} if attach_type is not None else {}))
        except Exception as exc:
            raise KernelStateError(f"loading {function}{f' ({what})' if what else ''} "
                                   f"failed: {exc}") from exc
        return fn.fd

    def close(self) -> None:
        for bpf in self._compiled.values():
            with suppress(Exception):
                bpf.cleanup()
        self._compiled.clear()

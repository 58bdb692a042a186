"""The BPF programs (TrueIngress TC programs, the sk_lookup steering program): compiled with
BCC against the pinned tables, tagged, loaded.

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

from reconciler.attach import Config, InterceptProgram, ProgramConfig, function_of
from reconciler.core.errors import KernelStateError
from reconciler.data import data_dir
from reconciler.kernel.bcc_env import ensure_kernel_source

BPF_DIR = data_dir("bpf")
SOURCE = BPF_DIR / "trueingress.c"
STEER_SOURCE = BPF_DIR / "steer.c"
STEER_FUNCTION = "ps_dispatch"
TPROXY_SOURCE = BPF_DIR / "tproxy.c"
INTERCEPT_SOURCE = BPF_DIR / "intercept.c"
BPF_PROG_TYPE_SK_LOOKUP = 30
BPF_SK_LOOKUP = 36  # expected attach type
# cgroup programs of transparent proxies: hook -> (program type, expected attach type)
CGROUP_PROGRAM_TYPES = {"connect4": (18, 10), "connect6": (18, 11), "sock_ops": (13, None),
                        "getsockopt": (25, 21)}
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


def cflags(pin_root: Path, config: ProgramConfig) -> list[str]:
    return [f"-I{BPF_DIR}", f'-DTI_PIN_DIR="{pin_root}/maps/"',
            f"-DTI_ROLE_NODE={int(config.role == 'node')}",
            f"-DTI_REPLIES_TUNNEL={int(config.replies_tunnel)}",
            f"-DTI_FIB={int(config.fib_lookup)}"]


class Programs:
    """BCC compilations by configuration, kept until close(). The tables must exist: BCC would
    otherwise create them, without bpfsync's layout checks."""

    def __init__(self, pin_root: Path) -> None:
        self.pin_root = pin_root
        self._compiled: dict[Config | str, Any] = {}

    def _compile(self, key: Config | str, source: Path, flags: list[str],
                 what: str) -> Any:
        if key not in self._compiled:
            ensure_kernel_source()
            try:
                from bcc import BPF
            except ImportError as exc:
                raise KernelStateError(
                    "BCC is not importable (Debian package python3-bpfcc); run "
                    "packaging/install.sh") from exc
            try:
                self._compiled[key] = BPF(src_file=str(source).encode(), cflags=flags)
            except Exception as exc:
                raise KernelStateError(f"compiling {source} ({what}) failed: {exc}") from exc
        return self._compiled[key]

    def _bpf(self, config: Config) -> Any:
        if isinstance(config, InterceptProgram):
            return self._compile(config, INTERCEPT_SOURCE, [
                f"-I{BPF_DIR}", f'-DIC_PIN_DIR="{self.pin_root}/maps/"',
                f'-DPS_PIN_DIR="{self.pin_root}/maps/"', f"-DIC_ID={config.ic_id}",
                f"-DIC_MARK={config.mark:#x}", f"-DIC_PROXY_MARK={config.proxy_mark:#x}"],
                config.describe())
        return self._compile(config, SOURCE, cflags(self.pin_root, config), config.describe())

    def _steer(self) -> Any:
        return self._compile("steer", STEER_SOURCE, [
            f"-I{BPF_DIR}", f'-DPS_PIN_DIR="{self.pin_root}/maps/"'], "sk_lookup")

    def steer_tags(self) -> frozenset[str]:
        return program_tags(self._steer().dump_func(STEER_FUNCTION.encode()))

    def load_steer(self) -> int:
        """The loaded sk_lookup program's fd, owned by the compilation."""
        try:
            return self._steer().load_func(STEER_FUNCTION.encode(), BPF_PROG_TYPE_SK_LOOKUP,
                                           attach_type=BPF_SK_LOOKUP).fd
        except Exception as exc:
            raise KernelStateError(f"loading {STEER_FUNCTION} failed: {exc}") from exc

    def _tproxy(self, ids: tuple[int, ...]) -> Any:
        entries = " ".join(f"TP_CONNECT4({i})" for i in ids)
        return self._compile(f"tproxy{ids}", TPROXY_SOURCE, [
            f"-I{BPF_DIR}", f'-DTP_PIN_DIR="{self.pin_root}/maps/"',
            f'-DPS_PIN_DIR="{self.pin_root}/maps/"', f"-DTP_IDS={entries}"],
            "transparent proxy")

    def tproxy_tags(self, ids: tuple[int, ...], names: list[str]) -> dict[str, frozenset[str]]:
        """Acceptable tags of the named cgroup programs, compiled for TransparentProxy ids."""
        bpf = self._tproxy(ids)
        return {name: program_tags(bpf.dump_func(name.encode())) for name in names}

    def load_tproxy(self, ids: tuple[int, ...], hook: str, name: str) -> int:
        prog_type, attach_type = CGROUP_PROGRAM_TYPES[hook]
        try:
            fn = self._tproxy(ids).load_func(name.encode(), prog_type, **(
                {"attach_type": attach_type} if attach_type is not None else {}))
        except Exception as exc:
            raise KernelStateError(f"loading {name} failed: {exc}") from exc
        return fn.fd

    def tags(self, config: Config, direction: str) -> frozenset[str]:
        return program_tags(self._bpf(config).dump_func(function_of(config, direction).encode()))

    def load(self, config: Config, direction: str) -> int:
        """A loaded TC program's fd, owned by the compilation (closed by close())."""
        from bcc import BPF

        function = function_of(config, direction)
        try:
            return self._bpf(config).load_func(function.encode(), BPF.SCHED_CLS).fd
        except Exception as exc:
            raise KernelStateError(f"loading {function} ({config.describe()}) "
                                   f"failed: {exc}") from exc

    def close(self) -> None:
        for bpf in self._compiled.values():
            with suppress(Exception):
                bpf.cleanup()
        self._compiled.clear()

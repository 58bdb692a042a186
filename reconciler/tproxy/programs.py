"""The cgroup transparent proxy's programs (bpf/tproxy.c): one compilation for the ids of
the TransparentProxies declared."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from reconciler.kernel.programs import Compiler

SOURCE = "tproxy.c"
# cgroup programs of transparent proxies: hook -> (program type, expected attach type)
CGROUP_PROGRAM_TYPES = {"connect4": (18, 10), "connect6": (18, 11), "sock_ops": (13, None),
                        "getsockopt": (25, 21)}


def compiled(compiler: Compiler, pin_root: Path, ids: tuple[int, ...]) -> Any:
    entries = " ".join(f"TP_CONNECT4({i})" for i in ids)
    return compiler.compile(f"tproxy{ids}", SOURCE, [
        f'-DTP_PIN_DIR="{pin_root}/maps/"', f'-DPS_PIN_DIR="{pin_root}/maps/"',
        f"-DTP_IDS={entries}"], "transparent proxy")


def tags(compiler: Compiler, pin_root: Path, ids: tuple[int, ...],
         names: list[str]) -> dict[str, frozenset[str]]:
    """Acceptable tags of the named cgroup programs, compiled for TransparentProxy ids."""
    bpf = compiled(compiler, pin_root, ids)
    return {name: compiler.tags(bpf, name) for name in names}


def load(compiler: Compiler, pin_root: Path, ids: tuple[int, ...], hook: str, name: str) -> int:
    prog_type, attach_type = CGROUP_PROGRAM_TYPES[hook]
    return compiler.load(compiled(compiler, pin_root, ids), name, prog_type, attach_type)

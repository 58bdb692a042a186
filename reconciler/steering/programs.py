"""Port steering's sk_lookup program (bpf/steer.c)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from reconciler.kernel.programs import BPF_PROG_TYPE_SK_LOOKUP, BPF_SK_LOOKUP, Compiler

SOURCE = "steer.c"
FUNCTION = "ps_dispatch"


def compiled(compiler: Compiler, pin_root: Path) -> Any:
    return compiler.compile("steer", SOURCE, [f'-DPS_PIN_DIR="{pin_root}/maps/"'], "sk_lookup")


def tags(compiler: Compiler, pin_root: Path) -> frozenset[str]:
    return compiler.tags(compiled(compiler, pin_root), FUNCTION)


def load(compiler: Compiler, pin_root: Path) -> int:
    """The loaded sk_lookup program's fd, owned by the compilation."""
    return compiler.load(compiled(compiler, pin_root), FUNCTION, BPF_PROG_TYPE_SK_LOOKUP,
                         BPF_SK_LOOKUP)

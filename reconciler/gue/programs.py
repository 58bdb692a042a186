"""The GUE data path's TC programs (bpf/trueingress.c): one compilation per Interface
configuration (the seed's TABLE-CONFIG as compile-time flags)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from reconciler.gue.hooks import ProgramConfig
from reconciler.kernel.programs import Compiler

SOURCE = "trueingress.c"


def cflags(pin_root: Path, config: ProgramConfig) -> list[str]:
    return [f'-DTI_PIN_DIR="{pin_root}/maps/"',
            f"-DTI_ROLE_NODE={int(config.role == 'node')}",
            f"-DTI_REPLIES_TUNNEL={int(config.replies_tunnel)}",
            f"-DTI_FIB={int(config.fib_lookup)}"]


def compiled(compiler: Compiler, pin_root: Path, config: ProgramConfig) -> Any:
    return compiler.compile(config, SOURCE, cflags(pin_root, config), config.describe())


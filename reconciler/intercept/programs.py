"""The TC interception programs (bpf/intercept.c): ic_egress per Intercept, ic_lo per
namespace, compiled per configuration (id and marks as flags)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from reconciler.intercept.hooks import InterceptProgram
from reconciler.kernel.programs import Compiler

SOURCE = "intercept.c"


def compiled(compiler: Compiler, pin_root: Path, config: InterceptProgram) -> Any:
    return compiler.compile(config, SOURCE, [
        f'-DIC_PIN_DIR="{pin_root}/maps/"', f'-DPS_PIN_DIR="{pin_root}/maps/"',
        f"-DIC_ID={config.ic_id}", f"-DIC_MARK={config.mark:#x}",
        f"-DIC_PROXY_MARK={config.proxy_mark:#x}"], config.describe())


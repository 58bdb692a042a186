"""Every data path's programs, for the engine: what to compile for a TC configuration, the
sk_lookup link and the cgroup links, and their tags (the kernel shell's generic Compiler
does the compiling)."""

from __future__ import annotations

from pathlib import Path

from reconciler.attach import Config, InterceptProgram
from reconciler.gue import programs as gue
from reconciler.intercept import programs as intercept
from reconciler.kernel.programs import Compiler
from reconciler.steering import programs as steering
from reconciler.tproxy import programs as tproxy


class Programs:
    """Compilations against one pin root, kept until close() (loaded fds belong to them)."""

    def __init__(self, pin_root: Path) -> None:
        self.pin_root = pin_root
        self.compiler = Compiler()

    def tags(self, config: Config, direction: str) -> frozenset[str]:
        if isinstance(config, InterceptProgram):
            return intercept.tags(self.compiler, self.pin_root, config)
        return gue.tags(self.compiler, self.pin_root, config, direction)

    def load(self, config: Config, direction: str) -> int:
        """A loaded TC program's fd."""
        if isinstance(config, InterceptProgram):
            return intercept.load(self.compiler, self.pin_root, config)
        return gue.load(self.compiler, self.pin_root, config, direction)

    def steer_tags(self) -> frozenset[str]:
        return steering.tags(self.compiler, self.pin_root)

    def load_steer(self) -> int:
        return steering.load(self.compiler, self.pin_root)

    def tproxy_tags(self, ids: tuple[int, ...], names: list[str]) -> dict[str, frozenset[str]]:
        return tproxy.tags(self.compiler, self.pin_root, ids, names)

    def load_tproxy(self, ids: tuple[int, ...], hook: str, name: str) -> int:
        return tproxy.load(self.compiler, self.pin_root, ids, hook, name)

    def close(self) -> None:
        self.compiler.close()

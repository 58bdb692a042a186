"""What the interception tests (TransparentProxy, Intercept) share: running commands, telling
an intercepted connection from a direct one, and tearing their processes and namespaces down."""

from __future__ import annotations

import signal
import subprocess
from contextlib import suppress
from typing import Any


def sh(cmd: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, shell=True, check=check, capture_output=True, text=True,
                          timeout=timeout)


def intercepted(result: dict[str, Any], msg: str = "hello") -> bool:
    """tpkit client result: True when the server saw another connection than the client's
    own (the proxy's); the data must have arrived unchanged either way."""
    assert result["error"] is None, result
    peer, _, echoed = result["reply"].partition(" ")
    assert echoed == msg + "\n", result
    return peer != result["local"]


def teardown(procs: list[subprocess.Popen[str]], namespaces: tuple[str, ...]) -> None:
    for p in procs:
        with suppress(ProcessLookupError):
            p.send_signal(signal.SIGKILL)
        p.wait(10)
    for ns in namespaces:
        sh(f"ip netns del {ns}", check=False)

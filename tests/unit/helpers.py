from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

from reconciler.core.errors import InvalidDesiredState
from reconciler.core.state import DesiredState
from reconciler.load.directory import load_directory

TUNNEL = """\
apiVersion: bpfsync/v1
kind: Tunnel
metadata:
  name: {name}
spec:
  id: {id}
  local: {{address: 192.0.2.1, port: 6080}}
  remote: {remote}
"""

SERVICE = """\
apiVersion: bpfsync/v1
kind: Service
metadata:
  name: {name}
spec:
  groupId: {group}
  serviceId: {sid}
  protocol: tcp
  proxy: {{address: {proxy}, port: {port}}}
  backend: {{address: {backend}, port: 8080}}
  tunnel: {tunnel}
  keyFrom: {{file: web.key}}
"""


def tunnel(name: str = "t1", id: int = 100,
           remote: str = "{address: 198.51.100.2, port: 6080}") -> str:
    return TUNNEL.format(name=name, id=id, remote=remote)


def service(name: str = "web", group: int = 1, sid: int = 1, port: int = 80,
            tunnel: str = "t1", proxy: str = "203.0.113.10",
            backend: str = "198.51.100.20") -> str:
    return SERVICE.format(name=name, group=group, sid=sid, port=port, tunnel=tunnel,
                          proxy=proxy, backend=backend)


def load_docs(tmp: Path, **docs: str) -> DesiredState:
    """The desired state of a directory with one NAME.yaml per keyword argument."""
    return load_directory(write_tree(tmp, {f"{k}.yaml": v for k, v in docs.items()}))


def problems(tmp: Path, **docs: str) -> str:
    """The problems load_docs refuses the directory with, one per line."""
    with pytest.raises(InvalidDesiredState) as exc:
        load_docs(tmp, **docs)
    return "\n".join(map(str, exc.value.problems))


def write_tree(root: Path, files: dict[str, str | bytes]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    key = root / "web.key"
    if not key.exists():
        key.write_text("unit-test-key\n")
        os.chmod(key, 0o600)
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(textwrap.dedent(content) if content.startswith("\n") else content)
    return root


def epoll_registrations(epoll_fd: int) -> dict[int, int]:
    """{descriptor: the events an epoll watches it for}, as the kernel holds them
    (/proc/self/fdinfo)."""
    held = {}
    for line in Path(f"/proc/self/fdinfo/{epoll_fd}").read_text().splitlines():
        if line.startswith("tfd:"):  # tfd: FD events: HEX data: ...
            fields = line.split()
            held[int(fields[1])] = int(fields[3], 16)
    return held

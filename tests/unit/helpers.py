from __future__ import annotations

import os
import textwrap
from pathlib import Path

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
  proxy: {{address: 203.0.113.10, port: {port}}}
  backend: {{address: 198.51.100.20, port: 8080}}
  tunnel: {tunnel}
  keyFrom: {{file: web.key}}
"""


def tunnel(name: str = "t1", id: int = 100,
           remote: str = "{address: 198.51.100.2, port: 6080}") -> str:
    return TUNNEL.format(name=name, id=id, remote=remote)


def service(name: str = "web", group: int = 1, sid: int = 1, port: int = 80,
            tunnel: str = "t1") -> str:
    return SERVICE.format(name=name, group=group, sid=sid, port=port, tunnel=tunnel)


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

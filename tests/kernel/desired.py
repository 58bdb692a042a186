"""Desired-state directories for kernel tests and benchmarks."""

from __future__ import annotations

import os
from pathlib import Path

KEY_ENV = {"BPFSYNC_TEST_KEY": "kernel-test-key!"}
PER_FILE = 100


def service_doc(i: int, backend_port: int = 8080, tunnel: str = "t1") -> str:
    group, sid = divmod(i, 65536)
    host, port = divmod(i, 60000)  # unique proxy endpoints inside 203.0.113.0/24
    return (f"apiVersion: bpfsync/v1\nkind: Service\nmetadata:\n  name: s{i}\nspec:\n"
            f"  groupId: {group}\n  serviceId: {sid}\n  protocol: tcp\n"
            f"  proxy: {{address: 203.0.113.{1 + host}, port: {1024 + port}}}\n"
            f"  backend: {{address: 198.51.100.20, port: {backend_port}}}\n"
            f"  tunnel: {tunnel}\n  keyFrom: {{env: BPFSYNC_TEST_KEY}}\n")


TUNNELS = """\
apiVersion: bpfsync/v1
kind: Tunnel
metadata: {name: t1}
spec:
  id: 100
  local: {address: 192.0.2.1, port: 6080}
  remote: {address: 198.51.100.2, port: 6080}
---
apiVersion: bpfsync/v1
kind: Tunnel
metadata: {name: t2}
spec:
  id: 101
  local: {address: 192.0.2.1}
  remote: learn
  keyFrom: {env: BPFSYNC_TEST_KEY}
"""


def write_services(root: Path, count: int, changed: dict[int, int] | None = None) -> Path:
    """count services, PER_FILE per file, plus two tunnels; changed maps index -> backend port."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "tunnels.yaml").write_text(TUNNELS)
    changed = changed or {}
    for start in range(0, count, PER_FILE):
        end = min(count, start + PER_FILE)
        docs = [service_doc(i, changed.get(i, 8080)) for i in range(start, end)]
        (root / f"services-{start // PER_FILE:05d}.yaml").write_text("---\n".join(docs))
    return root


def chmod_keys(root: Path) -> None:
    for key in root.rglob("*.key"):
        os.chmod(key, 0o600)

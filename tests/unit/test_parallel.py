from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.core.errors import InvalidDesiredState
from reconciler.gue.model import Interface, Service, Tunnel
from reconciler.load import parallel
from reconciler.load.directory import load_directory
from tests.unit.helpers import service, tunnel, write_tree


def _tree(root: Path, broken: bool) -> Path:
    files = {"t.yaml": tunnel() + "---\n" + tunnel("t2", 101, "{address: 198.51.100.2}"),
             # loaded by a worker (last files): keys, pings and Interfaces must survive transport
             "u.yaml": tunnel("t3", 102, "learn") + "  keyFrom: {file: web.key}\n---\n"
                       + tunnel("t4", 103) + "  key: abc\n  ping: {intervalSeconds: 2.5}\n",
             "v.yaml": "apiVersion: bpfsync/v1\nkind: Interface\nmetadata: {name: up}\nspec:\n"
                       "  device: eth0.100\n  netns: edge\n  role: gateway\n  ingress: false\n"
                       "  fibLookup: true\n  priority: 7\n",
             # every kind crosses the process boundary (an Intercept once did not: it was
             # dropped from the state as if invalid, and its entries pruned)
             "w.yaml": "apiVersion: bpfsync/v1\nkind: Proxy\nmetadata: {name: web}\nspec:\n"
                       "  id: 1\n  ports: [80]\n  backends: ['192.0.2.10:8080']\n---\n"
                       "apiVersion: bpfsync/v1\nkind: TransparentProxy\nmetadata: {name: tp}\n"
                       "spec:\n  id: 1\n  cgroup: /app\n  proxy: web\n"
                       "  intercept: [{ports: [443]}]\n---\n"
                       "apiVersion: bpfsync/v1\nkind: Intercept\nmetadata: {name: ic}\nspec:\n"
                       "  id: 1\n  device: eth1\n"
                       "  rules: [{priority: 1, action: redirect, proxy: web, ports: [25]}]\n"}
    for i in range(40):
        files[f"s{i:02d}.yaml"] = service(f"svc{i}", sid=i, port=1000 + i)
    if broken:
        files["s17.yaml"] = files["s17.yaml"].replace("port: 8080", "port: 0")
        files["s30.yaml"] = files["s30.yaml"].replace("tunnel: t1", "tunnel: gone")
        files["s31.yaml"] = files["s31.yaml"].replace("keyFrom: {file: web.key}", "key: inline")
    return write_tree(root, files)


def _load(root: Path, monkeypatch: pytest.MonkeyPatch, parallel_on: bool):
    monkeypatch.setattr(parallel, "MIN_FILES", 2)
    monkeypatch.setattr(parallel, "MIN_BYTES", 1)
    monkeypatch.setattr(parallel, "cpus", lambda: 3)
    if parallel_on:
        monkeypatch.delenv("BPFSYNC_JOBS", raising=False)
    else:
        monkeypatch.setenv("BPFSYNC_JOBS", "1")
    assert parallel.worth_it(sorted(root.glob("*.yaml"))) == parallel_on
    try:
        return load_directory(root), None
    except InvalidDesiredState as exc:
        return None, [str(p) for p in exc.problems]


def test_parallel_and_serial_loads_agree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = _tree(tmp_path, broken=False)
    serial, _ = _load(root, monkeypatch, False)
    par, _ = _load(root, monkeypatch, True)
    assert serial is not None and par is not None
    assert serial.of(Service) == par.of(Service) and serial.of(Tunnel) == par.of(Tunnel)
    assert serial.of(Interface) == par.of(Interface) and par.of(Interface)["up"].priority == 7
    assert par.of(Tunnel)["t3"].key is not None and par.of(Tunnel)["t4"].ping_interval_ms == 2500
    assert list(serial.of(Service)) == list(par.of(Service))
    assert serial.resources == par.resources and par.count("Intercept") == 1


def test_parallel_errors_are_located_like_serial(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    root = _tree(tmp_path, broken=True)
    _, serial = _load(root, monkeypatch, False)
    _, par = _load(root, monkeypatch, True)
    assert serial is not None and serial == par
    text = "\n".join(par)
    assert "s17.yaml:10:43" in text and "s30.yaml:11:11" in text and "s31.yaml:12:8" in text

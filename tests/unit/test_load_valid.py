from __future__ import annotations

import os
from pathlib import Path

import pytest

from reconciler.core.errors import InvalidDesiredState, Severity
from reconciler.core.model import Endpoint
from reconciler.gue.model import Service, Tunnel
from reconciler.load.directory import load_directory
from tests.unit.helpers import service, tunnel, write_tree

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_quickstart_example_is_valid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BPFSYNC_DNS_KEY", "dns-demo-key")
    monkeypatch.setenv("BPFSYNC_NODE_B_KEY", "node-b-demo-key")
    key = EXAMPLES / "quickstart" / "keys" / "web.key"
    os.chmod(key, 0o600)  # git does not keep modes; the demo does the same
    state = load_directory(EXAMPLES / "quickstart")
    assert set(state.of(Tunnel)) == {"node-a", "node-b"}
    assert state.of(Tunnel)["node-b"].remote is None
    assert state.of(Tunnel)["node-b"].local == Endpoint("192.0.2.1", 6080)  # default port
    assert state.of(Service)["dns"].protocol == "udp"


def test_multi_document_files_recursive_and_ignored_files(tmp_path: Path) -> None:
    root = write_tree(tmp_path, {
        "a.yaml": tunnel() + "---\n" + service(),
        "sub/b.yml": service("api", sid=2, port=81).replace("web.key", "../web.key"),
        ".hidden.yaml": "junk: [",
        "sub/.#lock.yaml": "junk: [",
        "c.yaml~": "junk: [",
        ".c.yaml.swp": "junk: [",
        ".ansible_tmp123.yaml": "junk: [",
        "notes.txt": "not yaml",
        ".git/config.yaml": "junk: [",
    })
    state = load_directory(root)
    assert sorted(state.of(Service)) == ["api", "web"]
    assert state.files == 2


def test_trailing_document_separator_is_fine(tmp_path: Path) -> None:
    state = load_directory(write_tree(tmp_path, {"a.yaml": "---\n" + tunnel() + "---\n"}))
    assert list(state.of(Tunnel)) == ["t1"]


def test_inline_key_warns_but_is_valid(tmp_path: Path) -> None:
    text = service().replace("keyFrom: {file: web.key}", "key: Pa55w0rd1234567")
    state = load_directory(write_tree(tmp_path, {"a.yaml": tunnel() + "---\n" + text}))
    assert len(state.warnings) == 1
    w = state.warnings[0]
    assert w.severity is Severity.WARNING and "inline" in w.message
    assert str(w.location).endswith("a.yaml:21:8")
    assert "Pa55w0rd" not in str(w)


def test_hex_key_and_env_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("K", "hex:00ff")
    text = service().replace("keyFrom: {file: web.key}", "keyFrom: {env: K}")
    state = load_directory(write_tree(tmp_path, {"a.yaml": tunnel() + "---\n" + text}))
    assert state.of(Service)["web"].key.value == b"\x00\xff" + b"\0" * 14
    assert "ff" not in repr(state.of(Service)["web"])


def test_every_error_is_reported_in_one_run(tmp_path: Path) -> None:
    root = write_tree(tmp_path, {
        "a.yaml": tunnel().replace("id: 100", "id: -1"),
        "b.yaml": service(tunnel="nope").replace("port: 80", "port: 70000"),
        "c.yaml": "key: [unclosed",
    })
    with pytest.raises(InvalidDesiredState) as exc:
        load_directory(root)
    text = "\n".join(map(str, exc.value.problems))
    assert "a.yaml:6:7" in text and "-1 is less than the minimum of 1" in text
    assert "b.yaml:9:40" in text and "70000" in text
    assert "c.yaml:2:1" in text and "invalid YAML" in text


def test_yaml_merge_keys_may_be_overridden_but_own_duplicates_are_refused() -> None:
    from reconciler.load.source import SourceFile, parse

    ok = "base: &b {address: 192.0.2.1, port: 6080}\nx:\n  <<: *b\n  port: 7000\n"
    docs, problems = parse(SourceFile(Path("a.yaml"), "a.yaml", ok))
    assert problems == [] and docs[0].data["x"] == {"address": "192.0.2.1", "port": 7000}
    dup = ok + "  port: 7001\n"
    _, problems = parse(SourceFile(Path("a.yaml"), "a.yaml", dup))
    assert [(p.message, str(p.location)) for p in problems] == [
        ("invalid YAML: duplicate key 'port'", "a.yaml:5:3")]

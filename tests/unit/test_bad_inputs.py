"""The corpus of bad desired-state directories: each must be refused with a precise message
at a precise place, and nothing else about it may crash or hang."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from reconciler.core.errors import InvalidDesiredState, Severity
from reconciler.load.directory import load_directory
from reconciler.load.schema import Schemas
from reconciler.load.source import Document, SourceFile, parse
from tests.unit.helpers import service, tunnel, write_tree

T, S = tunnel(), service()
OK = T + "---\n" + S
IFACE = "apiVersion: bpfsync/v1\nkind: Interface\nmetadata: {name: up}\nspec:\n  device: eth0\n" \
        "  role: gateway\n"
NODE = IFACE.replace("name: up", "name: n").replace("eth0", "eth1").replace("gateway", "node")


PROXY = ("apiVersion: bpfsync/v1\nkind: Proxy\nmetadata: {name: web}\nspec:\n  id: 1\n"
         "  ports: [80, \"8000-8009\"]\n  destinations: [203.0.113.0/24]\n"
         "  backends: [\"192.0.2.10:8080\"]\n")
API = PROXY.replace("name: web", "name: api").replace("id: 1", "id: 2")
EGRESS = "apiVersion: bpfsync/v1\nkind: Proxy\nmetadata: {name: egress}\nspec:\n  id: 3\n"
TP = ("apiVersion: bpfsync/v1\nkind: TransparentProxy\nmetadata: {name: apps}\nspec:\n  id: 1\n"
      "  cgroup: /apps\n  proxy: egress\n  intercept:\n    - destinations: [198.51.100.0/24]\n"
      "      ports: [80]\n")
IC = ("apiVersion: bpfsync/v1\nkind: Intercept\nmetadata: {name: wan}\nspec:\n  id: 1\n"
      "  device: eth0\n  rules:\n    - priority: 10\n      action: redirect\n"
      "      proxy: egress\n      destinations: [203.0.113.0/24]\n      ports: [80]\n"
      "    - priority: 20\n      action: drop\n      ports: [25]\n")


def sub(text: str, old: str, new: str) -> str:
    assert old in text, old
    return text.replace(old, new, 1)


# (id, files, expected message fragment, expected "file:line[:col]" or None)
CASES: list[tuple[str, dict[str, str | bytes], str, str | None]] = [
    ("interface-dump", {"a.yaml": IFACE + "  dump: true\n"}, "dump is not supported", "a.yaml:7:9"),
    ("interface-replies-on-gateway", {"a.yaml": IFACE + "  replies: direct\n"},
     "replies applies to role: node only", "a.yaml:7:12"),
    ("interface-unknown-role", {"a.yaml": sub(IFACE, "role: gateway", "role: epic")},
     "'epic' is not one of ['gateway', 'node']", "a.yaml:6:9"),
    ("interface-duplicate-device", {"a.yaml": IFACE + "---\n" + sub(IFACE, "name: up", "name: b")},
     "device eth0 is also claimed by Interface/up", "a.yaml:12:11"),
    ("tunnel-learn-without-key", {"a.yaml": tunnel(remote="learn")}, "a tunnel must have a key",
     "a.yaml:6:3"),
    ("tunnel-ping-learns", {"a.yaml": tunnel(remote="learn") + "  key: abcdefgh\n"
                                      "  ping: {intervalSeconds: 1}\n"},
     "ping needs a fixed remote", "a.yaml:10:9"),
    ("tunnel-key-and-keyfrom", {"a.yaml": T + "  key: a\n  keyFrom: {env: X}\n"},
     "at most one of key or keyFrom", "a.yaml:6:3"),
    ("node-shared-backend", {"a.yaml": OK + "---\n" + service("api", sid=2, port=81) + "---\n" + NODE},
     "backend 198.51.100.20:8080/tcp (on a node", "a.yaml:32:12"),
    ("drift-annotation-unknown", {"a.yaml": sub(T, "  name: t1\n",
                                                "  name: t1\n  annotations: {bpfsync.dev/drift: fix}\n")},
     "'fix' is not a drift policy; use one of enforce, warn, off", "a.yaml:5:36"),
    ("proxy-bad-port", {"a.yaml": sub(PROXY, "[80,", "[80, 70000,")},
     "a port is a number 1-65535", "a.yaml:6:15"),
    ("proxy-reversed-range", {"a.yaml": sub(PROXY, "8000-8009", "8009-8000")},
     "port range '8009-8000' must be FIRST-LAST", "a.yaml:6:15"),
    ("proxy-host-bits", {"a.yaml": sub(PROXY, "203.0.113.0/24", "203.0.113.5/24")},
     "did you mean 203.0.113.0/24?", "a.yaml:7:18"),
    ("proxy-backend-port", {"a.yaml": sub(PROXY, "8080", "99999")},
     "port must be 1-65535", "a.yaml:8:14"),
    ("proxy-backend-no-port", {"a.yaml": sub(PROXY, ":8080", "")},
     "does not match", "a.yaml:8:14"),
    ("proxy-id-range", {"a.yaml": sub(PROXY, "id: 1", "id: 64")},
     "64 is greater than the maximum of 63", "a.yaml:5:7"),
    ("proxy-overlapping-ports", {"a.yaml": PROXY + "---\n" + sub(API, "[80, ", "[81, ")},
     "ports 8000, 8001, 8002, 8003, 8004 ... on overlapping destinations are also steered by "
     "Proxy/web", "a.yaml:15:10"),
    ("proxy-duplicate-id", {"a.yaml": PROXY + "---\n" + sub(
        sub(API, "id: 2", "id: 1"), "[80, \"8000-8009\"]", "[90]")},
     "proxy id 1 is also claimed by Proxy/web", "a.yaml:14:7"),
    ("proxy-netns-differs", {"a.yaml": PROXY + "---\n" + sub(
        sub(API, "[80, \"8000-8009\"]", "[90]"), "  id: 2\n", "  id: 2\n  netns: other\n")},
     "all Proxies of one pin root steer in one namespace", "a.yaml:15:10"),
    ("proxy-check-timeout", {"a.yaml": PROXY + "  healthCheck: {intervalSeconds: 1, "
                                               "timeoutSeconds: 2}\n"},
     "the check timeout must not exceed its interval", "a.yaml:9:53"),
    ("proxy-unknown-balance", {"a.yaml": PROXY + "  balance: leastconn\n"},
     "'leastconn' is not one of ['round-robin']", "a.yaml:9:12"),
    ("proxy-ports-without-backends", {"a.yaml": sub(PROXY, '  backends: ["192.0.2.10:8080"]\n',
                                                    "")},
     "a Proxy that steers ports needs backends", "a.yaml:6:10"),
    ("proxy-preconnect-without-backends", {"a.yaml": EGRESS + "  preconnect: 2\n"},
     "preconnect needs backends", "a.yaml:6:15"),
    ("proxy-preconnect-too-many", {"a.yaml": PROXY + "  preconnect: 65\n"},
     "65 is greater than the maximum of 64", "a.yaml:9:15"),
    ("tp-unknown-proxy", {"a.yaml": EGRESS + "---\n" + sub(TP, "proxy: egress", "proxy: egres")},
     "no Proxy named 'egres' (defined: egress)", "a.yaml:13:10"),
    ("tp-host-bits", {"a.yaml": EGRESS + "---\n" + sub(TP, "198.51.100.0/24", "198.51.100.7/24")},
     "did you mean 198.51.100.0/24?", "a.yaml:15:22"),
    ("tp-relative-cgroup", {"a.yaml": EGRESS + "---\n" + sub(TP, "cgroup: /apps", "cgroup: apps")},
     "a cgroup is a path in the cgroup v2 hierarchy", "a.yaml:12:11"),
    ("tp-dot-dot-cgroup", {"a.yaml": EGRESS + "---\n" + sub(TP, "cgroup: /apps",
                                                             "cgroup: /apps/../../etc")},
     "'.' and '..' are not cgroup names", "a.yaml:12:11"),
    ("tp-duplicate-cgroup", {"a.yaml": EGRESS + "---\n" + TP + "---\n" + sub(sub(
        TP, "name: apps", "name: more"), "id: 1", "id: 2")},
     "cgroup /apps (one TransparentProxy per cgroup) is also claimed by TransparentProxy/apps",
     "a.yaml:23:11"),
    ("tp-excludes-itself", {"a.yaml": EGRESS + "---\n" + TP + "  excludeCgroups: [/apps]\n"},
     "/apps is the intercepted cgroup itself", "a.yaml:17:20"),
    ("tp-unknown-policy", {"a.yaml": EGRESS + "---\n" + TP + "  whenProxyDown: bypass\n"},
     "'bypass' is not one of ['refuse', 'direct']", "a.yaml:17:18"),
    ("ic-shadowed-rule", {"a.yaml": EGRESS + "---\n" + IC + "    - priority: 30\n"
                          "      action: pass\n      destinations: [203.0.113.7/32]\n"
                          "      ports: [80]\n"},
     "rule 30 (pass) can never match: every packet it matches is decided first by the rules "
     "before it (overlapping it: 10)",
     "a.yaml:22:17"),
    ("ic-redirect-without-proxy", {"a.yaml": EGRESS + "---\n" + sub(IC, "      proxy: egress\n",
                                                                    "")},
     "a redirect rule names the Proxy that receives its connections", None),
    ("ic-proxy-on-drop", {"a.yaml": EGRESS + "---\n" + IC + "      proxy: egress\n"},
     "proxy applies to redirect rules only", None),
    ("ic-udp-redirect", {"a.yaml": EGRESS + "---\n" + sub(IC, "      ports: [80]\n",
                                                          "      ports: [80]\n      protocol: udp\n")},
     "redirect takes TCP connections only", "a.yaml:19:17"),
    ("ic-duplicate-priority", {"a.yaml": EGRESS + "---\n" + sub(IC, "priority: 20", "priority: 10")},
     "priority 10 is also rule 0's", "a.yaml:19:17"),
    ("ic-unknown-proxy", {"a.yaml": IC}, "no Proxy named 'egress'", "a.yaml:10:14"),
    ("ic-proxy-elsewhere", {"a.yaml": EGRESS + "  netns: blue\n---\n" + IC},
     "is not the namespace of Proxy/egress (blue)", None),
    ("ic-lo", {"a.yaml": EGRESS + "---\n" + sub(IC, "device: eth0", "device: lo")},
     "lo cannot be intercepted", "a.yaml:12:11"),
    ("ic-marks-overlap", {"a.yaml": EGRESS + "---\n" + IC + "  routing: {mark: 3}\n"},
     "proxyMark 0x2 shares bits with mark 0x3", None),
    ("unclosed-flow", {"a.yaml": "spec: [unclosed\n"}, "invalid YAML", "a.yaml:2:1"),
    ("tab-indent", {"a.yaml": "spec:\n\tid: 1\n"}, "invalid YAML", "a.yaml:2:1"),
    ("bad-indent", {"a.yaml": "a:\n  b: 1\n c: 2\n"}, "invalid YAML", "a.yaml:3:2"),
    ("list-document", {"a.yaml": "- a\n- b\n"}, "must be a mapping, not list", "a.yaml:1:1"),
    ("scalar-document", {"a.yaml": "hello\n"}, "must be a mapping, not str", "a.yaml:1:1"),
    ("missing-kind", {"a.yaml": sub(T, "kind: Tunnel\n", "")}, "kind missing", "a.yaml:1:1"),
    ("unknown-kind", {"a.yaml": sub(T, "kind: Tunnel", "kind: Tunel")},
     "'Tunel' is unknown; known kinds: Intercept, Interface, Proxy, Service, TransparentProxy, "
     "Tunnel", "a.yaml:2:7"),
    ("wrong-api-version", {"a.yaml": sub(T, "bpfsync/v1", "bpfsync/v2")},
     "apiVersion must be 'bpfsync/v1'", "a.yaml:1:13"),
    ("missing-metadata", {"a.yaml": sub(T, "metadata:\n  name: t1\n", "")},
     "'metadata' is required", "a.yaml:1:1"),
    ("bad-name", {"a.yaml": sub(T, "name: t1", "name: Web_1")}, "does not match", "a.yaml:4:9"),
    ("bool-name", {"a.yaml": sub(T, "name: t1", "name: yes")}, "True is not of type 'string'",
     "a.yaml:4:9"),
    ("unknown-top-field", {"a.yaml": T + "specs: {}\n"}, "unknown field 'specs'", "a.yaml:9:1"),
    ("unknown-spec-field", {"a.yaml": T + "  remoteAddr: 1.2.3.4\n"},
     "unknown field 'remoteAddr'; known fields: id, key, keyFrom, local, nextKey, nextKeyFrom, "
     "ping, remote", "a.yaml:9:3"),
    ("spec-null", {"a.yaml": sub(T, "spec:\n  id: 100\n  local: {address: 192.0.2.1, port: 6080}\n"
                                    "  remote: {address: 198.51.100.2, port: 6080}\n", "spec:\n")},
     "None is not of type 'object'", "a.yaml:5:6"),
    ("id-string", {"a.yaml": sub(T, "id: 100", "id: '100'")}, "'100' is not of type 'integer'",
     "a.yaml:6:7"),
    ("id-zero", {"a.yaml": sub(T, "id: 100", "id: 0")}, "less than the minimum of 1", "a.yaml:6:7"),
    ("id-too-big", {"a.yaml": sub(T, "id: 100", "id: 4294967296")}, "greater than the maximum",
     "a.yaml:6:7"),
    ("port-zero", {"a.yaml": sub(T, "port: 6080", "port: 0")}, "less than the minimum of 1",
     "a.yaml:7:37"),
    ("port-too-big", {"a.yaml": OK.replace("port: 80}", "port: 70000}")},
     "70000 is greater than the maximum of 65535", "a.yaml:18:40"),
    ("address-not-ip", {"a.yaml": sub(T, "192.0.2.1", "300.1.1.1")},
     "'300.1.1.1' is not an IPv4 or IPv6 address", "a.yaml:7:20"),
    ("address-multicast", {"a.yaml": sub(T, "192.0.2.1", "224.0.0.1")},
     "224.0.0.1 is not a unicast address", "a.yaml:7:20"),
    ("address-unspecified", {"a.yaml": OK.replace("198.51.100.20", "0.0.0.0")},
     "0.0.0.0 is not a unicast address", "a.yaml:19:22"),
    ("remote-typo", {"a.yaml": sub(T, "remote: {address: 198.51.100.2, port: 6080}", "remote: learned")},
     "'learn' was expected", "a.yaml:8:11"),
    ("missing-backend", {"a.yaml": OK.replace("  backend: {address: 198.51.100.20, port: 8080}\n",
                                              "")}, "'backend' is required", "a.yaml:15:3"),
    ("key-and-keyfrom", {"a.yaml": OK + "  key: abc\n"}, "exactly one of key or keyFrom",
     "a.yaml:15:3"),
    ("no-key", {"a.yaml": OK.replace("  keyFrom: {file: web.key}\n", "")},
     "exactly one of key or keyFrom", "a.yaml:15:3"),
    ("keyfrom-two-sources", {"a.yaml": OK.replace("{file: web.key}", "{file: web.key, env: K}")},
     "has too many properties", "a.yaml:21:12"),
    ("keyfrom-env-bad-name", {"a.yaml": OK.replace("{file: web.key}", "{env: 1BAD}")},
     "does not match", "a.yaml:21:18"),
    ("key-file-missing", {"a.yaml": OK.replace("web.key", "missing.key")},
     "No such file or directory", "a.yaml:21:19"),
    ("key-too-long", {"a.yaml": OK.replace("keyFrom: {file: web.key}", "key: 0123456789abcdefg")},
     "the key is 17 bytes; at most 16", "a.yaml:21:8"),
    ("key-bad-hex", {"a.yaml": OK.replace("keyFrom: {file: web.key}", "key: 'hex:zz'")},
     "only hex digits", "a.yaml:21:8"),
    ("key-env-unset", {"a.yaml": OK.replace("{file: web.key}", "{env: BPFSYNC_TEST_UNSET}")},
     "BPFSYNC_TEST_UNSET is not set", "a.yaml:21:18"),
    ("protocol-unknown", {"a.yaml": OK.replace("protocol: tcp", "protocol: sctp")},
     "'sctp' is not one of ['tcp', 'udp']", "a.yaml:17:13"),
    ("dangling-tunnel", {"a.yaml": OK.replace("tunnel: t1", "tunnel: t9")},
     "no Tunnel named 't9' (defined: t1)", "a.yaml:20:11"),
    ("duplicate-tunnel-id", {"a.yaml": OK, "b.yaml": tunnel("t2", 100)},
     "tunnel id 100 is also claimed by Tunnel/t1", "b.yaml:6:7"),
    ("duplicate-sid", {"a.yaml": OK, "b.yaml": service("api", port=81)},
     "(groupId 1, serviceId 1) is also claimed by Service/web", "b.yaml:7:14"),
    ("duplicate-proxy", {"a.yaml": OK, "b.yaml": service("api", sid=2)},
     "proxy endpoint 203.0.113.10:80/tcp is also claimed by Service/web", "b.yaml:9:10"),
    ("same-resource-twice", {"a.yaml": OK, "sub/b.yaml": service(sid=2, port=81)},
     "Service/web is defined twice", "sub/b.yaml:4:9"),
    ("yml-and-yaml", {"a.yaml": OK, "a.yml": T}, "both a.yaml and a.yml exist", "a.yml"),
    ("binary-junk", {"a.yaml": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"}, "not UTF-8", "a.yaml:1:1"),
    ("nul-bytes", {"a.yaml": "a: 1\nb: \x00\n"}, "NUL bytes", "a.yaml:2"),
    ("empty-file", {"a.yaml": OK, "b.yaml": ""}, "holds no resources", "b.yaml:1:1"),
    ("comments-only", {"a.yaml": OK, "b.yaml": "# nothing here\n---\n"}, "holds no resources",
     "b.yaml:1:1"),
    ("duplicate-key", {"a.yaml": sub(T, "  id: 100\n", "  id: 100\n  id: 101\n")},
     "duplicate key 'id'", "a.yaml:7:3"),
    ("ten-megabytes", {"a.yaml": "x" * (10 * 1024 * 1024) + "\n"}, "must be a mapping, not str",
     "a.yaml:1:1"),
    ("too-big", {"a.yaml": "#" * (33 * 1024 * 1024)}, "limit is", "a.yaml"),
]


def _symlink_loop(root: Path) -> None:
    (root / "loop").mkdir()
    (root / "loop" / "back").symlink_to(root / "loop")


def _dangling_symlink(root: Path) -> None:
    (root / "gone.yaml").symlink_to(root / "nowhere.yaml")


def _world_readable_key(root: Path) -> None:
    os.chmod(root / "web.key", 0o644)


SETUPS: list[tuple[str, Callable[[Path], None], str, str | None]] = [
    ("symlink-loop", _symlink_loop, "symlink loop", "loop/back"),
    ("dangling-symlink", _dangling_symlink, "cannot read", "gone.yaml"),
    ("key-file-world-readable", _world_readable_key, "chmod 600", "a.yaml:21:19"),
]


def _assert_refused(root: Path, fragment: str, where: str | None) -> None:
    started = time.monotonic()
    with pytest.raises(InvalidDesiredState) as exc:
        load_directory(root)
    assert time.monotonic() - started < 20
    errors = [p for p in exc.value.problems if p.severity is Severity.ERROR]
    matching = [p for p in errors if fragment in str(p)]
    assert matching, f"no error containing {fragment!r} in:\n" + "\n".join(map(str, errors))
    if where is not None:
        assert any(str(p.location).endswith(where) for p in matching), "\n".join(
            map(str, matching))


@pytest.mark.parametrize(("files", "fragment", "where"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_bad_input_is_refused(tmp_path: Path, files: dict[str, str | bytes], fragment: str,
                              where: str | None) -> None:
    _assert_refused(write_tree(tmp_path, files), fragment, where)


@pytest.mark.parametrize(("setup", "fragment", "where"), [c[1:] for c in SETUPS],
                         ids=[c[0] for c in SETUPS])
def test_bad_tree_is_refused(tmp_path: Path, setup: Callable[[Path], None], fragment: str,
                             where: str | None) -> None:
    root = write_tree(tmp_path, {"a.yaml": OK})
    setup(root)
    _assert_refused(root, fragment, where)


def test_corpus_is_large_enough() -> None:
    assert len(CASES) + len(SETUPS) >= 30


# Cases refused before any schema is consulted (YAML that does not parse, documents that are
# not mappings or name no known kind, bytes that are not text): they hold no document the two
# validators could be asked about. Excluded by name, and checked to be exactly those.
NO_SCHEMA_DOCUMENT = {"unclosed-flow", "tab-indent", "bad-indent", "list-document",
                      "scalar-document", "missing-kind", "unknown-kind", "binary-junk",
                      "nul-bytes", "duplicate-key", "ten-megabytes", "too-big"}
SCHEMA_CASES = [c for c in CASES if c[0] not in NO_SCHEMA_DOCUMENT]


def _schema_documents(schemas: Schemas, files: dict[str, str | bytes]) -> list[Document]:
    out = []
    for name, content in files.items():
        if isinstance(content, bytes) or len(content) > 1_000_000:
            continue
        docs, _ = parse(SourceFile(Path(name), name, content))
        out += [d for d in docs if isinstance(d.data, dict) and d.data.get("kind") in schemas.kinds]
    return out


@pytest.mark.parametrize("files", [c[1] for c in SCHEMA_CASES], ids=[c[0] for c in SCHEMA_CASES])
def test_fast_and_full_validators_agree(files: dict[str, str | bytes]) -> None:
    """The compiled fast path must never accept what jsonschema rejects, nor the reverse."""
    schemas = Schemas()
    docs = _schema_documents(schemas, files)
    assert docs, "no document of a known kind: list the case in NO_SCHEMA_DOCUMENT"
    for doc in docs:
        kind = schemas.kinds[doc.data["kind"]]
        assert kind.is_valid_fast(doc.data) == (not kind.errors(doc.data)), doc.data


def test_cases_without_schema_documents_are_exactly_the_excluded_ones() -> None:
    schemas = Schemas()
    assert {c[0] for c in CASES} >= NO_SCHEMA_DOCUMENT
    assert {c[0] for c in CASES if not _schema_documents(schemas, c[1])} == NO_SCHEMA_DOCUMENT

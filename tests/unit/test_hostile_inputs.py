"""Hostile input: each case is refused with a located message (checked for its words and
exact place), and `validate`, `diff` and `apply` refuse it in a child process under a 1 GiB
address-space limit within 10 s, exit 1, no traceback, nothing written, no secret shown.

(The bad-input corpus in test_bad_inputs.py covers honest mistakes; this one attacks.)
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from reconciler.core.errors import MAX_MESSAGE, InvalidDesiredState, Severity
from reconciler.load.directory import load_directory
from tests.unit.helpers import service, tunnel, write_tree

SECRET = "8675309123456789"
T, S = tunnel(), service()
OK = T + "---\n" + S
PROXY = ("apiVersion: bpfsync/v1\nkind: Proxy\nmetadata: {name: web}\nspec:\n  id: 1\n"
         "  ports: [80]\n  destinations: [203.0.113.0/24]\n  backends: [\"192.0.2.10:8080\"]\n")


def sub(text: str, old: str, new: str) -> str:
    assert old in text, old
    return text.replace(old, new, 1)


def bomb(levels: int = 9) -> str:
    """levels of tenfold aliases: 10**levels values from a few hundred bytes."""
    out = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, levels):
        out.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]")
    return "{" + ", ".join(out) + "}"


def labels(value: str) -> str:
    return sub(T, "  name: t1\n", f"  name: t1\n  labels: {value}\n")


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


# (id, files, message fragment, "file:line[:col]")
CASES: list[tuple[str, dict[str, str | bytes], str, str]] = [
    ("alias-bomb-labels", {"a.yaml": labels(bomb())},
     "holds more than 500,000 values once its aliases are expanded", "a.yaml:5:296"),
    ("alias-bomb-spec", {"a.yaml": OK.replace("  keyFrom: {file: web.key}\n",
                                              f"  keyFrom: {{file: web.key}}\n  x: {bomb()}\n")},
     "holds more than 500,000 values", "a.yaml:22:291"),
    ("alias-cycle", {"a.yaml": labels("&a {x: *a}")}, "an alias refers to a value that contains it",
     "a.yaml:5:11"),
    ("wide-list", {"a.yaml": labels("[" + ", ".join(["1"] * 500_001) + "]")},
     "holds more than 500,000 values", "a.yaml:5:11"),
    ("deep-990", {"a.yaml": labels(nested(990))}, "nested deeper than 64 levels", "a.yaml:5:73"),
    ("deep-65", {"a.yaml": labels(nested(65))}, "nested deeper than 64 levels", "a.yaml:5:73"),
    ("deep-300k-crashes-libyaml", {"a.yaml": labels(nested(300_000))},
     "nested deeper than 64 levels", "a.yaml:5:73"),
    ("deep-block", {"a.yaml": "a:\n" + "".join(f"{' ' * i}- \n" for i in range(1, 80))},
     "nested deeper than 64 levels", "a.yaml:65:65"),
    ("octal-id", {"a.yaml": sub(T, "id: 100", "id: 0777")},
     "'0777' is ambiguous: YAML 1.1 reads it as 511 (octal)", "a.yaml:6:7"),
    ("sexagesimal-port", {"a.yaml": sub(T, "port: 6080", "port: 1:20")},
     "'1:20' is ambiguous: YAML 1.1 reads it as 80 (base 60)", "a.yaml:7:37"),
    ("binary-id", {"a.yaml": sub(T, "id: 100", "id: 0b101")}, "5 (binary)", "a.yaml:6:7"),
    ("digit-groups", {"a.yaml": sub(T, "id: 100", "id: 1_000")}, "1000 (digit groups)",
     "a.yaml:6:7"),
    ("nan-interval", {"a.yaml": PROXY + "  healthCheck: {intervalSeconds: .nan}\n"},
     "'.nan' is ambiguous", "a.yaml:9:34"),
    ("inf-timeout", {"a.yaml": PROXY + "  connectTimeoutSeconds: -.inf\n"},
     "not finite", "a.yaml:9:26"),
    ("float-port", {"a.yaml": sub(T, "port: 6080", "port: 6080.0")},
     "6080.0 is not of type 'integer': an integer field; write 6080", "a.yaml:7:37"),
    ("float-id", {"a.yaml": sub(T, "id: 100", "id: 5.0")}, "write 5", "a.yaml:6:7"),
    ("float-service-id", {"a.yaml": OK.replace("serviceId: 1", "serviceId: 1.0")},
     "1.0 is not of type 'integer'", "a.yaml:16:14"),
    ("float-proxy-id", {"a.yaml": sub(PROXY, "id: 1", "id: 1.0")}, "write 1", "a.yaml:5:7"),
    ("float-port-list", {"a.yaml": sub(PROXY, "[80]", "[80.0]")}, "a port is a number 1-65535",
     "a.yaml:6:11"),
    ("huge-name", {"a.yaml": sub(T, "name: t1", "name: " + "x" * 1_000_000)},
     "... (1,000,000 characters)", "a.yaml:4:9"),
    ("huge-kind", {"a.yaml": sub(T, "kind: Tunnel", "kind: " + "K" * 1_000_000)},
     "(1,000,000 characters) is unknown", "a.yaml:2:7"),
    ("huge-api-version", {"a.yaml": sub(T, "bpfsync/v1", "v" * 1_000_000)},
     "(1,000,000 characters)", "a.yaml:1:13"),
    ("huge-enum", {"a.yaml": OK.replace("protocol: tcp", "protocol: " + "y" * 2_000_000)},
     "(2,000,000 characters) is not one of ['tcp', 'udp']", "a.yaml:17:13"),
    ("huge-drift", {"a.yaml": sub(T, "  name: t1\n", "  name: t1\n  annotations: "
                                  "{bpfsync.dev/drift: " + "z" * 500_000 + "}\n")},
     "is not a drift policy", "a.yaml:5:36"),
    ("kind-list", {"a.yaml": sub(T, "kind: Tunnel", "kind: [Tunnel]")},
     "kind ['Tunnel'] is unknown", "a.yaml:2:7"),
    ("kind-map", {"a.yaml": sub(T, "kind: Tunnel", "kind: {Tunnel: 1}")},
     "is unknown; known kinds", "a.yaml:2:7"),
    ("name-list", {"a.yaml": sub(T, "name: t1", "name: [t1]")},
     "['t1'] is not of type 'string'", "a.yaml:4:9"),
    ("metadata-list", {"a.yaml": sub(T, "metadata:\n  name: t1\n", "metadata: [1, 2]\n")},
     "is not of type 'object'", "a.yaml:3:11"),
    ("secret-int", {"a.yaml": T + f"  key: {SECRET}\n"}, "the key (not shown) is not of type",
     "a.yaml:9:8"),
    ("secret-list", {"a.yaml": T + f"  key: [{SECRET}, 1]\n"}, "the key (not shown)",
     "a.yaml:9:8"),
    ("secret-map", {"a.yaml": T + f"  key: {{k: {SECRET}}}\n"}, "the key (not shown)",
     "a.yaml:9:8"),
    ("secret-float", {"a.yaml": T + f"  key: {SECRET}.5\n"}, "the key (not shown)",
     "a.yaml:9:8"),
    ("secret-too-long", {"a.yaml": T + f"  key: {SECRET}{SECRET}\n"},
     "the key (not shown)", "a.yaml:9:8"),
    ("secret-service", {"a.yaml": OK.replace("keyFrom: {file: web.key}", f"key: [{SECRET}]")},
     "the key (not shown)", "a.yaml:21:8"),
    ("null-kind", {"a.yaml": sub(T, "kind: Tunnel", "kind: ~")}, "kind missing", "a.yaml:2:7"),
    ("binary-tag", {"a.yaml": sub(T, "name: t1", "name: !!binary aGVsbG8=")},
     "is not of type 'string'", "a.yaml:4:9"),
    ("python-tag", {"a.yaml": sub(T, "name: t1", "name: !!python/object:os.system x")},
     "could not determine a constructor", "a.yaml:4:9"),
    ("date-name", {"a.yaml": sub(T, "name: t1", "name: 2026-11-29")},
     "is not of type 'string'", "a.yaml:4:9"),
]


def _huge_key_file(root: Path) -> None:
    with open(root / "web.key", "r+b") as f:  # sparse: 1 GiB that takes no disk
        f.truncate(1 << 30)


def _key_file_directory(root: Path) -> None:
    (root / "web.key").unlink()
    (root / "web.key").mkdir()


def _fifo(root: Path) -> None:
    os.mkfifo(root / "pipe.yaml")


def _dev_null(root: Path) -> None:
    (root / "null.yaml").symlink_to("/dev/null")


def _link_to_slash(root: Path) -> None:
    (root / "all").symlink_to("/")


def _link_to_bpffs(root: Path) -> None:
    (root / "pins").symlink_to("/sys/fs/bpf")


def _link_to_proc(root: Path) -> None:
    (root / "me").symlink_to("/proc/self")


def _link_to_parent(root: Path) -> None:
    (root / "up").symlink_to("..")


# (id, setup on a valid tree, message fragment, location suffix)
SETUPS: list[tuple[str, Callable[[Path], None], str, str]] = [
    ("key-file-1gib-sparse", _huge_key_file, "larger than a key can be (at most 64 bytes)",
     "a.yaml:21:19"),
    ("key-file-directory", _key_file_directory, "is not a regular file", "a.yaml:21:19"),
    ("fifo-yaml", _fifo, "is a FIFO; a desired-state file must be a regular file", "pipe.yaml"),
    ("dev-null-yaml", _dev_null, "is a character device", "null.yaml"),
    ("symlink-to-slash", _link_to_slash, "leads to /, which contains this desired state", "all"),
    ("symlink-to-bpffs", _link_to_bpffs, "leads to /sys/fs/bpf, outside any desired state",
     "pins"),
    ("symlink-to-proc", _link_to_proc, "outside any desired state", "me"),
    ("symlink-to-parent", _link_to_parent, "which contains this desired state", "up"),
]

ALL = [(c[0], (lambda root, files=c[1]: write_tree(root, files)), c[2], c[3]) for c in CASES] + [
    (c[0], (lambda root, setup=c[1]: setup(write_tree(root, {"a.yaml": OK}))), c[2], c[3])
    for c in SETUPS]


def test_corpus_is_large_enough() -> None:
    assert len(ALL) >= 40


def _made(tmp_path: Path, make: Callable[[Path], Path | None]) -> Path:
    root = tmp_path / "d"
    root.mkdir()
    make(root)
    return root


EACH_CASE = pytest.mark.parametrize(("make", "fragment", "where"), [c[1:] for c in ALL],
                                    ids=[c[0] for c in ALL])


@EACH_CASE
def test_refused_located_and_short(tmp_path: Path, make: Callable[[Path], Path | None],
                                   fragment: str, where: str) -> None:
    root = _made(tmp_path, make)
    started = time.monotonic()
    with pytest.raises(InvalidDesiredState) as exc:
        load_directory(root)
    assert time.monotonic() - started < 10
    errors = [p for p in exc.value.problems if p.severity is Severity.ERROR]
    matching = [p for p in errors if fragment in str(p)]
    assert matching, f"no error containing {fragment!r} in:\n" + "\n".join(
        str(p)[:300] for p in errors[:5])
    assert any(str(p.location).endswith(f"/{where}") for p in matching), [
        str(p.location) for p in matching]
    for p in errors:
        assert len(p.message) <= MAX_MESSAGE + 40 and SECRET not in str(p)


RUNNER = r"""
import resource, sys
limit = 1 << 30
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
from reconciler.cli import main
for command in ("validate", "diff", "apply"):
    try:
        main([command, sys.argv[1]])
    except SystemExit as exc:
        print(f"exit {command} {exc.code}", file=sys.stderr, flush=True)
"""


@EACH_CASE
def test_cli_refuses_within_limits(tmp_path: Path, make: Callable[[Path], Path | None],
                                   fragment: str, where: str) -> None:
    root = _made(tmp_path, make)
    pins = tmp_path / "pins"
    env = {**os.environ, "BPFSYNC_PIN_ROOT": str(pins)}
    started = time.monotonic()
    r = subprocess.run([sys.executable, "-c", RUNNER, str(root)], capture_output=True,
                       text=True, env=env, timeout=60, cwd=Path(__file__).resolve().parents[2])
    took = time.monotonic() - started
    assert took < 30, took  # three commands, each well within 10 s
    for command in ("validate", "diff", "apply"):
        assert f"exit {command} 1" in r.stderr, r.stderr[-2000:]
    assert "Traceback" not in r.stderr and "MemoryError" not in r.stderr, r.stderr[-3000:]
    assert fragment in r.stderr and where in r.stderr, r.stderr[-2000:]
    assert SECRET not in r.stdout + r.stderr
    assert not pins.exists()  # nothing was created, let alone written
    assert resource.getrlimit(resource.RLIMIT_AS)[0] == resource.RLIM_INFINITY  # (the child's)


def test_pin_roots_never_share_a_run_directory_or_cgroup() -> None:
    from reconciler.datapath.supervisor import run_dir
    from reconciler.tproxy.cgroups import datapath_cgroup

    roots = ["/sys/fs/bpf/A/B", "/sys/fs/bpf/A-B", "/sys/fs/bpf/A\\x2dB", "/sys/fs/bpf/A_B",
             "/sys/fs/bpf/a b", "/sys/fs/bpf/a.b", "/", "/sys/fs/bpf/bpfsync"]
    dirs = {run_dir(Path(r)) for r in roots}
    cgroups = {datapath_cgroup(Path(r)) for r in roots}
    assert len(dirs) == len(cgroups) == len(roots)
    # the default keeps the name earlier versions used
    assert run_dir(Path("/sys/fs/bpf/bpfsync")) == Path("/run/bpfsync/sys-fs-bpf-bpfsync")


def test_the_cli_resolves_the_pin_root() -> None:
    from argparse import Namespace

    from reconciler.cli.common import pin_root as _pin_root

    given = Namespace(pin_root="/sys/fs/bpf/bpfsync-x-y/../bpfsync-x")
    assert _pin_root(given) == Path("/sys/fs/bpf/bpfsync-x")


def test_each_directory_bound_stops_the_walk_with_one_error(tmp_path: Path,
                                                             monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The scan's caps, lowered so that a test reaches them: past each, one error at the
    directory and nothing loaded (the real caps are in the README's Limits)."""
    from reconciler.load import scan as source

    tree = tmp_path / "d"
    (tree / "sub" / "deeper").mkdir(parents=True)
    for i in range(6):
        (tree / "sub" / "deeper" / f"f{i}.yaml").write_text("x: 1\n")
    (tree / "a.yaml").write_text("x: " + "1" * 100 + "\n")
    for name, value, what in (("MAX_FILES", 3, "YAML files"), ("MAX_ENTRIES", 4,
                                                                "directory entries"),
                              ("MAX_TOTAL_BYTES", 50, "bytes of YAML")):
        with monkeypatch.context() as m:
            m.setattr(source, name, value)
            files, problems = source.scan(tree)
        messages = [p.message for p in problems]
        assert messages == [f"more than {value:,} {what} under this directory (limit); "
                            "nothing is loaded"], (name, messages)
        assert problems[0].location.file == str(tree)
    files, problems = source.scan(tree)
    assert len(files) == 7 and problems == []


def test_the_largest_valid_intercept_is_within_the_bounds() -> None:
    """The bounds refuse what no schema-valid resource needs: 16,384 rules (the schema's
    maximum) of one Intercept compose within the values bound."""
    import yaml

    from reconciler.load.source import MAX_VALUES, check_bounds

    rules = "".join(f"    - {{priority: {i + 1}, action: drop, protocol: udp, destinations: "
                    f"[10.{i // 256}.{i % 256}.0/24], ports: [{1000 + i}]}}\n"
                    for i in range(16_384))
    node = yaml.compose("kind: Intercept\nspec:\n  rules:\n" + rules, Loader=yaml.CSafeLoader)
    check_bounds(node)  # raises past a bound
    assert MAX_VALUES >= 16_384 * 14

"""Every example directory validates, applies, and is then in sync with zero writes.

The examples name namespaces, devices and cgroups of a real host (`edge`, `eth0`,
`/bpfsync-demo/apps`); a test may not touch names it does not own, so each example is applied
from a copy in which every namespace and cgroup is renamed to one this test creates (the
devices are veths made inside those namespaces). The YAML is otherwise the example's own.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from reconciler.kernel import cgroups, tagcache
from reconciler.tproxy.cgroups import datapath_cgroup
from tests.kernel import owned
from tests.kernel.conftest import bpffs_entries, bpfsync
from tests.kernel.desired import chmod_keys

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
DIRECTORIES = sorted({p.parent for p in EXAMPLES.rglob("*.yaml")})
KEYS = {"BPFSYNC_DNS_KEY": "example-dns-key", "BPFSYNC_NODE_B_KEY": "example-node-b",
        "BPFSYNC_DEMO_TUNNEL_KEY": "example-tunnel", "BPFSYNC_DEMO_SERVICE_KEY": "example-svc"}


class Host:
    """The namespaces, devices and cgroups one example needs, under names this test owns."""

    def __init__(self) -> None:
        self.netns: dict[str, str] = {}
        self.cgroups: dict[str, str] = {}
        self.devices: list[tuple[str, str]] = []  # (netns, device) of the veths made
        self.base = f"/{owned.name('example')}"

    def rename(self, text: str) -> str:
        def netns(m: re.Match[str]) -> str:
            name = self.netns.setdefault(m.group(2), owned.name("example"))
            return m.group(1) + name

        def cgroup(m: re.Match[str]) -> str:
            path = m.group(2)
            mine = self.cgroups.setdefault(path, self.base if path == "/" else self.base + path)
            return m.group(1) + mine

        text = re.sub(r"^(\s*netns:\s*)([A-Za-z0-9_.-]+)\s*$", netns, text, flags=re.M)
        return re.sub(r"^(\s*cgroup:\s*)(/\S*)\s*$", cgroup, text, flags=re.M)

    def create(self, directory: Path) -> None:
        from reconciler.kernel import cgroups

        for ns in self.netns.values():
            subprocess.run(["ip", "netns", "add", ns], check=True)
            subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        for path in self.cgroups.values():
            cgroups.fs_path(path).mkdir(parents=True, exist_ok=True)
        for f in directory.rglob("*.yaml"):
            for doc in yaml.safe_load_all(f.read_text()):
                spec = (doc or {}).get("spec") or {}
                device, ns = spec.get("device"), spec.get("netns")
                if device and device != "lo":
                    assert ns in self.netns.values(), f"{f}: a device outside a namespace"
                    # a veth (no dummy module here) whose peer stays in the namespace
                    subprocess.run(["ip", "-n", ns, "link", "add", device, "mtu", "1600",
                                    "type", "veth", "peer", "name", f"{device}p"], check=False)
                    subprocess.run(["ip", "-n", ns, "link", "set", device, "up"], check=True)
                    self.devices.append((ns, device))

    def add_foreign_filters(self) -> None:
        """Someone else's cls_bpf filter (classic BPF, matching nothing) on every device."""
        for ns, device in sorted(set(self.devices)):
            tc = ["ip", "netns", "exec", ns, "tc"]
            subprocess.run([*tc, "qdisc", "add", "dev", device, "clsact"], check=False)
            subprocess.run([*tc, "filter", "add", "dev", device, "ingress", "prio", "7",
                            "bpf", "bytecode", "1,6 0 0 0,"], check=True)

    def filters(self) -> list[tuple[str, str, str, int, str, str]]:
        """(netns, device, direction, priority, name, program tag) of every filter on the
        devices and on lo of every namespace."""
        out = []
        for ns, device in sorted({*self.devices, *((ns, "lo") for ns in self.netns.values())}):
            for direction in ("ingress", "egress"):
                r = subprocess.run(["ip", "netns", "exec", ns, "tc", "-j", "filter", "show",
                                    "dev", device, direction], capture_output=True, text=True)
                for f in json.loads(r.stdout or "[]"):
                    if "options" in f:
                        name = f["options"].get("bpf_name", "")
                        tag = f["options"].get("prog", {}).get("tag", "")
                        out.append((ns, device, direction, f["pref"], name, tag))
        return out

    def remove(self) -> None:
        from reconciler.kernel import cgroups

        for ns in self.netns.values():
            owned.delete_netns(ns)
        with_root = cgroups.fs_path(self.base)
        owned.remove_cgroup_tree(with_root)


def remembered_tags() -> set[str]:
    """Every tag in the state directory's program tag cache (kernel/tagcache.py)."""
    path = tagcache.default_path()
    entries = json.loads(path.read_text())["entries"] if path.exists() else {}
    return {tag for tags in entries.values() for tag in tags}


@pytest.fixture
def host() -> Iterator[Host]:
    h = Host()
    try:
        yield h
    finally:
        h.remove()


@pytest.mark.parametrize("example", DIRECTORIES, ids=lambda p: str(p.relative_to(EXAMPLES)))
def test_example_validates_applies_and_is_in_sync(example: Path, tmp_path: Path,
                                                  pin_root: Path, host: Host,
                                                  write_counter) -> None:
    copy = tmp_path / example.name
    shutil.copytree(example, copy)
    for f in copy.rglob("*.yaml"):
        f.write_text(host.rename(f.read_text()))
    chmod_keys(copy)  # git does not keep file modes
    host.create(copy)
    host.add_foreign_filters()
    pin_root.mkdir()  # someone else's map pinned in the pin root before the first apply
    subprocess.run(["bpftool", "map", "create", str(pin_root / "foreign"), "type", "hash",
                    "key", "4", "value", "4", "entries", "1", "name", "foreign"], check=True)
    env = {**os.environ, **KEYS}

    def run(*args: str, counter=None) -> subprocess.CompletedProcess[str]:
        return bpfsync(*args, pin_root=pin_root, env=env, counter=counter)

    v = run("validate", str(copy))
    assert v.returncode == 0, v.stdout + v.stderr
    a = run("apply", str(copy))
    assert a.returncode == 0, a.stdout + a.stderr
    assert "not found" not in a.stderr, a.stderr  # every namespace, device, cgroup there
    # the programs' tags are remembered (the diff below compiles nothing): exactly the
    # tags the kernel reports for the programs attached
    attached = {f[5] for f in host.filters() if f[4].startswith("bpfsync:")}
    assert attached <= remembered_tags(), (attached, remembered_tags())
    d = run("diff", str(copy))
    assert d.returncode == 0, d.stdout + d.stderr  # everything attached, nothing pending
    again = run("apply", str(copy), counter=write_counter)
    assert again.returncode == 0 and write_counter.counts() == (0, 0), again.stdout
    # destroy: everything bpfsync made goes, what others made stays
    refused = run("destroy")  # stdin is not a terminal and no --yes: shows, asks, refuses
    assert refused.returncode == 1 and "pass --yes" in refused.stderr, refused.stderr
    assert "Plan:" in refused.stdout and bpffs_entries(pin_root) != ["foreign"]
    gone = run("destroy", "--yes")
    assert gone.returncode == 0, gone.stdout + gone.stderr
    assert bpffs_entries(pin_root) == ["foreign"], gone.stdout  # as before the first apply
    filters = host.filters()
    assert not [f for f in filters if f[4].startswith("bpfsync:")], filters
    assert {(ns, dev) for ns, dev, *_ in filters} == set(host.devices), filters
    for ns in host.netns.values():
        rules = subprocess.run(["ip", "-n", ns, "rule", "show"], capture_output=True,
                               text=True, check=True).stdout
        assert "proto 181" not in rules, rules
    assert not cgroups.fs_path(datapath_cgroup(pin_root)).exists()
    again = run("destroy", "--yes")
    assert again.returncode == 0 and "Nothing of bpfsync's is left" in again.stdout


def test_every_example_directory_is_covered() -> None:
    assert {str(p.relative_to(EXAMPLES)) for p in DIRECTORIES} >= {
        "quickstart", "gue/gateway", "gue/node", "proxy", "transparent", "intercept"}

"""The Ansible role (packaging/ansible) run by the real ansible-playbook against this machine
(connection local): it installs bpfsync from a file:// clone of this tree into a scratch
prefix, writes the unit and its settings, drops templated files that a daemon started from
that unit applies; a broken template is refused and changes nothing; a second run changes
nothing; --check --diff shows the kernel plan. Everything lives under tmp_path and its own
pin root; no systemd unit is enabled (systemd does not run here)."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.daemon import status as daemon_status
from reconciler.datapath.supervisor import run_dir
from reconciler.gue import tables as gt
from tests.kernel import owned
from tests.kernel.conftest import bpftool_dump
from tests.kernel.daemonkit import wait_for
from tests.scratch import ROOT, source_repo

pytestmark = pytest.mark.kernel

PLAYBOOK = ROOT / "packaging" / "ansible" / "site.yml"
TUNNEL_J2 = """\
apiVersion: bpfsync/v1
kind: Tunnel
metadata: {name: uplink}
spec:
  id: {{ tunnel_id }}
  local: {address: 192.0.2.1, port: 6080}
  remote: {address: {{ remote }}, port: 6080}
"""
SERVICE_J2 = """\
apiVersion: bpfsync/v1
kind: Service
metadata: {name: web}
spec:
  groupId: 1
  serviceId: 1
  protocol: tcp
  proxy: {address: 203.0.113.10, port: 80}
  backend: {address: 198.51.100.20, port: 8080}
  tunnel: {{ service_tunnel }}
  keyFrom: {file: web.key}
"""


def unit_command(unit: Path, settings: Path) -> list[str]:
    """ExecStart as systemd expands it: Environment=, then EnvironmentFile= overrides;
    ${X} is one word, $X splits on whitespace."""
    text = unit.read_text()
    env: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("Environment="):
            for word in shlex.split(line.removeprefix("Environment=")):
                key, _, value = word.partition("=")
                env[key] = value
    for line in settings.read_text().splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            env[key] = value
    exec_start = re.search(r"^ExecStart=(.*)$", text, re.M)
    assert exec_start is not None
    out: list[str] = []
    for word in shlex.split(exec_start.group(1)):
        if m := re.fullmatch(r"\$\{(\w+)\}", word):
            out.append(env[m.group(1)])
        elif m := re.fullmatch(r"\$(\w+)", word):
            out += env[m.group(1)].split()
        else:
            out.append(word)
    return [*out, "--no-datapath"]  # the Tunnels need no data path; keeps the test light


class Host:
    def __init__(self, tmp: Path) -> None:
        tag = uuid.uuid4().hex[:8]
        self.tmp = tmp
        self.prefix = tmp / "opt" / "bpfsync"
        self.desired = tmp / "etc" / "desired.d"
        self.units = tmp / "etc" / "systemd"
        self.defaults = tmp / "etc" / "default"
        self.pin_root = owned.pin_root("ansible")
        self.service = f"bpfsync-test-{tag}"
        self.templates = tmp / "templates"
        self.daemon: subprocess.Popen[bytes] | None = None
        self.scratch = tmp / "tmp"
        for d in (self.units, self.defaults, self.templates, self.scratch):
            d.mkdir(parents=True)

    def playbook(self, files: list[dict[str, str]], *flags: str, play: Path = PLAYBOOK,
                 **variables: object) -> subprocess.CompletedProcess[str]:
        inventory = self.tmp / "inventory.ini"
        inventory.write_text(f"[bpfsync]\nlocalhost ansible_connection=local "
                             f"ansible_python_interpreter={shutil.which('python3', path='/usr/bin')}\n")
        extra = {"bpfsync_repo": f"file://{self.tmp / 'bpfsync-src'}",
                 "bpfsync_version": "main", "bpfsync_prefix": str(self.prefix),
                 "bpfsync_share": str(self.tmp / "share"),
                 "bpfsync_desired_dir": str(self.desired), "bpfsync_pin_root": str(self.pin_root),
                 "bpfsync_service": self.service, "bpfsync_unit_dir": str(self.units),
                 "bpfsync_environment_dir": str(self.defaults), "bpfsync_wait_seconds": 60,
                 "bpfsync_files": files, **variables}
        (self.tmp / "vars.json").write_text(json.dumps(extra))
        env = {**os.environ, "ANSIBLE_NOCOLOR": "1", "ANSIBLE_RETRY_FILES_ENABLED": "0",
               "ANSIBLE_LOCAL_TEMP": str(self.tmp / "ansible-local"),
               "ANSIBLE_REMOTE_TMP": str(self.tmp / "ansible-remote"),
               "ANSIBLE_HOME": str(self.tmp / "ansible-home"),
               "ANSIBLE_DEPRECATION_WARNINGS": "0",
               # the role's staging copies (ansible.builtin.tempfile) land in the test's own
               # directory, where the test can check they are gone without looking at /tmp
               "TMPDIR": str(self.scratch)}
        return subprocess.run(
            [str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(inventory),
             "-e", f"@{self.tmp / 'vars.json'}", str(play), *flags],
            capture_output=True, text=True, env=env, timeout=900)

    def start_daemon(self) -> None:
        cmd = unit_command(self.units / f"{self.service}.service", self.defaults / self.service)
        assert cmd[0] == str(self.prefix / ".venv" / "bin" / "bpfsync")
        assert cmd[1:3] == ["run", str(self.desired)]
        env = {**os.environ, "BPFSYNC_PIN_ROOT": str(self.pin_root)}
        with open(self.tmp / "daemon.log", "ab") as log:
            self.daemon = subprocess.Popen(cmd, env=env, stdout=log, stderr=log,
                                           start_new_session=True)
        wait_for(lambda: self.status() and self.status()["lastReconcile"], 120)

    def status(self) -> dict | None:
        assert self.daemon is not None and self.daemon.poll() is None, (
            self.tmp / "daemon.log").read_text()
        try:
            return daemon_status.query(run_dir(self.pin_root))
        except (daemon_status.DaemonNotRunning, OSError, ValueError):
            return None

    def tunnels(self) -> dict[bytes, bytes]:
        return bpftool_dump(self.pin_root / "maps" / gt.TUNNEL.name)

    def cleanup(self) -> None:
        if self.daemon is not None and self.daemon.poll() is None:
            self.daemon.send_signal(signal.SIGTERM)
            try:
                self.daemon.wait(30)
            except subprocess.TimeoutExpired:
                self.daemon.kill()
                self.daemon.wait(10)
        if self.daemon is not None:
            owned.kill_process_group(self.daemon.pid)  # its data path, should it remain
        owned.remove_pin_root(self.pin_root)


@pytest.fixture
def host(tmp_path: Path) -> Iterator[Host]:
    source_repo(tmp_path)
    h = Host(tmp_path)
    try:
        yield h
    finally:
        h.cleanup()


def recap(run: subprocess.CompletedProcess[str]) -> dict[str, int]:
    m = re.search(r"^localhost\s+:\s+(.*)$", run.stdout, re.M)
    assert m, run.stdout + run.stderr
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", m.group(1))}


def test_role_installs_drops_files_refuses_broken_ones_and_is_idempotent(host: Host) -> None:
    first = host.playbook([])
    assert first.returncode == 0, first.stdout + first.stderr
    unit = (host.units / f"{host.service}.service").read_text()
    assert f"{host.prefix}/.venv/bin/bpfsync run" in unit
    assert f"EnvironmentFile=-{host.defaults / host.service}" in unit
    # root only: keyFrom: {env: ...} values live there
    assert (host.defaults / host.service).stat().st_mode & 0o777 == 0o600
    assert (host.prefix / ".venv" / "bin" / "bpfsync").exists()
    host.start_daemon()

    (host.templates / "tunnels.yaml.j2").write_text(TUNNEL_J2)
    (host.templates / "services.yaml.j2").write_text(SERVICE_J2)
    (host.desired / "web.key").write_text("ansible-test-key\n")
    (host.desired / "web.key").chmod(0o600)
    files = [{"src": str(host.templates / "tunnels.yaml.j2")},
             {"src": str(host.templates / "services.yaml.j2"), "dest": "services.yaml"}]
    good = {"tunnel_id": 7, "remote": "198.51.100.2", "service_tunnel": "uplink"}
    second = host.playbook(files, **good)
    assert second.returncode == 0, second.stdout + second.stderr
    assert recap(second)["changed"] == 1  # one task: the files; the role waited for the daemon
    for name in ("tunnels.yaml", "services.yaml"):
        assert f"changed: [localhost] => (item={name})" in second.stdout
    assert len(host.tunnels()) == 1
    assert len(bpftool_dump(host.pin_root / "maps" / gt.ENCAP.name)) == 1
    status = host.status()
    assert status and not status["errors"] and status["resources"]["Service"]["Synced"] == 1
    # applied on the files' arrival (Ansible renames them in from its temp directory), not by
    # the next periodic resync
    assert status["lastReconcile"]["trigger"] == "files"

    again = host.playbook(files, **good)
    assert again.returncode == 0 and recap(again)["changed"] == 0, again.stdout

    # A Service pointing at a Tunnel that does not exist: valid on its own, refused in the
    # context of the directory. Nothing lands (not even the good tunnels change), the kernel
    # and the daemon are untouched.
    live = {p.name: p.read_bytes() for p in host.desired.iterdir()}
    tunnels_before = host.tunnels()
    broken = host.playbook(files, **{**good, "remote": "198.51.100.3",
                                     "service_tunnel": "nowhere"})
    assert broken.returncode != 0
    assert "no Tunnel named 'nowhere'" in broken.stdout or "nowhere" in broken.stdout
    assert "services.yaml:" in broken.stdout  # file:line of the problem
    assert {p.name: p.read_bytes() for p in host.desired.iterdir()} == live
    assert host.tunnels() == tunnels_before
    status = host.status()
    assert status and not status["errors"]
    assert f"{host.scratch}/bpfsync-stage." in broken.stdout  # staged there (its problems
    assert list(host.scratch.glob("bpfsync-stage.*")) == []  # name it), and removed

    # --check --diff: the pending kernel change is shown per host, nothing changes.
    check = host.playbook(files, "--check", "--diff", **{**good, "remote": "198.51.100.9"})
    assert check.returncode == 0, check.stdout + check.stderr
    assert "Kernel changes the new files make" in check.stdout
    assert "198.51.100.9" in check.stdout and "Tunnel/uplink" in check.stdout
    assert {p.name: p.read_bytes() for p in host.desired.iterdir()} == live
    assert host.tunnels() == tunnels_before

    # The plain form of `validate:` in a play of one's own (copy, no --as): Ansible's temp
    # file has a random name; an update of an existing file takes its place, a new file that
    # claims a Tunnel id already in use is refused and never lands.
    bpfsync = host.prefix / ".venv" / "bin" / "bpfsync"
    copy = host.tmp / "copy.yml"
    copy.write_text(f"""\
- hosts: bpfsync
  gather_facts: false
  tasks:
    - ansible.builtin.copy:
        content: "{{{{ content }}}}"
        dest: "{host.desired}/{{{{ name }}}}"
        mode: "0644"
        validate: "{bpfsync} validate --in {host.desired} %s"
""")
    updated = TUNNEL_J2.replace("{{ tunnel_id }}", "7").replace("{{ remote }}", "198.51.100.4")
    ok = host.playbook([], play=copy, content=updated, name="tunnels.yaml")
    assert ok.returncode == 0 and recap(ok)["changed"] == 1, ok.stdout + ok.stderr
    wait_for(lambda: host.tunnels() != tunnels_before)
    assert any(bytes([198, 51, 100, 4]) in v for v in host.tunnels().values())
    clash = updated.replace("name: uplink", "name: backup").replace("198.51.100.4", "198.51.100.5")
    refused = host.playbook([], play=copy, content=clash, name="backup.yaml")
    assert refused.returncode != 0 and "id 7" in refused.stdout, refused.stdout
    assert not (host.desired / "backup.yaml").exists()

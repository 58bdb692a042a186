"""The pre-commit hook (.pre-commit-hooks.yaml) run by the real `pre-commit` tool, as a
configuration repository's git commit hook: pre-commit installs bpfsync from a file://
clone of this tree into its own virtualenv (no BCC, no root needed) and refuses commits
whose desired state is invalid, naming file:line. Key files are not read (--no-secrets):
they live on the hosts, not in the repository."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.scratch import IDENTITY, git, source_repo
from tests.unit.helpers import service, tunnel

PRE_COMMIT = Path(sys.executable).parent / "pre-commit"


def commit(repo: Path, env: dict[str, str], message: str) -> subprocess.CompletedProcess[str]:
    git(repo, "add", "-A")
    return subprocess.run(["git", "-C", str(repo), *IDENTITY, "commit", "-q", "-m", message],
                          capture_output=True, text=True, env=env, timeout=900)


def test_hook_refuses_invalid_desired_state(tmp_path: Path) -> None:
    hooks = source_repo(tmp_path)
    repo = tmp_path / "config"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    (repo / ".pre-commit-config.yaml").write_text(
        f"repos:\n  - repo: file://{hooks}\n    rev: {git(hooks, 'rev-parse', 'HEAD')}\n"
        f"    hooks:\n      - id: bpfsync-validate\n        args: ['hosts/*']\n")
    env = {**os.environ, "PRE_COMMIT_HOME": str(tmp_path / "pre-commit-home")}
    subprocess.run([str(PRE_COMMIT), "install"], cwd=repo, env=env, check=True,
                   capture_output=True, timeout=120)
    gw1 = repo / "hosts" / "gw1"
    gw1.mkdir(parents=True)
    (gw1 / "tunnels.yaml").write_text(tunnel())
    (gw1 / "services.yaml").write_text(service())  # its key file lives on the host only
    first = commit(repo, env, "gw1")
    assert first.returncode == 0, first.stdout + first.stderr
    head = git(repo, "rev-parse", "HEAD")

    # A second host whose Service names a Tunnel that only gw1 has: each directory is
    # checked on its own, so this is refused; so is a schema error, with its line.
    gw2 = repo / "hosts" / "gw2"
    gw2.mkdir()
    (gw2 / "services.yaml").write_text(service())
    (gw1 / "tunnels.yaml").write_text(tunnel(id=0))
    refused = commit(repo, env, "gw2")
    out = refused.stdout + refused.stderr
    assert refused.returncode != 0, out
    assert "bpfsync validate" in out and "Failed" in out
    assert "hosts/gw2/services.yaml:11:" in out and "no Tunnel named 't1'" in out
    assert "hosts/gw1/tunnels.yaml:6:" in out
    assert git(repo, "rev-parse", "HEAD") == head  # nothing committed

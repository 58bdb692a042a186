"""Scratch git repositories for tests of the fleet workflows (file:// remotes only)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IDENTITY = ("-c", "user.email=ci@example.com", "-c", "user.name=ci")


def git(where: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(where), *args], check=True, capture_output=True,
                          text=True, timeout=60).stdout.strip()


def source_repo(tmp: Path) -> Path:
    """This working tree (uncommitted changes included) as a one-commit repository on branch
    main: what the Ansible role and pre-commit fetch over file://."""
    src = tmp / "bpfsync-src"
    shutil.copytree(ROOT, src, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", ".venv", "__pycache__", "*.egg-info", ".pytest_cache", ".ruff_cache", "build"))
    git(src, "init", "-q", "-b", "main")
    git(src, "add", "-A")
    git(src, *IDENTITY, "commit", "-q", "-m", "bpfsync under test")
    return src

"""The git commit a desired-state directory was at, when it is in a git work tree."""

from __future__ import annotations

import logging
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

GIT_TIMEOUT = 5.0
# While git holds its index lock (a checkout, merge or commit under way), the directory is
# half old, half new: a reconcile waits for git, checking this often, for GIT_BUSY_MAX at most
# (a git that crashed leaves the lock behind; the directory is then loaded anyway).
GIT_BUSY_EVERY, GIT_BUSY_MAX = 0.25, 30.0
log = logging.getLogger("bpfsync.daemon")


@dataclass(frozen=True, slots=True)
class Revision:
    commit: str
    dirty: bool  # uncommitted changes (or untracked files) under the directory

    def __str__(self) -> str:
        return self.commit[:12] + ("-dirty" if self.dirty else "")

    @property
    def full(self) -> str:
        """The whole commit, "-dirty" when the tree had uncommitted changes (as the names
        table records it)."""
        return self.commit + ("-dirty" if self.dirty else "")


def _git(directory: Path, *args: str) -> str | None:
    try:
        # safe.directory: root reads a revision of a tree another user owns; nothing is run
        # from the repository's configuration that this would make dangerous.
        out = subprocess.run(["git", "-c", "safe.directory=*", "-C", str(directory), *args],
                             capture_output=True, text=True, timeout=GIT_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout if out.returncode == 0 else None


def revision(directory: Path) -> Revision | None:
    commit = _git(directory, "rev-parse", "--verify", "-q", "HEAD")
    if not commit:
        return None
    status = _git(directory, "status", "--porcelain", "--untracked-files=normal", "--", ".")
    if status is None:  # failed or timed out (git busy, a loaded host): not known, not clean
        return None
    return Revision(commit.strip(), bool(status.strip()))


def busy(directory: Path) -> bool:
    """A git operation holds the index lock of directory's repository (a checkout, a merge
    or a commit is under way): files and HEAD are changing, and HEAD moves last."""
    lock = _git(directory, "rev-parse", "--git-path", "index.lock")
    if not lock:
        return False
    path = Path(lock.strip())
    return (path if path.is_absolute() else directory / path).exists()


class GitWait:
    """Whether a load is put off because git is changing the directory's work tree."""

    def __init__(self) -> None:
        self.since: float | None = None  # git has held the index lock since then

    def busy(self, directory: Path) -> bool:
        """True while git holds the index lock, for GIT_BUSY_MAX at most."""
        if not busy(directory):
            self.since = None
            return False
        now = time.monotonic()
        self.since = self.since or now
        if now - self.since < GIT_BUSY_MAX:
            return True
        log.warning("git has held the index lock of %s for %.0f s; loading it anyway (a git "
                    "that crashed leaves .git/index.lock behind: remove it)", directory,
                    now - self.since)
        return False


def after_load(directory: Path, before: Revision | None, applied: Revision | None
               ) -> tuple[Revision | None, bool]:
    """The revision of files read after `before` was read, and whether to read it again.

    If git changed the tree meanwhile (or still is), the pair may not match; the content is
    applied now and the revision read again a second later. So it is when the revision is
    not the one applied last: a checkout moves HEAD after the files (no event says when),
    and git status may fail or time out on a loaded host."""
    after = revision(directory) if directory.is_dir() else None
    again = after != before or busy(directory) or (applied is not None and after != applied)
    return after, again

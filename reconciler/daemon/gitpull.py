"""Pull mode: the daemon follows the upstream branch of a local git clone.

A thread fetches on an interval and fast-forwards the clone (plain `git`; a rewritten
upstream history is refused and reported, never merged or reset). What is applied is the
committed tree of HEAD, exported by `git read-tree` into a work tree of bpfsync's own (own
index, under the run directory): uncommitted or untracked files in the clone never reach the
kernel, and files unchanged between commits keep their identity, so the parse cache reuses
them. The commit applied last is recorded in the clone as refs/bpfsync/applied, so
`git log refs/bpfsync/applied..@{u}` shows what is pending.
"""

from __future__ import annotations

import logging
import os
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from reconciler.core.errors import BpfsyncError

log = logging.getLogger("bpfsync.git")

GIT_TIMEOUT = 120.0  # a fetch over a slow link; the daemon's loop does not wait for it
STOP_WAIT = 5.0
APPLIED_REF = "refs/bpfsync/applied"
# Never prompt (no terminal under systemd), never let ssh ask about host keys.
GIT_ENV = {"GIT_TERMINAL_PROMPT": "0", "GIT_SSH_COMMAND": "ssh -o BatchMode=yes"}


class GitError(BpfsyncError):
    pass


def _git(top: Path, *args: str, env: dict[str, str] | None = None,
         timeout: float = GIT_TIMEOUT) -> str:
    # safe.directory: root follows a clone another user may own; nothing from the clone's
    # configuration is run that this would make dangerous (no hooks run on fetch or merge).
    cmd = ["git", "-c", "safe.directory=*", "-C", str(top), *args]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False,
                             env={**os.environ, **GIT_ENV, **(env or {})})
    except subprocess.TimeoutExpired:
        raise GitError(f"git {args[0]}: no answer within {timeout:g}s") from None
    except OSError as exc:
        raise GitError(f"git: {exc.strerror}") from None
    if out.returncode != 0:
        message = " ".join(out.stderr.split()) or f"exit {out.returncode}"
        raise GitError(f"git {args[0]}: {message}")
    return out.stdout.strip()


class GitFollower:
    def __init__(self, directory: Path, work: Path, interval: float,
                 on_commit: Callable[[], None]) -> None:
        try:
            top = Path(_git(directory, "rev-parse", "--show-toplevel"))
        except GitError as exc:
            raise GitError(f"--pull: {directory} is not in a git clone ({exc})") from None
        self.top = top
        self.subdir = directory.resolve().relative_to(top.resolve())
        try:
            self.upstream = _git(top, "rev-parse", "--abbrev-ref", "--symbolic-full-name", "@{u}")
        except GitError:
            raise GitError(f"--pull: the branch checked out in {top} follows no upstream "
                           f"(git branch --set-upstream-to=origin/BRANCH)") from None
        self.remote = self.upstream.split("/", 1)[0]
        self.interval = interval
        self.on_commit = on_commit
        self.work = work
        self.tree = work / "tree"
        self.lock = threading.Lock()
        self.state: dict[str, Any] = {"clone": str(top), "upstream": self.upstream,
                                      "head": self.head_now(), "applied": None, "lastFetch": None,
                                      "error": None}
        self._stop = threading.Event()
        self._now = threading.Event()
        self._thread: threading.Thread | None = None

    # ----- the puller thread
    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="git-pull", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._now.set()
        if self._thread is not None:  # a fetch in flight is not waited for (systemd's stop timeout)
            self._thread.join(STOP_WAIT)

    def pull_now(self) -> None:
        self._now.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            before = self.head()
            self.pull()
            if self.head() != before:
                self.on_commit()
            self._now.wait(self.interval)
            self._now.clear()

    def pull(self) -> None:
        """Fetch and fast-forward; failures are recorded (and logged once), never raised."""
        try:
            _git(self.top, "fetch", "--quiet", "--prune", self.remote)
            ahead = _git(self.top, "rev-list", "--count", "HEAD..@{u}")
            if ahead != "0":
                try:
                    _git(self.top, "merge-base", "--is-ancestor", "HEAD", "@{u}")
                except GitError:
                    raise GitError(f"{self.upstream} is not a descendant of HEAD (history "
                                   f"rewritten upstream?): not fast-forwarded, staying at "
                                   f"{self.head_now()[:12]}") from None
                _git(self.top, "merge", "--ff-only", "--quiet", "@{u}")
            error = None
        except GitError as exc:
            error = str(exc)
        with self.lock:
            if error != self.state["error"]:
                if error:
                    log.error("git pull: %s", error)
                else:
                    log.info("git pull: fetching from %s works again", self.upstream)
            self.state["error"] = error
            self.state["lastFetch"] = time.time()
            self.state["head"] = self.head_now()

    # ----- the daemon's thread
    def head_now(self) -> str:
        try:
            return _git(self.top, "rev-parse", "--verify", "HEAD")
        except GitError:
            return ""

    def head(self) -> str | None:
        with self.lock:
            return self.state["head"]

    def checkout(self) -> tuple[str, Path]:
        """HEAD's committed tree, exported: (commit, the desired-state directory in it)."""
        commit = self.head_now()
        if not commit:
            raise GitError(f"{self.top}: no commit checked out")
        self.tree.mkdir(parents=True, exist_ok=True, mode=0o700)
        _git(self.top, "read-tree", "--reset", "-u", commit,
             env={"GIT_INDEX_FILE": str(self.work / "index"), "GIT_WORK_TREE": str(self.tree)})
        with self.lock:
            self.state["head"] = commit
        return commit, self.tree / self.subdir

    def applied(self, commit: str) -> None:
        with self.lock:
            if self.state["applied"] == commit:
                return
            self.state["applied"] = commit
        try:
            _git(self.top, "update-ref", "-m", "bpfsync applied", APPLIED_REF, commit)
        except GitError as exc:
            log.warning("could not record the applied commit in %s: %s", self.top, exc)

    def report(self) -> dict[str, Any]:
        with self.lock:
            return {**self.state, "directory": str(self.subdir),
                    "intervalSeconds": self.interval}

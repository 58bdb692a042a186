"""Finding the YAML files of a desired-state directory: a bounded walk that ignores editor
and VCS leftovers and never follows a symlink out into the machine."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

from reconciler.core.errors import Location, Problem

YAML_SUFFIXES = (".yaml", ".yml")
TEMP_PATTERNS = ("~", ".swp", ".swo", ".swx", ".tmp", ".bak", ".orig", ".rej")


def is_ignored(name: str) -> bool:
    """Dotfiles (.git, .#lock, .ansible_tmp*, vim's .x.swp) and editor/backup leftovers."""
    return name.startswith(".") or name.endswith(TEMP_PATTERNS) or name.startswith("#")


# Limits of a directory walk (README "Limits"): a symlink to / or a runaway generator must
# end in an error naming the place, not in a walk of the whole machine.
MAX_FILES = 50_000  # YAML files
MAX_ENTRIES = 100_000  # directory entries looked at (ignored ones included)
MAX_TOTAL_BYTES = 1 << 30  # of YAML, all files together
# Kernel filesystems a desired-state directory never leads into (statfs magic numbers).
PSEUDO_FILESYSTEMS = {0x9FA0: "proc", 0x62656572: "sysfs", 0x27E0EB: "cgroup",
                      0x63677270: "cgroup2", 0xCAFE4A11: "bpffs", 0x64626720: "debugfs",
                      0x74726163: "tracefs", 0x73636673: "securityfs", 0x1CD1: "devpts"}
SYSTEM_TREES = ("/proc", "/sys", "/dev")


def _foreign_tree(path: Path, root: str, root_dev: int, st: os.stat_result) -> str | None:
    """Why a directory reached through a symlink must not be walked: it contains the desired
    state itself (/, a parent), or it is a kernel filesystem or the machine's device and
    system trees. None: walk it (symlinks inside a repository, e.g. shared role folders, are
    the normal case)."""
    real = os.path.realpath(path)
    if root == real or root.startswith(real.rstrip("/") + "/"):
        return f"leads to {real}, which contains this desired state"
    for tree in SYSTEM_TREES:
        if real == tree or real.startswith(tree + "/"):
            return f"leads to {real}, outside any desired state"
    if st.st_dev != root_dev:
        from reconciler.kernel.maps import fs_magic

        with_name = PSEUDO_FILESYSTEMS.get(fs_magic(path))
        if with_name:
            return f"leads into a {with_name} filesystem ({real})"
    return None


def _not_regular(mode: int) -> str:
    for test, what in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return what
    return "not a regular file"


def scan(root: Path) -> tuple[list[Path], list[Problem]]:
    """All YAML files under root, sorted. Follows directory symlinks (detecting loops) but
    not into kernel filesystems or /proc, /sys, /dev; a *.yaml that is not a regular file (a
    FIFO, a device, a symlink to /dev/null) is an error, never silently skipped (its
    resources would be pruned). Bounded by MAX_FILES, MAX_ENTRIES and MAX_TOTAL_BYTES."""
    if not root.is_dir():
        return [], [Problem(Location(str(root)), "not a directory")]
    walker = _Walk(root)
    walker.walk(root)
    return walker.files, walker.problems


class _Walk:
    """One scan: what it found, what went wrong, and what it has counted against the bounds.
    Once a bound is passed it stops (`stopped`): nothing of such a directory is loaded."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root_dev, self.real_root = root.stat().st_dev, os.path.realpath(root)
        self.files: list[Path] = []
        self.problems: list[Problem] = []
        self.seen_dirs: set[tuple[int, int]] = set()
        self.entries = 0
        self.bytes = 0
        self.stopped = False

    def _problem(self, path: Path, message: str, **kw: Any) -> None:
        self.problems.append(Problem(Location(str(path)), message, **kw))

    def _over(self, what: str, limit: int) -> None:
        self._problem(self.root, f"more than {limit:,} {what} under this directory (limit); "
                                 "nothing is loaded")
        self.stopped = True

    def walk(self, directory: Path) -> None:
        try:
            st = directory.stat()
        except OSError as exc:
            self._problem(directory, f"cannot read: {exc.strerror}")
            return
        ident = (st.st_dev, st.st_ino)
        if ident in self.seen_dirs:
            self._problem(directory, "symlink loop: directory seen before")
            return
        self.seen_dirs.add(ident)
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError as exc:
            self._problem(directory, f"cannot list: {exc.strerror}")
            return
        stems: dict[str, Path] = {}
        for entry in entries:
            if self.stopped:  # a bound was passed further down: stop here too
                return
            self.entries += 1
            if self.entries > MAX_ENTRIES:
                self._over("directory entries", MAX_ENTRIES)
                return
            if is_ignored(entry.name):
                continue
            path = Path(entry.path)
            try:
                sub = os.stat(path)
            except OSError as exc:
                if entry.name.endswith(YAML_SUFFIXES) or entry.is_symlink():
                    self._problem(path, f"cannot read: {exc.strerror}")
                continue
            if stat.S_ISDIR(sub.st_mode):
                why = (_foreign_tree(path, self.real_root, self.root_dev, sub)
                       if entry.is_symlink() else None)
                if why:
                    self._problem(path, f"symlinked directory {why}")
                    continue
                self.walk(path)
            elif entry.name.endswith(YAML_SUFFIXES):
                self._file(path, entry.name, sub, stems)

    def _file(self, path: Path, name: str, sub: os.stat_result, stems: dict[str, Path]) -> None:
        if not stat.S_ISREG(sub.st_mode):
            self._problem(path, f"is {_not_regular(sub.st_mode)}; a desired-state file must be "
                                "a regular file")
            return
        stem = name.rsplit(".", 1)[0]
        if stem in stems:
            self._problem(path, f"both {stems[stem].name} and {name} exist; keep one",
                          related=(Location(str(stems[stem])),))
            return
        stems[stem] = path
        self.files.append(path)
        self.bytes += sub.st_size
        if len(self.files) > MAX_FILES:
            self._over("YAML files", MAX_FILES)
        elif self.bytes > MAX_TOTAL_BYTES:
            self._over("bytes of YAML", MAX_TOTAL_BYTES)



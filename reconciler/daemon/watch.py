"""Watching the desired-state directory with watchdog (inotify on Linux).

Events only say "look now": the reconcile reloads the whole directory. A file counts when it
is complete — closed after writing, moved into place (Ansible's temp file + rename), or
deleted — never while it is still being written. A file renamed in from outside (Ansible's
first try) counts as moved into place. Dotfiles and editor/backup leftovers
(.ansible_tmp*, .x.swp, x~, .git/) are ignored. The directory's parent is watched too, so a
directory that is deleted and created again (or a symlink swapped to a new release) is
picked up again.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import Any

from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers.api import ObservedWatch
from watchdog.observers.inotify import InotifyObserver

from reconciler.load.scan import is_ignored

log = logging.getLogger("bpfsync.watch")


def relevant(root: Path, event: FileSystemEvent) -> bool:
    """Whether an event under root can change the desired state."""
    if isinstance(event, FileClosedEvent | FileDeletedEvent | DirDeletedEvent | DirCreatedEvent):
        paths = [event.src_path]
    elif isinstance(event, FileMovedEvent | DirMovedEvent):
        # a rename away is a removal; one end is empty when the other is outside the tree
        paths = [p for p in (event.src_path, event.dest_path) if p]
    elif isinstance(event, FileCreatedEvent):
        # a new file is still being written (its close counts); a symlink is complete now
        if not os.path.islink(event.src_path):
            return False
        paths = [event.src_path]
    else:  # modified (mid-write), opened, closed without writing
        return False
    for p in paths:
        path = os.fsdecode(p)
        try:
            rel = Path(path).relative_to(root)
        except ValueError:
            continue
        if rel.parts and not any(is_ignored(part) for part in rel.parts):
            return True
    return False


class _Handler(FileSystemEventHandler):
    def __init__(self, watcher: DirectoryWatcher) -> None:
        self.watcher = watcher

    def on_any_event(self, event: FileSystemEvent) -> None:
        self.watcher.handle(event)


class DirectoryWatcher:
    """Calls on_change() from watchdog's thread whenever something relevant happened."""

    def __init__(self, root: Path, on_change: Callable[[], None]) -> None:
        self.root = root.absolute()
        self.on_change = on_change
        # Full events: a file renamed in from outside the tree (Ansible renames from its own
        # temp directory) is a move with no source, not a "created" that would be ignored as
        # still being written.
        self.observer = InotifyObserver(generate_full_events=True)
        self._handler = _Handler(self)
        self._lock = threading.Lock()
        self._root_watch: ObservedWatch | None = None
        self._watched = self.root  # the directory's real path, as events name it
        self._parent_watch: ObservedWatch | None = None
        # Events in the directory since the start, and the last file event, for status: an
        # operator wondering why a save did nothing (or a test) sees that it arrived and
        # whether it counted.
        self.relevant_events = 0  # events that asked for a reconcile
        self.ignored_events = 0  # mid-write, dotfiles, editor leftovers
        self.last_event: dict[str, Any] | None = None

    def counts(self) -> dict[str, Any]:
        with self._lock:
            return {"relevant": self.relevant_events, "ignored": self.ignored_events,
                    "lastEvent": dict(self.last_event) if self.last_event else None}

    def _count(self, event: FileSystemEvent, counted: bool) -> None:
        path = os.fsdecode(getattr(event, "dest_path", "") or event.src_path)
        try:
            rel = Path(path).relative_to(self._watched)
        except ValueError:
            return  # the parent directory's other entries
        with self._lock:
            if counted:
                self.relevant_events += 1
            else:
                self.ignored_events += 1
            if not event.is_directory:
                self.last_event = {"path": str(rel), "event": event.event_type,
                                   "counted": counted}

    def start(self) -> None:
        parent = self.root.parent
        if parent.is_dir():
            self._parent_watch = self.observer.schedule(self._handler, str(parent),
                                                        recursive=False)
        self._watch_root()
        self.observer.start()

    def _watch_root(self) -> None:
        with self._lock:
            if self._root_watch is not None:
                # its inotify watch may have died with the directory
                with suppress(KeyError, OSError):
                    self.observer.unschedule(self._root_watch)
                self._root_watch = None
            if self.root.is_dir():
                self._watched = self.root.resolve()
                try:
                    self._root_watch = self.observer.schedule(
                        self._handler, str(self._watched), recursive=True)
                except OSError as exc:
                    log.warning("cannot watch %s: %s", self.root, exc)

    def _about_root(self, event: FileSystemEvent) -> bool:
        """The directory itself created, deleted, or renamed (a symlink swapped counts)."""
        if event.event_type not in ("created", "deleted", "moved"):
            return False
        names = {os.fsdecode(event.src_path), os.fsdecode(getattr(event, "dest_path", "") or "")}
        return str(self.root) in names

    def handle(self, event: FileSystemEvent) -> None:
        if self._about_root(event):  # the directory itself appeared, vanished or was swapped
            log.info("%s: %s", self.root, event.event_type)
            self._watch_root()
            self.on_change()
        elif relevant(self._watched, event):  # resolved once per (re)watch, not per event
            self.on_change()
            self._count(event, True)  # after: whoever sees it counted sees it pending too
        else:
            self._count(event, False)

    def stop(self) -> None:
        self.observer.stop()
        self.observer.join(timeout=5)

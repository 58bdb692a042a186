"""Where the history lives: $BPFSYNC_STATE_DIR (default /var/lib/bpfsync)/<pin root>/history,
root-only: `NNNNNN.json` per revision and `blobs/<sha256>` per distinct file text, so that a
revision costs only the files that changed. The last $BPFSYNC_HISTORY_KEEP revisions are
kept (default 20; 0 keeps none), and the blobs no kept revision names are removed."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path

from reconciler.core.errors import BpfsyncError
from reconciler.core.naming import escape_path
from reconciler.history.record import Revision, decode, encode
from reconciler.privatefiles import state_directory, write_private

DEFAULT_KEEP = 20
MAX_REVISION_BYTES = 64 << 20
Make = Callable[[int, dict[str, str]], Revision]  # (number, file hashes) -> the revision


def directory(pin_root: Path) -> Path:
    return state_directory() / escape_path(pin_root) / "history"


def keep() -> int:
    text = os.environ.get("BPFSYNC_HISTORY_KEEP", "")
    try:
        return max(0, int(text)) if text else DEFAULT_KEEP
    except ValueError:
        raise BpfsyncError(f"BPFSYNC_HISTORY_KEEP={text[:20]!r}: expected a number") from None


def revisions(pin_root: Path) -> list[Revision]:
    """Every kept revision, oldest first (unreadable ones are skipped)."""
    out = []
    d = directory(pin_root)
    for path in sorted(d.glob("[0-9]*.json")) if d.is_dir() else ():
        with suppress(OSError, ValueError):
            if path.stat().st_size <= MAX_REVISION_BYTES:
                out.append(decode(path.read_bytes()))
    return out


def append(pin_root: Path, texts: dict[str, str], make: Make) -> Revision | None:
    """Store texts as blobs and the revision make(number, hashes) builds; None when
    history is off (keep 0)."""
    n = keep()
    if n == 0:
        return None
    d = directory(pin_root)
    (d / "blobs").mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(d, 0o700)
    hashes = {}
    for rel, text in texts.items():
        raw = text.encode()
        sha = hashlib.sha256(raw).hexdigest()
        hashes[rel] = sha
        if not (d / "blobs" / sha).exists():
            write_private(d / "blobs" / sha, raw)
    existing = revisions(pin_root)
    revision = make((existing[-1].number + 1) if existing else 1, hashes)
    write_private(d / f"{revision.number:06d}.json", encode(revision))
    _prune(d, [*existing, revision][-n:])
    return revision


def replace(pin_root: Path, revision: Revision) -> None:
    write_private(directory(pin_root) / f"{revision.number:06d}.json", encode(revision))


def blob(pin_root: Path, sha: str) -> str:
    try:
        return (directory(pin_root) / "blobs" / sha).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BpfsyncError(f"history: a file of the revision is gone ({exc})") from None


def _prune(d: Path, kept: list[Revision]) -> None:
    numbers = {r.number for r in kept}
    for path in d.glob("[0-9]*.json"):
        if path.stem.isdigit() and int(path.stem) not in numbers:
            path.unlink(missing_ok=True)
    used = {sha for r in kept for sha in r.files.values()}
    for path in (d / "blobs").iterdir():
        if path.name not in used:
            path.unlink(missing_ok=True)

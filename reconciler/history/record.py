"""One revision of the history (pure): when, by what, from where, what the plan did, and the
files that were applied — by content hash, their texts kept once in the store's blobs.

Files declaring a key inline are not kept (history never stores keys): a revision with one
cannot be rolled back to, and says so. Keys given by keyFrom are read again at rollback.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

FORMAT = 1
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True, slots=True)
class Revision:
    number: int
    time: float
    by: str  # "apply", "daemon", "rollback to 3"
    directory: str  # what the files are relative to
    revision: str  # the directory's git commit ("-dirty" suffix), "" when none
    summary: dict[str, int]  # the plan: create/update/delete/attach/replace/detach counts
    resources: int
    files: dict[str, str]  # relative path -> sha256 of its text
    unrestorable: tuple[str, ...] = ()  # why it cannot be rolled back to
    reverted: bool = False  # applied with --confirm-within and reverted

    @property
    def restorable(self) -> bool:
        return not self.unrestorable and not self.reverted

    def changes(self) -> str:
        parts = [f"{n} {action}" for action, n in self.summary.items() if n]
        return ", ".join(parts) or "nothing"

    def source(self) -> str:
        return self.directory + (f"@{self.revision[:12]}" if self.revision else "")


def encode(r: Revision) -> bytes:
    doc: dict[str, Any] = {"format": FORMAT, "number": r.number, "time": r.time, "by": r.by,
                           "directory": r.directory, "revision": r.revision,
                           "summary": r.summary, "resources": r.resources, "files": r.files,
                           "unrestorable": list(r.unrestorable), "reverted": r.reverted}
    return json.dumps(doc, indent=1, sort_keys=True).encode()


def decode(raw: bytes) -> Revision:
    """ValueError when raw is not a revision this version wrote."""
    try:
        d = json.loads(raw)
        if d.get("format") != FORMAT:
            raise ValueError("unknown format")
        files = {str(k): str(v) for k, v in d["files"].items()}
        if not all(map(_SHA256.fullmatch, files.values())):  # (per character: 20 ms at 1k files)
            raise ValueError("a file hash is not a sha256")
        return Revision(int(d["number"]), float(d["time"]), str(d["by"]), str(d["directory"]),
                        str(d["revision"]), {str(k): int(v) for k, v in d["summary"].items()},
                        int(d["resources"]), files, tuple(map(str, d["unrestorable"])),
                        bool(d["reverted"]))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ValueError(f"not a history revision ({type(exc).__name__})") from None

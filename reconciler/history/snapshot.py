"""The files of an applied desired state, read right after the apply, for the history, and
a revision loaded again from them (rollback): through the same loader and checks as any
directory, each file shown under its original path, so relative keyFrom files and the
names table's file names are what they were. Keys are read again from keyFrom."""

from __future__ import annotations

import dataclasses
import functools
import tempfile
from pathlib import Path
from typing import Any

from reconciler.core.capacity import Capacities
from reconciler.core.errors import BpfsyncError
from reconciler.core.state import DesiredState
from reconciler.history import store
from reconciler.history.record import Revision
from reconciler.load.directory import check_results
from reconciler.load.files import load_files
from reconciler.load.scan import scan
from reconciler.load.schema import Schemas
from reconciler.load.secrets import KeySource

MAX_BYTES = 256 << 20  # of files kept per revision (the loader's limit is 1 GiB)


@functools.cache
def _key_source_fields(cls: type) -> tuple[str, ...]:
    """The fields of a resource class that hold a KeySource (by their declared type)."""
    if not dataclasses.is_dataclass(cls):
        return ()
    return tuple(f.name for f in dataclasses.fields(cls) if "KeySource" in str(f.type))


def _inline_file(r: Any) -> str | None:
    """The file of r when it declares a key inline (a KeySource field says so)."""
    for name in _key_source_fields(type(r)):
        value: Any = getattr(r, name, None)
        if isinstance(value, KeySource) and value.kind == "inline" and r.origin:
            return str(r.origin.file)
    return None


def _inline_key_files(state: DesiredState) -> set[str]:
    """Files that declare a key inline. Runs after every apply: the count per file is kept
    on the state (key_counts), so a state assembled by difference looks at its changed
    resources only (at 100k Services, any pass over all of them costs)."""
    files: set[str] = set()
    for kind, resources in state.resources.items():
        if resources and _key_source_fields(type(first := next(iter(resources.values())))):
            counts = state.key_counts(type(first), _inline_file, f"history.inline.{kind}")
            files.update(f for f in counts if f is not None)
    return {str(Path(f).resolve()) for f in files}


def capture(state: DesiredState) -> tuple[dict[str, str], list[str]]:
    """(relative path -> text, why the revision cannot be restored) of state's directory."""
    if state.sources is not None:
        return dict(state.sources), []
    if state.directory is None:
        return {}, ["no directory (an empty desired state)"]
    root = Path(state.directory)
    files, problems = scan(root)
    why = [str(p) for p in problems]
    inline = _inline_key_files(state)
    texts: dict[str, str] = {}
    total = 0
    for path in files:
        rel = str(path.relative_to(root))
        if inline and str(path.resolve()) in inline:  # (resolving 1,000 paths costs)
            why.append(f"{rel} declares a key inline, and history never stores keys")
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            why.append(f"{rel} could not be read again ({type(exc).__name__})")
            continue
        total += len(text)
        if total > MAX_BYTES:
            return {}, [f"its files are larger than {MAX_BYTES >> 20} MiB together"]
        texts[rel] = text
    return texts, why


def load(pin_root: Path, revision: Revision, scratch: Path,
         capacities: Capacities | None = None) -> DesiredState:
    """revision's desired state, checked as `validate` would (capacities: the pin root's
    table sizes, else the defaults); scratch: a private directory for the files meanwhile
    (tmpfs). BpfsyncError when it cannot be restored."""
    if revision.reverted:
        raise BpfsyncError(f"revision {revision.number} was reverted (never confirmed); "
                           f"it is not a state to go back to")
    if revision.unrestorable:
        raise BpfsyncError(f"revision {revision.number} cannot be restored: " +
                           "; ".join(revision.unrestorable))
    root = Path(revision.directory)
    scratch.mkdir(parents=True, exist_ok=True, mode=0o700)
    with tempfile.TemporaryDirectory(dir=scratch) as tmp:
        results = []
        schemas = Schemas()
        texts = {rel: store.blob(pin_root, sha) for rel, sha in revision.files.items()}
        for i, (rel, text) in enumerate(sorted(texts.items())):
            path = Path(tmp) / f"{i}.yaml"
            path.write_text(text, encoding="utf-8")
            results += load_files([path], schemas, shown_as=str(root / rel))
        state = check_results(root, results, capacities=capacities)
    state.revision = revision.revision or None
    state.sources = texts
    return state

"""Loading a large directory on every core.

Parsing dominates a cold load (libyaml plus PyYAML's Python constructor), and files are
independent, so chunks of files are loaded in worker processes while this process loads the
first chunk. Results travel as plain tuples: pickling 100k dataclasses costs more than it saves.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import threading
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from reconciler.core import registry
from reconciler.core.interner import Interner
from reconciler.core.model import Origin, Resource
from reconciler.load import files as load
from reconciler.load.schema import Schemas

MIN_FILES = 16
MIN_BYTES = 2 * 1024 * 1024


def cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def worth_it(files: list[Path]) -> bool:
    if cpus() < 2 or len(files) < MIN_FILES or os.environ.get("BPFSYNC_JOBS") == "1":
        return False
    total = 0
    for f in files:
        try:
            total += f.stat().st_size
        except OSError:
            continue
        if total >= MIN_BYTES:
            return True
    return False


def _row(r: Resource | None) -> tuple[Any, ...] | None:
    """A resource as a tuple that pickles fast: (kind, its row) for kinds with a row encoding
    (the numerous ones), (kind, the resource without its origin) for the others."""
    if r is None:
        return None
    kind = registry.KINDS[r.kind]
    if kind.row is None:
        return (r.kind, None, dataclasses.replace(r, origin=None))  # type: ignore[type-var]
    return (r.kind, kind.row(r))


def _resource(row: tuple[Any, ...] | None, origin: Origin, share: Interner) -> Resource | None:
    if row is None:
        return None
    kind = registry.KINDS[row[0]]
    if kind.unrow is None:
        return dataclasses.replace(row[2], origin=origin)  # type: ignore[no-any-return]
    return kind.unrow(row[1], origin, share)


def _load_chunk(paths: list[str], read_keys: bool) -> list[tuple[Any, ...]]:
    out = []
    for fr in load.load_files([Path(p) for p in paths], Schemas(), keep_text=False,
                              read_keys=read_keys):
        docs = [(d.origin.index, d.ref, _row(d.resource), d.findings, d.drift, d.confirm)
                for d in fr.docs]
        out.append((fr.file, fr.problems, docs, fr.key_files))
    return out


def _result(encoded: tuple[Any, ...], share: Interner) -> load.FileResult:
    file, problems, docs, key_files = encoded
    results = []
    for index, ref, row, findings, drift, confirm in docs:
        origin = Origin(file, index)
        results.append(load.DocResult(origin, ref, _resource(row, origin, share), findings,
                                      drift, confirm))
    return load.FileResult(file, problems, results, key_files=key_files)


def load_files(files: list[Path], schemas: Schemas, read_keys: bool = True,
               loaded: Callable[[int], None] | None = None) -> list[load.FileResult]:
    """The files, the first chunk here and the others in worker processes; loaded(n) as
    files are done (this process's one by one, a worker's chunk when it returns)."""
    n = cpus()
    size = -(-len(files) // n)
    chunks = [files[i:i + size] for i in range(0, len(files), size)]
    # fork is cheap and safe while this process is single-threaded; a threaded caller (the
    # daemon) gets forkserver instead.
    method = "fork" if threading.active_count() == 1 else "forkserver"
    with ProcessPoolExecutor(len(chunks) - 1, mp_context=multiprocessing.get_context(method)) as pool:
        futures = [pool.submit(_load_chunk, [str(p) for p in chunk], read_keys)
                   for chunk in chunks[1:]]
        results = load.load_files(chunks[0], schemas, read_keys=read_keys, loaded=loaded)
        share = Interner()  # (what each chunk's pickle shared arrives shared within it)
        for future, chunk in zip(futures, chunks[1:], strict=True):
            results.extend(_result(e, share) for e in future.result())
            if loaded is not None:
                loaded(len(chunk))
    return results

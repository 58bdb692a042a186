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
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from reconciler.core.model import Endpoint, Origin, Resource
from reconciler.gue.model import Interface, KeySource, Service, Tunnel
from reconciler.load import directory as load
from reconciler.load.schema import Schemas
from reconciler.load.secrets import Secret
from reconciler.steering.model import Proxy
from reconciler.tproxy.model import TransparentProxy

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
    if isinstance(r, Proxy | TransparentProxy):  # rare: pickled whole
        return ("P", dataclasses.replace(r, origin=None))
    if isinstance(r, Tunnel):
        remote = (r.remote.address, r.remote.port) if r.remote else None
        key = (r.key.value, r.key_source.kind, r.key_source.ref) if (
            r.key is not None and r.key_source is not None) else None
        return ("T", r.name, r.id, r.local.address, r.local.port, remote, key, r.ping_interval_ms,
                r.next_key.value if r.next_key is not None else None)
    if isinstance(r, Interface):
        return ("I", r.name, r.device, r.netns, r.role, r.replies_tunnel, r.ingress, r.egress,
                r.fib_lookup, r.priority)
    if isinstance(r, Service):
        return ("S", r.name, r.group_id, r.service_id, r.protocol, r.proxy.address, r.proxy.port,
                r.backend.address, r.backend.port, r.tunnel, r.key.value, r.key_source.kind,
                r.key_source.ref, r.next_key.value if r.next_key is not None else None)
    return None


def _resource(row: tuple[Any, ...] | None, origin: Origin) -> Resource | None:
    if row is None:
        return None
    if row[0] == "P":
        return dataclasses.replace(row[1], origin=origin)
    if row[0] == "T":
        _, name, tid, laddr, lport, remote, key, ping_ms, nxt = row
        return Tunnel(name, tid, Endpoint(laddr, lport),
                      Endpoint(*remote) if remote else None, origin,
                      Secret(key[0]) if key else None, KeySource(key[1], key[2]) if key else None,
                      ping_ms, Secret(nxt) if nxt is not None else None)
    if row[0] == "I":
        return Interface(*row[1:], origin=origin)
    (_, name, group, sid, proto, paddr, pport, baddr, bport, tunnel, key, kkind, kref, nxt) = row
    return Service(name, group, sid, proto, Endpoint(paddr, pport), Endpoint(baddr, bport), tunnel,
                   Secret(key), KeySource(kkind, kref), origin,
                   Secret(nxt) if nxt is not None else None)


def _load_chunk(paths: list[str], read_keys: bool) -> list[tuple[Any, ...]]:
    out = []
    for fr in load.load_files([Path(p) for p in paths], Schemas(), keep_text=False,
                              read_keys=read_keys):
        docs = [(d.origin.index, d.ref, _row(d.resource), d.findings, d.drift)
                for d in fr.docs]
        out.append((fr.file, fr.problems, docs, fr.key_files))
    return out


def _result(encoded: tuple[Any, ...]) -> load.FileResult:
    file, problems, docs, key_files = encoded
    results = []
    for index, ref, row, findings, drift in docs:
        origin = Origin(file, index)
        results.append(load.DocResult(origin, ref, _resource(row, origin), findings, drift))
    return load.FileResult(file, problems, results, key_files=key_files)


def load_files(files: list[Path], schemas: Schemas, read_keys: bool = True) -> list[load.FileResult]:
    n = cpus()
    size = -(-len(files) // n)
    chunks = [files[i:i + size] for i in range(0, len(files), size)]
    # fork is cheap and safe while this process is single-threaded; a threaded caller (the
    # daemon) gets forkserver instead.
    method = "fork" if threading.active_count() == 1 else "forkserver"
    with ProcessPoolExecutor(len(chunks) - 1, mp_context=multiprocessing.get_context(method)) as pool:
        futures = [pool.submit(_load_chunk, [str(p) for p in chunk], read_keys)
                   for chunk in chunks[1:]]
        results = load.load_files(chunks[0], schemas, read_keys=read_keys)
        for future in futures:
            results.extend(_result(e) for e in future.result())
    return results

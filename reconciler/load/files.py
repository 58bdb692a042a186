"""Loading files one by one: each read, parsed, schema-checked and built into resources,
with its problems; cross-document checks come later (load/directory.py). What a worker
process of the parallel loader runs."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from reconciler.core import registry
from reconciler.core.drift import POLICIES
from reconciler.core.errors import Problem, shown
from reconciler.core.findings import Finding
from reconciler.core.model import Origin, Resource
from reconciler.load.build import KeyCache, Spec
from reconciler.load.schema import MAX_EXPLAINED, Schemas
from reconciler.load.source import Document, parse, read

DRIFT_ANNOTATION = "bpfsync.dev/drift"
CONFIRM_ANNOTATION = "bpfsync.dev/confirm-within"  # seconds (the daemon's confirm-or-revert)
ANNOTATION_PREFIX = "bpfsync.dev/"
ANNOTATIONS = (DRIFT_ANNOTATION, CONFIRM_ANNOTATION)  # every bpfsync.dev/ annotation read
MAX_CONFIRM_WITHIN = 86400


def _annotation_problems(annotations: dict[str, str], origin: Origin,
                         ref: str | None) -> list[Finding]:
    """bpfsync's own prefix is bpfsync's: an annotation under it that bpfsync does not read
    is a typo (a mistyped drift policy would otherwise be ignored without a word)."""
    out = []
    for key in annotations:
        if key.startswith(ANNOTATION_PREFIX) and key not in ANNOTATIONS:
            near = difflib.get_close_matches(key, ANNOTATIONS, n=1, cutoff=0.6)
            hint = f"; did you mean {near[0]}?" if near else (
                f" (bpfsync reads {', '.join(ANNOTATIONS)})")
            out.append(Finding(origin, ("metadata", "annotations", key),
                               f"unknown annotation {shown(key)}{hint}", ref, at_key=True))
    return out


def _build(doc: Document, origin: Origin, findings: list[Finding],
           keys: KeyCache) -> Resource | None:
    """Typed resource from a schema-valid document, by its kind's build (the schema admits
    only registered kinds); field problems go to findings."""
    spec = Spec(doc, origin, findings, keys)
    return registry.KINDS[spec.kind].build(spec)


@dataclass(slots=True)
class DocResult:
    origin: Origin
    ref: str | None  # "Kind/name" when the document has a readable kind and name
    resource: Resource | None  # None: invalid
    findings: list[Finding]
    drift: str | None = None  # the resource's drift policy annotation, if any
    confirm: float | None = None  # its bpfsync.dev/confirm-within annotation, if any


@dataclass(slots=True)
class FileResult:
    file: str
    problems: list[Problem]  # read and parse problems, already located
    docs: list[DocResult]
    text: str | None = None  # kept when loading in this process, for locating findings
    key_files: tuple[str, ...] = ()  # key files its Services read (the cache watches them)


def check_document(doc: Document, schemas: Schemas, keys: KeyCache,
                   explain: bool = True) -> DocResult:
    """Schema-check and build one document; cross-document checks come later.
    explain=False: an invalid document is reported as one error, not field by field."""
    origin = Origin(doc.file, doc.index)
    data = doc.data
    name = None
    if isinstance(data, dict) and isinstance(data.get("metadata"), dict):
        name = data["metadata"].get("name")
    ref = (f"{data['kind']}/{name}" if isinstance(data, dict) and isinstance(name, str)
           and isinstance(data.get("kind"), str) else None)
    errors = schemas.validate(data, explain)
    if errors:
        return DocResult(origin, ref, None, [
            Finding(origin, e.path, e.message, ref, at_key=e.at_key) for e in errors])
    annotations = data["metadata"].get("annotations", {})
    findings = _annotation_problems(annotations, origin, ref)
    drift = annotations.get(DRIFT_ANNOTATION)
    if drift is not None and drift not in POLICIES:
        findings.append(Finding(origin, ("metadata", "annotations", DRIFT_ANNOTATION),
                                f"{shown(drift)} is not a drift policy; use one of "
                                f"{', '.join(POLICIES)}", ref))
    confirm = _confirm_within(annotations.get(CONFIRM_ANNOTATION), origin, ref, findings)
    return DocResult(origin, ref, _build(doc, origin, findings, keys), findings, drift,
                     confirm)


def _confirm_within(text: str | None, origin: Origin, ref: str | None,
                    findings: list[Finding]) -> float | None:
    """The seconds of a bpfsync.dev/confirm-within annotation (1 to a day), or a finding."""
    if text is None:
        return None
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not 1 <= seconds <= MAX_CONFIRM_WITHIN:
        findings.append(Finding(origin, ("metadata", "annotations", CONFIRM_ANNOTATION),
                                f"{shown(text)} is not a number of seconds from 1 to "
                                f"{MAX_CONFIRM_WITHIN}", ref))
        return None
    return seconds


def load_files(paths: Sequence[Path], schemas: Schemas, keep_text: bool = True,
               shown_as: str | None = None, read_keys: bool = True,
               loaded: Callable[[int], None] | None = None) -> list[FileResult]:
    """shown_as: the name problems and relative key files use instead of the path (a
    candidate file checked in place of the file it will become). read_keys=False: keyFrom
    files and variables are not read (validation where the hosts' secrets are not).
    loaded(1) is called after each file (progress)."""
    keys = KeyCache(read_keys)
    out = []
    explained = 0  # invalid documents explained so far (schema.MAX_EXPLAINED at most)
    for path in paths:
        source, problem = read(path, shown_as)
        if problem:
            out.append(FileResult(shown_as or str(path), [problem], []))
            continue
        assert source is not None
        docs, problems = parse(source)
        keys.touched = set()
        checked = []
        for d in docs:
            result = check_document(d, schemas, keys, explained < MAX_EXPLAINED)
            explained += result.resource is None
            checked.append(result)
        out.append(FileResult(source.display, problems, checked,
                              source.text if keep_text else None,
                              tuple(sorted(p for kind, p in keys.touched if kind == "file"))))
        if loaded is not None:
            loaded(1)
    return out



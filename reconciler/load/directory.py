"""Desired state from a directory: every file parsed, validated, cross-checked, keys resolved.

All problems of all files are collected; any error makes the whole directory invalid (all or
nothing). Line numbers are looked up only for the problems that are reported.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from reconciler.core import registry
from reconciler.core.drift import POLICIES
from reconciler.core.errors import InvalidDesiredState, Location, Problem, Severity, shown
from reconciler.core.findings import Finding
from reconciler.core.model import Origin, Resource
from reconciler.core.state import DesiredState
from reconciler.load import parallel
from reconciler.load.build import KeyCache, Spec
from reconciler.load.filecache import FileCache
from reconciler.load.locate import PathItem, locate
from reconciler.load.schema import MAX_EXPLAINED, Schemas
from reconciler.load.source import Document, parse, read, scan

MAX_WARNINGS_LOCATED = 20
MAX_LOCATED = 100  # errors given a line and column; the rest are counted
DRIFT_ANNOTATION = "bpfsync.dev/drift"


class _Locator:
    def __init__(self) -> None:
        self.texts: dict[str, str] = {}

    def location(self, origin: Origin | None, path: tuple[PathItem, ...], at_key: bool) -> Location:
        if origin is None:
            return Location("<desired state>")
        text = self.texts.get(origin.file)
        if text is None:  # loaded in a worker process: read it again, only to locate
            try:
                text = self.texts[origin.file] = Path(origin.file).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError):
                return Location(origin.file)
        return locate(origin.file, text, origin.index, path, key=at_key)

    def problem(self, f: Finding) -> Problem:
        return Problem(
            self.location(f.origin, f.path, f.at_key), f.message, f.resource,
            ".".join(map(str, f.path)) or None, f.severity,
            tuple(self.location(o, p, False) for o, p in f.related))


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
    findings: list[Finding] = []
    drift = data["metadata"].get("annotations", {}).get(DRIFT_ANNOTATION)
    if drift is not None and drift not in POLICIES:
        findings.append(Finding(origin, ("metadata", "annotations", DRIFT_ANNOTATION),
                                f"{shown(drift)} is not a drift policy; use one of "
                                f"{', '.join(POLICIES)}", ref))
    return DocResult(origin, ref, _build(doc, origin, findings, keys), findings, drift)


def load_files(paths: Sequence[Path], schemas: Schemas, keep_text: bool = True,
               shown_as: str | None = None, read_keys: bool = True) -> list[FileResult]:
    """shown_as: the name problems and relative key files use instead of the path (a
    candidate file checked in place of the file it will become). read_keys=False: keyFrom
    files and variables are not read (validation where the hosts' secrets are not)."""
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
    return out


def assemble(results: Iterable[FileResult]) -> tuple[DesiredState, set[str], list[Finding]]:
    """The desired state from per-file results, in file order: a resource defined twice is
    reported at its second place. Names of invalid resources are returned so that
    cross-checks do not pile consequential errors (a dangling reference) on top."""
    state = DesiredState()
    invalid: set[str] = set()
    first_seen: dict[str, Origin] = {}
    findings: list[Finding] = []
    for file in results:
        for doc in file.docs:
            findings.extend(doc.findings)
            ref = doc.ref
            if ref is not None:
                if ref in first_seen:
                    findings.append(Finding(
                        doc.origin, ("metadata", "name"), f"{ref} is defined twice", ref,
                        related=((first_seen[ref], ("metadata", "name")),)))
                    continue
                first_seen[ref] = doc.origin
            if doc.resource is None:
                if ref:
                    invalid.add(ref)
                continue
            if doc.drift is not None and ref is not None:
                state.drift[ref] = doc.drift
            state.add(doc.resource)
    return state, invalid, findings


def cross_check(state: DesiredState, invalid: set[str]) -> list[Finding]:
    """Every data path's checks across resources (see Capability.cross_check)."""
    return [f for capability in registry.CAPABILITIES for f in capability.cross_check(state, invalid)]


def load_paths(files: list[Path], schemas: Schemas, read_keys: bool = True) -> list[FileResult]:
    return (parallel.load_files(files, schemas, read_keys) if parallel.worth_it(files)
            else load_files(files, schemas, read_keys=read_keys))


def load_directory(root: Path, schemas: Schemas | None = None,
                   cache: FileCache | None = None, read_keys: bool = True) -> DesiredState:
    """Load and check a whole directory; raises InvalidDesiredState listing every error.
    With a cache (the daemon's), only files whose content changed are parsed again;
    cross-checks always run over the whole directory."""
    schemas = schemas or Schemas()
    files, scan_problems = scan(root)
    results = (cache.load(files, lambda todo: load_paths(todo, schemas, read_keys)) if cache
               else load_paths(files, schemas, read_keys))
    return check_results(root, results, scan_problems)


def check_results(root: Path, results: list[FileResult],
                  problems: Sequence[Problem] = ()) -> DesiredState:
    """The desired state of a directory's per-file results (in file order): cross-checks,
    problems located; raises InvalidDesiredState listing every error."""
    locator = _Locator()
    problems = list(problems)
    for r in results:
        problems.extend(r.problems)
        if r.text is not None:
            locator.texts[r.file] = r.text
    state, invalid, findings = assemble(results)
    state.files = len(results)
    findings.extend(cross_check(state, invalid))
    error_findings = [f for f in findings if f.severity is Severity.ERROR]
    errors = problems + [locator.problem(f) for f in error_findings[:MAX_LOCATED]]
    if len(error_findings) > MAX_LOCATED:  # locating costs a second parse of each file
        errors.append(Problem(Location(str(root)), f"... and {len(error_findings) - MAX_LOCATED:,}"
                              " more errors, not located (fix the ones above first)"))
    warnings = [f for f in findings if f.severity is Severity.WARNING]
    state.warnings = [locator.problem(f) for f in warnings[:MAX_WARNINGS_LOCATED]]
    if len(warnings) > MAX_WARNINGS_LOCATED:
        state.warnings.append(Problem(
            Location(str(root)), f"... and {len(warnings) - MAX_WARNINGS_LOCATED} more warnings",
            severity=Severity.WARNING))
    if errors:
        raise InvalidDesiredState(errors + state.warnings)
    return state

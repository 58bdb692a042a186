"""One file checked as it would be in a desired-state directory, before it is put there.

Ansible's `validate:` hands over a temp file with a random name: it is checked together with
the rest of the directory (cross-references, duplicate names and ids), in place of the file
it will become. Only problems the candidate causes or takes part in count against it; a
directory that is already broken elsewhere does not block a good file (the daemon keeps the
last good state until that is fixed, and says so).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from reconciler.core.capacity import Capacities
from reconciler.core.errors import InvalidDesiredState, Location, Problem, Severity
from reconciler.core.state import DesiredState
from reconciler.load.directory import check_results, load_paths
from reconciler.load.files import FileResult, load_files
from reconciler.load.scan import YAML_SUFFIXES, is_ignored, scan
from reconciler.load.schema import Schemas


@dataclass
class CandidateResult:
    destination: Path | None  # the file it becomes; None: a new file, name unknown
    replaces: bool  # a file of that name is there now
    guessed: bool  # destination inferred from the resources both declare (no --as)
    state: DesiredState | None  # the directory with the candidate, when wholly valid
    errors: list[Problem] = field(default_factory=list)  # the candidate's (it must not land)
    existing: list[Problem] = field(default_factory=list)  # the directory's own, without it
    warnings: list[Problem] = field(default_factory=list)


def _refs(result: FileResult) -> set[str]:
    return {d.ref for d in result.docs if d.ref}


def _destination_problem(directory: Path, name: str) -> tuple[Path | None, Problem | None]:
    dest = Path(name) if Path(name).is_absolute() else directory / name
    where = Location(str(dest))
    try:
        inside = dest.resolve().is_relative_to(directory.resolve())
    except OSError:
        inside = False
    if not inside:
        return None, Problem(where, f"--as {name}: not inside {directory}")
    ignored = [part for part in dest.relative_to(directory).parts if is_ignored(part)]
    if ignored or not dest.name.endswith(YAML_SUFFIXES):
        return None, Problem(where, "bpfsync would not read this file (only *.yaml and *.yml, "
                                    "no dotfiles or editor/backup names): choose another name")
    stem = dest.name.rsplit(".", 1)[0]
    twins = [dest.with_name(stem + s) for s in YAML_SUFFIXES if stem + s != dest.name]
    for twin in twins:
        if twin.exists():
            return None, Problem(where, f"{twin.name} exists beside it; keep one",
                                 related=(Location(str(twin)),))
    return dest, None


def _involves(p: Problem, shown: str) -> bool:
    return p.location.file == shown or any(r.file == shown for r in p.related)


def check_candidate(directory: Path, candidate: Path, as_name: str | None = None,
                    schemas: Schemas | None = None, read_keys: bool = True,
                    capacities: Capacities | None = None) -> CandidateResult:
    schemas = schemas or Schemas()
    files, scan_problems = scan(directory)
    if as_name is not None:
        dest, problem = _destination_problem(directory, as_name)
        if problem is not None:
            return CandidateResult(None, False, False, None, [problem])
    else:
        dest = next((f for f in files if f.resolve() == candidate.resolve()), None)
    existing = load_paths(files, schemas, read_keys)
    guessed = False
    if dest is None and as_name is None:  # the file it replaces: the one sharing most names
        refs = _refs(load_files([candidate], schemas, read_keys=read_keys)[0])
        overlap = max(existing, key=lambda r: len(_refs(r) & refs), default=None)
        if overlap is not None and _refs(overlap) & refs:
            dest, guessed = Path(overlap.file), True
    shown = str(dest) if dest is not None else str(candidate)
    mine = load_files([candidate], schemas, shown_as=shown, read_keys=read_keys)[0]
    others = [r for r in existing if r.file != shown]
    replaces = len(others) != len(existing)
    results = sorted([*others, mine], key=lambda r: Path(r.file).parts)
    try:
        state = check_results(directory, results, scan_problems, capacities)
        return CandidateResult(dest, replaces, guessed, state, warnings=state.warnings)
    except InvalidDesiredState as exc:
        errors = [p for p in exc.problems if p.severity is Severity.ERROR]
        warnings = [p for p in exc.problems if p.severity is Severity.WARNING]
    try:
        check_results(directory, existing, scan_problems, capacities)
        before: set[str] = set()
    except InvalidDesiredState as exc:
        before = {str(p) for p in exc.problems if p.location.file != shown}
    caused = [p for p in errors if _involves(p, shown) or str(p) not in before]
    return CandidateResult(dest, replaces, guessed, None, caused,
                           [p for p in errors if p not in caused], warnings)

"""Desired state from a directory: every file parsed, validated, cross-checked, keys resolved.

All problems of all files are collected; any error makes the whole directory invalid (all or
nothing). Line numbers are looked up only for the problems that are reported.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from reconciler.core import registry
from reconciler.core.capacity import NAMES_GROUP, OTHER_RESOURCES, Capacities
from reconciler.core.checks import order
from reconciler.core.errors import InvalidDesiredState, Location, Problem, Severity
from reconciler.core.findings import Finding
from reconciler.core.model import Origin
from reconciler.core.progress import QUIET, Progress
from reconciler.core.state import DesiredState
from reconciler.load import parallel, prescan
from reconciler.load.assembly import Assembly, assemble
from reconciler.load.filecache import FileCache
from reconciler.load.files import FileResult, load_files
from reconciler.load.locate import PathItem, locate
from reconciler.load.scan import scan
from reconciler.load.schema import Schemas
from reconciler.names.tables import NAMES

MAX_WARNINGS_LOCATED = 20
MAX_LOCATED = 100  # errors given a line and column; the rest are counted


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


def cross_check(state: DesiredState, invalid: set[str],
                capacities: Capacities | None = None) -> list[Finding]:
    """Every data path's checks across resources (see Capability.cross_check), and how many
    resources of each kind with a capacity group the pin root's tables hold."""
    out = [f for capability in registry.CAPABILITIES for f in capability.cross_check(state, invalid)]
    return out + over_capacity(state, capacities or registry.default_capacities())


def over_capacity(state: DesiredState, capacities: Capacities) -> list[Finding]:
    """Resources past their tables' capacities: each capacity group's, and the names table's
    (one entry per resource of every kind; its size follows the groups', core/capacity.py)."""
    out = []
    limit = capacities.sizes.get(NAMES_GROUP, NAMES.max_entries)
    named = [k for k in registry.KINDS.values() if k.kernel_ref is not None]
    if sum(state.count(k.name) for k in named) > limit:
        every = sorted((r for k in named for r in state.resources.get(k.name, {}).values()),
                       key=order)
        beyond = every[limit]
        out.append(Finding(beyond.origin, (), f"{len(every):,} resources exceed the names "
                           f"table's capacity of {limit:,} (one entry per resource of every "
                           f"kind, sized when the pin root was made: the Service and Tunnel "
                           f"capacities together plus {OTHER_RESOURCES:,}, at least "
                           f"{NAMES.max_entries:,})", beyond.ref))
    for kind in registry.KINDS.values():
        limit = capacities.sizes.get(kind.capacity) if kind.capacity else None
        if limit is not None and state.count(kind.name) > limit:
            resources = state.of(kind.model).values()  # sorted only when over: 100k cost
            beyond = sorted(resources, key=order)[limit]
            out.append(Finding(beyond.origin, (), f"{len(resources):,} {kind.name}s exceed the "
                               f"table capacity of {limit:,} ({kind.capacity}; --capacity "
                               f"{kind.capacity}=N at the first apply sizes a pin root)",
                               beyond.ref))
    return out


def load_paths(files: list[Path], schemas: Schemas, read_keys: bool = True,
               loaded: Callable[[int], None] | None = None) -> list[FileResult]:
    return (parallel.load_files(files, schemas, read_keys, loaded) if parallel.worth_it(files)
            else load_files(files, schemas, read_keys=read_keys, loaded=loaded))


def load_directory(root: Path, schemas: Schemas | None = None,
                   cache: FileCache | None = None, read_keys: bool = True,
                   progress: Progress = QUIET,
                   capacities: Capacities | None = None) -> DesiredState:
    """Load and check a whole directory; raises InvalidDesiredState listing every error.
    With a cache (the daemon's), only files whose content changed are parsed again;
    cross-checks always run over the whole directory. capacities: the pin root's
    (engine.capacities), else the defaults."""
    schemas = schemas or Schemas()
    capacities = capacities or registry.default_capacities()
    progress.phase(f"reading {root}")
    files, scan_problems = scan(root)
    if cache is None:  # (the daemon's cache parses only what changed: nothing to save there)
        over = prescan.over_capacity(files, {
            k.name: capacities.sizes[k.capacity] for k in registry.KINDS.values()
            if k.capacity in capacities.sizes})
        if over:
            raise InvalidDesiredState([*scan_problems, *over])
    progress.phase(f"loading {len(files):,} files", len(files))
    results = (cache.load(files, lambda todo: load_paths(todo, schemas, read_keys)) if cache
               else load_paths(files, schemas, read_keys, progress.advance))
    progress.phase(f"checking {sum(len(r.docs) for r in results):,} resources")
    try:
        state = check_results(root, results, scan_problems, capacities,
                              cache.assembly if cache else None)
    finally:
        progress.end()
    if cache is None:  # counts kept for a state assembled by difference from this one (the
        state.derived.clear()  # daemon's): none will be; 1M Services' counts are 220 MB
    return state


def check_results(root: Path, results: list[FileResult],
                  problems: Sequence[Problem] = (),
                  capacities: Capacities | None = None,
                  assembly: Assembly | None = None) -> DesiredState:
    """The desired state of a directory's per-file results (in file order): cross-checks,
    problems located; raises InvalidDesiredState listing every error. assembly: the last
    assembly kept (the daemon's), to assemble by difference."""
    locator = _Locator()
    problems = list(problems)
    for r in results:
        problems.extend(r.problems)
        if r.text is not None:
            locator.texts[r.file] = r.text
    state, invalid, findings = assembly.assemble(results) if assembly else assemble(results)
    state.files = len(results)
    state.directory = str(root)
    findings.extend(cross_check(state, invalid, capacities))
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

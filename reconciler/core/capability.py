"""What a data path contributes to the control plane: one Capability per package
(reconciler/gue, steering, tproxy, intercept), listed by core/registry.py. Everything that
iterates kinds or tables (loading, checks, compiling, plans, get, --keep, counts) goes
through the registry, so adding a data path is its own folder plus one registry line.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from reconciler.core.tables import Codec, MapSpec

if TYPE_CHECKING:
    from pathlib import Path

    from reconciler.core.attachments import Attachments
    from reconciler.core.desired import CompileContext, DesiredTables
    from reconciler.core.filters import Wanted
    from reconciler.core.findings import Finding
    from reconciler.core.interner import Interner
    from reconciler.core.model import Resource
    from reconciler.core.state import DesiredState
    from reconciler.kernel.maps import PinnedTables
    from reconciler.kernel.programs import Compiler
    from reconciler.load.build import Spec

Build = Callable[["Spec"], "Resource | None"]
Row = Callable[["Resource"], tuple[Any, ...]]
Unrow = Callable[[tuple[Any, ...], Any, "Interner"], "Resource"]
# observed entries (and a directory to export keys to) -> resource documents, for `get`
Inventory = Callable[[Mapping[str, Mapping[bytes, bytes]], Any], list[dict[str, Any]]]


@dataclass(frozen=True)
class Kind:
    """One resource kind: its name (the YAML `kind`), its typed model, and how a schema-valid
    document becomes one (build reports field problems through the Spec and returns None
    when there were any). row/unrow: a compact encoding for the parallel loader (plain
    tuples pickle far faster than dataclasses; unrow shares repeated fields through the
    load's Interner, as build does through Spec.share); None: pickled whole (kinds that are few).
    inventory: the kind as `get` shows it from the kernel; None: its entries grouped by
    owner (reconciler/inventory.py). programs: its resources need compiled BPF programs
    (an apply checks the compiler is there before it creates anything). kernel_ref: the
    "Kind/..." its entries are named by when nothing names them (what its codecs' owners
    derive from ids); its resources then get a names table entry (reconciler/names), which
    puts the declared name back; None: a kind without entries. capacity: the capacity group
    (core/capacity.py) whose size bounds how many resources of the kind a pin root holds,
    checked before the directory is parsed (load/prescan.py) and after (load/directory.py);
    None: no such bound by count."""

    name: str
    plural: str  # as counts and `get` say it: "tunnels", "transparent proxies"
    model: type
    build: Build
    row: Row | None = None
    unrow: Unrow | None = None
    inventory: Inventory | None = None
    programs: bool = False
    kernel_ref: Callable[[Any], str] | None = None
    capacity: str | None = None


@dataclass(frozen=True)
class TcPrograms:
    """A data path's TC programs, planned with every other data path's by one planner
    (core/filters.py). wanted(state): the hooks its resources want, each with a
    configuration of type config; compiled(compiler, pin root, configuration): its BCC
    compilation, whose function config.function(direction) runs at a hook (the TC part
    tags and loads it). kind and functions: whose a leftover filter is, told by the function
    its name carries."""

    kind: str
    config: type
    functions: frozenset[str]
    wanted: Callable[[DesiredState], list[Wanted]]
    compiled: Callable[[Compiler, Path, Any], Any]


@dataclass(frozen=True)
class StatusContext:
    """What a data path's part of the daemon's status is made of: the last good state (None
    before the first), the data path's last report ({} when none) and the pinned maps, read
    through read(reader) (which raises BpfsyncError or OSError when they cannot be opened)."""

    state: DesiredState | None
    pin_root: Path
    worker: Mapping[str, Any]
    read: Callable[[Callable[[PinnedTables], Any]], Any]

    def declared(self, model: type) -> dict[str, Any]:
        return self.state.of(model) if self.state is not None else {}


@dataclass(frozen=True)
class Capability:
    """A data path as the control plane sees it.

    Contract of each part:
    - kinds: the resource kinds it owns (their schema is schema/<kind lowercased>.json).
    - entries: its pinned tables of entries (read and diffed; owned ones written and pruned),
      maps: the others it creates (counters, data-path state), created_by_bcc: maps BCC
      creates at the first compilation (checked, never created by open_tables).
    - upserts / deletes: its owned tables in the order entries are written / deleted. Across
      data paths, upserts run in registry order and deletes in reverse registry order.
    - codecs: how each of its tables reads back (core/tables.Codec). summarized: tables
      whose entries are a product (destinations x ports: a port range is thousands of
      entries), of which a text diff shows a few per resource.
    - cross_check(state, invalid): problems across resources that a schema cannot express;
      invalid holds the refs of resources that failed on their own (no consequential errors).
    - compile(out, state, context): the entries its resources want, put into out; pure.
    - facts(state, pin root, create): what this host holds that its entries and attachments
      depend on (e.g. cgroup ids), read before compiling; with create (apply, not diff),
      what must exist first is made. The engine hands it back by capability name.
    - tc: its TC programs (planned with the others'); attachments: its other attachment
      part (core/attachments.py: links, cgroup links, host plumbing), in registry order.
    - destroy(pin root): remove what it made on the host for the pin root outside it (e.g.
      a cgroup), once every entry and attachment is gone; what it removed.
    - status(context): its sections of the daemon's status document (key -> value); the
      kernel is read through context.read, and a section says what it could not read
      rather than failing the document; status_lines(document): those sections as
      `bpfsync status` prints them (indented lines).
    """

    name: str
    kinds: tuple[Kind, ...]
    entries: tuple[MapSpec, ...]
    upserts: tuple[MapSpec, ...]
    deletes: tuple[MapSpec, ...]
    codecs: Mapping[str, Codec]
    cross_check: Callable[[DesiredState, set[str]], list[Finding]]
    compile: Callable[[DesiredTables, DesiredState, CompileContext], None]
    maps: tuple[MapSpec, ...] = ()
    created_by_bcc: tuple[MapSpec, ...] = field(default=())
    summarized: tuple[MapSpec, ...] = ()
    status: Callable[[StatusContext], dict[str, Any]] | None = None
    status_lines: Callable[[Mapping[str, Any]], list[str]] | None = None
    facts: Callable[[DesiredState, Path, bool], Any] | None = None
    tc: TcPrograms | None = None
    attachments: Attachments | None = None
    destroy: Callable[[Path], list[str]] | None = None

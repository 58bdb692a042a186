"""Table capacities per pin root (pure): the tables of a sized group (every Service table,
every Tunnel table) hold as many entries as the group's capacity, chosen when the first
apply creates them (`--capacity services=N`) and read back from the pinned maps ever after.

A pinned map cannot be resized, so the kernel is the truth: a group whose maps exist has
their size, whatever the defaults say; asking another size for it is refused with what to
do instead, before anything is created. A group's members that disagree (a map created by
hand) are refused the same way.

One group is derived, not asked for: the names table (NAMES_GROUP) holds one entry per
resource of every kind, so a new one gets room for every other group's capacity together
plus OTHER_RESOURCES for the kinds without a group (Proxies, Intercepts, ...), and never
less than its default (with the default sizes the two agree: 131,072 + 65,536 + 65,536).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

from reconciler.core.errors import BpfsyncError, KernelStateError
from reconciler.core.tables import MapSpec

MIN_CAPACITY = 1024
MAX_CAPACITY = 1 << 24  # 16,777,216 entries: some GiB of kernel memory per table already
NAMES_GROUP = "names"
OTHER_RESOURCES = 65536


class CapacityConflict(KernelStateError):
    """The pin root's tables have another size than asked, or disagree among themselves."""


@dataclass(frozen=True)
class Capacities:
    """Entries per sized group (the groups of the specs it was made for)."""

    sizes: Mapping[str, int]

    def spec(self, s: MapSpec) -> MapSpec:
        """s with its group's capacity (s itself when it is not sized)."""
        if s.sized_by is None or self.sizes.get(s.sized_by, s.max_entries) == s.max_entries:
            return s
        return replace(s, max_entries=self.sizes[s.sized_by])

    def of(self, group: str) -> int:
        return self.sizes[group]


def defaults(specs: Iterable[MapSpec]) -> dict[str, int]:
    """Each sized group's default capacity: its specs' max_entries (they agree)."""
    return {s.sized_by: s.max_entries for s in specs if s.sized_by is not None}


def parse(text: str, groups: Iterable[str]) -> dict[str, int]:
    """`services=1048576,tunnels=131072` as {group: entries}; BpfsyncError naming what is
    wrong (an unknown group, the derived names group, a size out of bounds)."""
    known = sorted(set(groups) - {NAMES_GROUP})
    out: dict[str, int] = {}
    for item in filter(None, (x.strip() for x in text.split(","))):
        group, sep, size = item.partition("=")
        if not sep or group not in known:
            raise BpfsyncError(f"--capacity {item[:40]!r}: expected GROUP=ENTRIES with GROUP "
                               f"one of {', '.join(known)}")
        if not size.isdigit() or not MIN_CAPACITY <= int(size) <= MAX_CAPACITY:
            raise BpfsyncError(f"--capacity {group}={size[:20]}: entries must be a number from "
                               f"{MIN_CAPACITY:,} to {MAX_CAPACITY:,}")
        out[group] = int(size)
    return out


def settle(default: Mapping[str, int], requested: Mapping[str, int],
           pinned: Mapping[str, Mapping[str, int]]) -> Capacities:
    """The capacities a pin root has: per group, the size of its pinned maps (pinned: group
    -> map name -> max_entries; sizes outside the settings' bounds are not taken), else the
    requested size, else the default. CapacityConflict when pinned maps disagree or a
    request differs from them."""
    sizes = dict(default)
    sizes.update(requested)
    problems = []
    for group, every in pinned.items():
        # a size no capacity setting gives is no setting: the map is reported as mismatched
        maps = {name: n for name, n in every.items() if MIN_CAPACITY <= n <= MAX_CAPACITY}
        found = set(maps.values())
        if len(found) > 1:
            shown = ", ".join(f"{name} {n:,}" for name, n in sorted(maps.items()))
            problems.append(f"the {group} tables were created with different sizes ({shown}); "
                            f"remove the pin root's {group} tables (`bpfsync destroy`) and apply "
                            f"again")
        elif found:
            (have,) = found
            if group in requested and requested[group] != have:
                problems.append(
                    f"--capacity {group}={requested[group]:,}: the {group} tables of this pin "
                    f"root were created for {have:,} entries, and a pinned map cannot be "
                    f"resized; leave --capacity out to keep them, or `bpfsync destroy` the pin "
                    f"root and apply again with the new capacity")
            sizes[group] = have
    if NAMES_GROUP in sizes:
        _derive_names(sizes, default, requested, pinned.get(NAMES_GROUP, {}), problems)
    if problems:
        raise CapacityConflict("\n".join(problems))
    return Capacities(sizes)


def _derive_names(sizes: dict[str, int], default: Mapping[str, int],
                  requested: Mapping[str, int], pinned: Mapping[str, int],
                  problems: list[str]) -> None:
    """The names table's size: the pinned one when it exists (refused when a request needs
    more room than it has), else every other group's together plus OTHER_RESOURCES, at
    least the default."""
    want = min(MAX_CAPACITY, max(default[NAMES_GROUP], OTHER_RESOURCES + sum(
        n for group, n in sizes.items() if group != NAMES_GROUP)))
    have = sizes[NAMES_GROUP] if pinned else want
    if pinned and requested and want > have:
        asked = ",".join(f"{g}={n}" for g, n in sorted(requested.items()))
        problems.append(
            f"--capacity {asked}: the names table of this pin root was created for {have:,} "
            f"entries (one per resource of every kind) and these capacities need {want:,}; a "
            f"pinned map cannot be resized: `bpfsync destroy` the pin root and apply again "
            f"with the new capacity")
    sizes[NAMES_GROUP] = have

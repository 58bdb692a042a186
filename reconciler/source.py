"""Finding and parsing the YAML files of a desired-state directory.

Parsing uses libyaml's C loader without line marks: locating a problem costs a second, slower
pass over one file and is paid only when there is a problem (see locate.py).
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from reconciler.errors import Location, Problem

YAML_SUFFIXES = (".yaml", ".yml")
MAX_FILE_BYTES = 32 * 1024 * 1024
TEMP_PATTERNS = ("~", ".swp", ".swo", ".swx", ".tmp", ".bak", ".orig", ".rej")


@dataclass(frozen=True, slots=True)
class Document:
    """One YAML document of one file, parsed but not yet validated."""

    file: str  # path as shown to the user
    index: int  # position of the document in its file, 0-based
    data: Any


@dataclass(frozen=True, slots=True)
class SourceFile:
    path: Path
    display: str
    text: str


def is_ignored(name: str) -> bool:
    """Dotfiles (.git, .#lock, .ansible_tmp*, vim's .x.swp) and editor/backup leftovers."""
    return name.startswith(".") or name.endswith(TEMP_PATTERNS) or name.startswith("#")


def scan(root: Path) -> tuple[list[Path], list[Problem]]:
    """All YAML files under root, sorted; follows directory symlinks but detects loops."""
    problems: list[Problem] = []
    files: list[Path] = []
    if not root.is_dir():
        return [], [Problem(Location(str(root)), "not a directory")]
    seen_dirs: set[tuple[int, int]] = set()

    def walk(directory: Path) -> None:
        try:
            st = directory.stat()
        except OSError as exc:
            problems.append(Problem(Location(str(directory)), f"cannot read: {exc.strerror}"))
            return
        ident = (st.st_dev, st.st_ino)
        if ident in seen_dirs:
            problems.append(Problem(Location(str(directory)), "symlink loop: directory seen before"))
            return
        seen_dirs.add(ident)
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError as exc:
            problems.append(Problem(Location(str(directory)), f"cannot list: {exc.strerror}"))
            return
        stems: dict[str, Path] = {}
        for entry in entries:
            if is_ignored(entry.name):
                continue
            path = Path(entry.path)
            try:
                mode = os.stat(path).st_mode
            except OSError as exc:
                if entry.name.endswith(YAML_SUFFIXES) or entry.is_symlink():
                    problems.append(Problem(Location(str(path)), f"cannot read: {exc.strerror}"))
                continue
            if stat.S_ISDIR(mode):
                walk(path)
            elif stat.S_ISREG(mode) and entry.name.endswith(YAML_SUFFIXES):
                stem = entry.name.rsplit(".", 1)[0]
                if stem in stems:
                    problems.append(Problem(
                        Location(str(path)),
                        f"both {stems[stem].name} and {entry.name} exist; keep one",
                        related=(Location(str(stems[stem])),),
                    ))
                    continue
                stems[stem] = path
                files.append(path)

    walk(root)
    return files, problems


def read(path: Path, shown_as: str | None = None) -> tuple[SourceFile | None, Problem | None]:
    display = shown_as or str(path)
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            return None, Problem(Location(display), f"file is {size} bytes; limit is {MAX_FILE_BYTES}")
        raw = path.read_bytes()
    except OSError as exc:
        return None, Problem(Location(display), f"cannot read: {exc.strerror}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        return None, Problem(Location(display, line, column), "not UTF-8 text (binary file?)")
    if "\x00" in text:
        line = text.count("\n", 0, text.index("\x00")) + 1
        return None, Problem(Location(display, line), "contains NUL bytes (binary file?)")
    return SourceFile(path, display, text), None


class _Loader(yaml.CSafeLoader):
    """libyaml loader that refuses duplicate mapping keys (PyYAML keeps the last silently)."""


MERGE_TAG = "tag:yaml.org,2002:merge"


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> dict[Any, Any]:
    # The mapping's own keys are taken before SafeConstructor flattens merge keys (<<: *base)
    # into node.value: a key that overrides a merged one is not a duplicate.
    own = [k for k, _ in node.value if k.tag != MERGE_TAG]
    merged = len(own) != len(node.value)
    mapping = yaml.constructor.SafeConstructor.construct_mapping(loader, node)
    # Cheap length check; the search for the duplicate runs only when there may be one.
    if merged or len(mapping) != len(own):
        seen: set[Any] = set()
        for key_node in own:
            key = loader.construct_object(key_node)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
    return mapping


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def parse(source: SourceFile) -> tuple[list[Document], list[Problem]]:
    """Documents of one file. An empty file is an error: a half-written save must not prune."""
    docs: list[Document] = []
    try:
        for index, data in enumerate(yaml.load_all(source.text, Loader=_Loader)):
            if data is not None:
                docs.append(Document(source.display, index, data))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        loc = Location(source.display, mark.line + 1, mark.column + 1) if mark else Location(
            source.display)
        problem = exc.problem or exc.context or "invalid YAML"
        return [], [Problem(loc, f"invalid YAML: {problem}")]
    except yaml.YAMLError as exc:
        return [], [Problem(Location(source.display), f"invalid YAML: {exc}")]
    except RecursionError:
        return [], [Problem(Location(source.display), "invalid YAML: nesting too deep")]
    if not docs:
        return [], [Problem(
            Location(source.display, 1, 1),
            "holds no resources; an empty file is refused so that a half-written save cannot "
            "prune anything (delete the file instead)",
        )]
    return docs, []

"""Reading and parsing the YAML files of a desired-state directory (scan.py finds them).

Parsing uses libyaml's C loader without line marks: locating a problem costs a second, slower
pass over one file and is paid only when there is a problem (see locate.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from reconciler.core.errors import Location, Problem, shown

MAX_FILE_BYTES = 32 * 1024 * 1024


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


# Limits on one file's YAML (README "Limits"): past them a file is refused with file:line.
MAX_DEPTH = 64  # nesting of mappings and lists in a document
MAX_VALUES = 500_000  # values in one document once aliases are expanded (alias bombs);
# room for the largest Intercept (16,384 rules of a dozen values each)
# libyaml's composer recurses once per nesting level (in C: ~100,000 levels crash the
# process). A file whose nesting cannot reach this is composed directly; any other is first
# checked with libyaml's event parser, which keeps its own stack.
SAFE_NESTING = 16_384

INT_TAG, FLOAT_TAG = "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"
YAML11_TAG = "tag:bpfsync.dev,2026:yaml11"  # plain scalars YAML 1.1 reads surprisingly
_INT = re.compile(r"^(?:[-+]?(?:0|[1-9][0-9]*)|0x[0-9a-fA-F]+)$")
_FLOAT = re.compile(r"^(?:[-+]?[0-9][0-9]*\.[0-9]*(?:[eE][-+][0-9]+)?"
                    r"|[-+]?\.[0-9]+(?:[eE][-+][0-9]+)?)$")
_YAML11 = re.compile(r"""^(?:[-+]?0[0-7_]+                        # octal: 0777 is 511
                        |[-+]?0b[01_]+                             # binary
                        |[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+(?:\.[0-9_]*)?  # base 60: 1:20 is 80
                        |[-+]?[0-9][0-9_]*_[0-9_]*(?:\.[0-9_]*)?   # digit groups: 1_000
                        |[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$""", re.X)


class Real(float):
    """A YAML float. is_integer() is False so that JSON Schema's "integer" — which accepts
    6080.0, in jsonschema and fastjsonschema alike — refuses it: an integer field takes an
    integer, and a packer would fail on a float much later."""

    __slots__ = ()

    def is_integer(self) -> bool:
        return False


def yaml11_reading(text: str) -> str:
    """What YAML 1.1 makes of a plain scalar _YAML11 matches, for the message."""
    digits = text.replace("_", "")
    sign = -1 if digits.startswith("-") else 1
    digits = digits.lstrip("+-")
    if digits.lower() in (".inf", ".nan"):
        return "a number that is not finite"
    if ":" in digits:
        whole, _, fraction = digits.partition(".")
        value = 0
        for part in whole.split(":"):
            value = value * 60 + int(part)
        return f"{sign * value}{'.' + fraction if fraction else ''} (base 60)"
    if digits.startswith("0b"):
        return f"{sign * int(digits[2:] or '0', 2)} (binary)"
    if digits.startswith("0") and "." not in digits:
        return f"{sign * int(digits, 8)} (octal)"
    return f"{sign * float(digits) if '.' in digits else sign * int(digits)} (digit groups)"


def _resolvers() -> dict[str, list[tuple[str, re.Pattern[str]]]]:
    """YAML 1.1's implicit types without its surprises: an int or float that YAML 1.1 reads
    as octal, binary, base 60, with digit groups, or as inf/nan gets a tag of its own that is
    refused with its location (never silently reinterpreted)."""
    out: dict[str, list[tuple[str, re.Pattern[str]]]] = {}
    for first, entries in yaml.resolver.Resolver.yaml_implicit_resolvers.items():
        out[first] = [(tag, _INT if tag == INT_TAG else _FLOAT if tag == FLOAT_TAG else rx)
                      for tag, rx in entries]
    for first in "-+.0123456789":
        out[first] = [(YAML11_TAG, _YAML11), *out.get(first, [])]
    return out


class BoundsError(yaml.constructor.ConstructorError):
    """A document past a limit of this module, or a YAML 1.1 surprise: refused, located."""


class _Loader(yaml.CSafeLoader):
    """libyaml loader that refuses duplicate mapping keys (PyYAML keeps the last silently),
    YAML 1.1's surprising numbers, and documents past the limits above."""

    yaml_implicit_resolvers = _resolvers()

    def construct_document(self, node: yaml.Node) -> Any:
        check_bounds(node)  # before anything is built from it
        return super().construct_document(node)


def check_bounds(root: yaml.Node) -> None:
    """Raise BoundsError at the first node past MAX_DEPTH, at a node that holds more than
    MAX_VALUES values once its aliases are expanded, or at one that contains itself. Aliases
    are the same node objects, so each node is visited once: the cost follows the text, not
    the expansion (and the recursion is bounded by MAX_DEPTH)."""
    done: dict[int, tuple[int, int]] = {}  # node id -> (values in it, levels in it)
    open_ids: set[int] = set()

    def visit(node: yaml.Node, depth: int) -> tuple[int, int]:
        if depth > MAX_DEPTH:
            raise BoundsError(None, None, f"nested deeper than {MAX_DEPTH} levels",
                              node.start_mark)
        if isinstance(node, yaml.ScalarNode):
            return 1, 1
        key = id(node)
        seen = done.get(key)
        if seen is not None:  # an alias: counted again, not walked again
            if depth - 1 + seen[1] > MAX_DEPTH:
                raise BoundsError(None, None, f"nested deeper than {MAX_DEPTH} levels "
                                  "(through an alias)", node.start_mark)
            return seen
        if key in open_ids:
            raise BoundsError(None, None, "an alias refers to a value that contains it",
                              node.start_mark)
        open_ids.add(key)
        values, height = 1, 1
        children = ([n for pair in node.value for n in pair]
                    if isinstance(node, yaml.MappingNode) else node.value)
        for child in children:
            v, h = visit(child, depth + 1)
            values += v
            height = max(height, h + 1)
        if values > MAX_VALUES:
            raise BoundsError(None, None, f"this value holds more than {MAX_VALUES:,} "
                              "values once its aliases are expanded (limit per document)",
                              node.start_mark)
        open_ids.discard(key)
        done[key] = (values, height)
        return values, height

    visit(root, 1)


def _construct_yaml11(loader: _Loader, node: yaml.ScalarNode) -> None:
    raise BoundsError(None, None, f"{shown(node.value)} is ambiguous: YAML 1.1 reads it as "
                      f"{yaml11_reading(node.value)}; write the number meant, or quote it "
                      "for text", node.start_mark)


def _construct_float(loader: _Loader, node: yaml.ScalarNode) -> Real:
    return Real(yaml.constructor.SafeConstructor.construct_yaml_float(loader, node))


_Loader.add_constructor(YAML11_TAG, _construct_yaml11)
_Loader.add_constructor(FLOAT_TAG, _construct_float)

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


def nesting_bound(text: str) -> int:
    """An upper bound of a text's nesting depth, at C speed: every flow collection needs a
    bracket, and every block level a column more (no line nests deeper than it is long)."""
    if len(text) < SAFE_NESTING:
        return len(text)
    return text.count("[") + text.count("{") + max(map(len, text.splitlines()), default=0)


def too_deep(text: str) -> yaml.Mark | None:
    """Where the text nests deeper than MAX_DEPTH (libyaml's event parser, no recursion)."""
    depth = 0
    try:
        for event in yaml.parse(text, Loader=yaml.CSafeLoader):
            if isinstance(event, yaml.CollectionStartEvent):
                depth += 1
                if depth > MAX_DEPTH:
                    return event.start_mark
            elif isinstance(event, yaml.CollectionEndEvent):
                depth -= 1
    except yaml.YAMLError:
        return None  # the real parse reports it, with its location
    return None


def _problem_at(display: str, mark: Any, message: str) -> Problem:
    loc = Location(display, mark.line + 1, mark.column + 1) if mark else Location(display)
    return Problem(loc, message)


def parse(source: SourceFile) -> tuple[list[Document], list[Problem]]:
    """Documents of one file. An empty file is an error: a half-written save must not prune."""
    docs: list[Document] = []
    if nesting_bound(source.text) > SAFE_NESTING:
        mark = too_deep(source.text)
        if mark is not None:
            return [], [_problem_at(source.display, mark, f"nested deeper than {MAX_DEPTH} "
                                                          "levels")]
    try:
        for index, data in enumerate(yaml.load_all(source.text, Loader=_Loader)):
            if data is not None:
                docs.append(Document(source.display, index, data))
    except BoundsError as exc:
        return [], [_problem_at(source.display, exc.problem_mark, exc.problem or "")]
    except yaml.MarkedYAMLError as exc:
        problem = exc.problem or exc.context or "invalid YAML"
        return [], [_problem_at(source.display, exc.problem_mark or exc.context_mark,
                                f"invalid YAML: {problem}")]
    except yaml.YAMLError as exc:
        return [], [Problem(Location(source.display), f"invalid YAML: {shown(str(exc))}")]
    if not docs:
        return [], [Problem(
            Location(source.display, 1, 1),
            "holds no resources; an empty file is refused so that a half-written save cannot "
            "prune anything (delete the file instead)",
        )]
    return docs, []

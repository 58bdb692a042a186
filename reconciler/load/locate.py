"""Turning a field path inside a parsed document back into file:line:column.

Composing nodes with marks is ~4x slower than the plain load, so this runs only for documents
that have a problem.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import yaml

from reconciler.core.errors import Location

PathItem = str | int


@lru_cache(maxsize=64)
def _compose(text: str) -> tuple[yaml.Node | None, ...]:
    try:
        return tuple(yaml.compose_all(text, Loader=yaml.CSafeLoader))
    except yaml.YAMLError:
        return ()


def _node_at(root: yaml.Node, path: Sequence[PathItem], key: bool) -> yaml.Node:
    node = root
    for i, item in enumerate(path):
        last = i == len(path) - 1
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                if isinstance(key_node, yaml.ScalarNode) and key_node.value == str(item):
                    node = key_node if (last and key) else value_node
                    break
            else:
                return node
        elif isinstance(node, yaml.SequenceNode) and isinstance(item, int) and item < len(
                node.value):
            node = node.value[item]
        else:
            return node
    return node


def locate(file: str, text: str, doc_index: int, path: Sequence[PathItem],
           key: bool = False) -> Location:
    """Location of path in document doc_index.

    With key=True, point at the mapping key rather than its value (for unknown fields).
    A path that does not exist resolves to its deepest existing parent. doc_index counts
    every document of the file, empty ones included, as Document.index does.
    """
    docs = _compose(text)
    if doc_index >= len(docs) or docs[doc_index] is None:
        return Location(file)
    node = _node_at(docs[doc_index], path, key)
    mark = node.start_mark
    return Location(file, mark.line + 1, mark.column + 1)

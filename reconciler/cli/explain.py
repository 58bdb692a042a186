"""`bpfsync explain KIND[.field.path]`: what a kind or field means, from its schema."""

from __future__ import annotations

import argparse
from typing import Any

from reconciler.cli.common import EXIT_OK
from reconciler.load.explain import explain, find
from reconciler.load.schema import Schemas


def cmd_explain(args: argparse.Namespace) -> int:
    schemas = {kind: s.schema for kind, s in Schemas().kinds.items()}
    print(explain(find(schemas, args.field)))
    return EXIT_OK


def add(sub: Any) -> None:
    """The parser of explain."""
    e = sub.add_parser("explain", help="describe a kind or one of its fields: type, default, "
                                       "bounds, description, the fields below it",
                       description="e.g. bpfsync explain proxy, bpfsync explain "
                                   "proxy.spec.healthCheck.intervalSeconds")
    e.add_argument("field", metavar="KIND[.FIELD...]")
    e.set_defaults(func=cmd_explain)

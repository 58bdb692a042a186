"""The shape of a resource document as `get` prints it (and `apply` reads it back)."""

from __future__ import annotations

from typing import Any

API_VERSION = "bpfsync/v1"


def document(kind: str, name: str, spec: dict[str, Any], status: dict[str, Any]) -> dict[str, Any]:
    doc = {"apiVersion": API_VERSION, "kind": kind, "metadata": {"name": name}, "spec": spec}
    if status:
        doc["status"] = status
    return doc

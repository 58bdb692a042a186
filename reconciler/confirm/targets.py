"""Attachment steps in the pending-change record: each target (a frozen dataclass of a
part's) written as its class, `module:name`, and its fields. Read back only as a dataclass
of a reconciler module: the record file is root-only and checked to be (confirm/store.py),
and nothing but a dataclass's own constructor runs."""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any

from reconciler.core.attachments import AttachAction, Step


def _encode(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        kind = type(value)
        return {"$": f"{kind.__module__}:{kind.__qualname__}",
                **{f.name: _encode(getattr(value, f.name)) for f in dataclasses.fields(value)}}
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    raise ValueError(f"a step's target holds a {type(value).__name__}")


def _decode(value: Any) -> Any:
    if isinstance(value, dict):
        module, _, name = str(value.get("$", "")).partition(":")
        if not module.startswith("reconciler."):
            raise ValueError("a target of an unknown class")
        kind = getattr(importlib.import_module(module), name, None)
        if kind is None or not dataclasses.is_dataclass(kind):
            raise ValueError("a target of an unknown class")
        return kind(**{k: _decode(v) for k, v in value.items() if k != "$"})
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    raise ValueError("a target field of an unknown type")


def encode(step: Step) -> dict[str, Any]:
    return {"action": step.action.value, "owner": step.owner, "reason": step.reason,
            "target": _encode(step.target)}


def decode(doc: dict[str, Any]) -> Step:
    return Step(AttachAction(doc["action"]), _decode(doc["target"]), str(doc["owner"]),
                str(doc["reason"]))

"""Where the schemas and BPF sources are: beside the package in a source tree (and an
editable install), inside it (reconciler/_data/) when installed from a wheel."""

from __future__ import annotations

from pathlib import Path

_HERE = Path(__file__).resolve().parent


def data_dir(name: str) -> Path:
    """name: "schema" or "bpf"."""
    for candidate in (_HERE.parent / name, _HERE / "_data" / name):
        if candidate.is_dir():
            return candidate
    return _HERE.parent / name

"""The installed version of bpfsync (`--version`, `status -o json`, bpfsync_build_info)."""

from __future__ import annotations

from functools import cache


@cache
def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("bpfsync")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"

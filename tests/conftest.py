"""For every test (unit and kernel): bpfsync's state directory (the history) is the
session's own temporary directory, never the host's /var/lib/bpfsync; commands the tests
start inherit it through the environment."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator

import pytest

from tests.kernel.owned import STATE_PREFIX  # its sweep removes those of dead sessions


@pytest.fixture(scope="session", autouse=True)
def _private_state_directory() -> Iterator[None]:
    # named after this process: a later session's sweep removes it if this one was killed
    path = tempfile.mkdtemp(prefix=f"{STATE_PREFIX}{os.getpid()}-")
    before = os.environ.get("BPFSYNC_STATE_DIR")
    os.environ["BPFSYNC_STATE_DIR"] = path
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("BPFSYNC_STATE_DIR", None)
        else:
            os.environ["BPFSYNC_STATE_DIR"] = before
        shutil.rmtree(path, ignore_errors=True)

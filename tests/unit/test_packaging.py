"""The systemd unit is valid as systemd itself reads it."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[2] / "packaging" / "systemd" / "bpfsync.service"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze missing")
def test_unit_verifies(tmp_path: Path) -> None:
    unit = tmp_path / "bpfsync.service"
    unit.write_text(UNIT.read_text().replace("/opt/bpfsync/.venv/bin/bpfsync", shutil.which(
        "true") or "/bin/true"))
    r = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                       text=True)
    assert r.returncode == 0 and not r.stderr.strip(), r.stderr
    text = UNIT.read_text()
    assert "Type=notify" in text and "WatchdogSec=" in text and "KillMode=process" in text

"""Where BCC finds kernel headers when the running kernel ships none.

packaging/install.sh merges Debian's linux-headers trees into HEADERS_TREE; point BCC at it
only when /lib/modules/$(uname -r)/build is missing and the user has not chosen a tree.
"""

from __future__ import annotations

import os
from pathlib import Path

HEADERS_TREE = Path("/var/lib/bpfsync/kernel-headers")


def ensure_kernel_source() -> None:
    if os.environ.get("BCC_KERNEL_SOURCE"):
        return
    if Path(f"/lib/modules/{os.uname().release}/build").exists():
        return
    for candidate in (HEADERS_TREE / os.uname().release, HEADERS_TREE / "current"):
        if candidate.is_dir():
            os.environ["BCC_KERNEL_SOURCE"] = str(candidate)
            return

"""The process's file-descriptor limit: raised to its hard limit where the data path starts.

Every proxied connection holds two descriptors (client and backend). The systemd default soft
limit (1024) would stop a proxy at about 500 connections; the hard limit is what the unit
grants (packaging/systemd: LimitNOFILE), and nothing is gained by staying below it.
"""

from __future__ import annotations

import os
import resource


def raise_to_hard() -> int:
    """Soft RLIMIT_NOFILE := hard; the soft limit in force afterwards (children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass  # an unlimited hard limit some kernels refuse as soft: keep what we have
    return soft


def open_count() -> int:
    """Descriptors this process holds now."""
    try:
        return len(os.listdir("/proc/self/fd")) - 1  # the listing's own
    except OSError:
        return -1

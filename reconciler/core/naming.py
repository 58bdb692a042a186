"""Names bpfsync derives from a pin root (its run directory, its data path's cgroup)."""

from __future__ import annotations

from pathlib import Path


def escape_path(path: Path) -> str:
    """A path as one file name, the way `systemd-escape --path` writes it: "/" becomes "-",
    and "-" itself, like anything but letters, digits, ":", "_" and ".", becomes \\xNN, so two
    pin roots never share a name (/a/b and /a-b do not). The default pin root stays
    sys-fs-bpf-bpfsync."""
    parts = [p for p in str(path).split("/") if p]
    if not parts:
        return "-"
    out = []
    for i, ch in enumerate("/".join(parts)):
        if ch == "/":
            out.append("-")
        elif (ch.isascii() and (ch.isalnum() or ch in ":_")) or (ch == "." and i > 0):
            out.append(ch)
        else:
            out.extend(f"\\x{b:02x}" for b in ch.encode())
    return "".join(out)

"""The peers and load tools the benchmarks run (HAProxy, iperf3), without installing anything
on the host: a tool already on PATH is used as is; otherwise its Debian package and the
libraries it lacks are downloaded with `apt-get download` and unpacked into a cache of the
benchmarks' own (`.venv/bench-tools`, beside install.sh's promtool). No package is
installed, no service started, no file outside that cache written: a benchmark leaves the
host's configuration (e.g. /usr/sbin/policy-rc.d) as it found it.

    from tools import tool
    haproxy = tool("haproxy")  # a path to run; a cached tool's is a script that finds
                               # its libraries and execs it (the pid stays the tool's)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".venv" / "bench-tools"

# tool -> (package, path of the binary in it, library packages it may need)
PACKAGES = {
    "haproxy": ("haproxy", "usr/sbin/haproxy", ("liblua5.3-0", "libopentracing-c-wrapper0",
                                                 "libopentracing1")),
    "iperf3": ("iperf3", "usr/bin/iperf3", ("libiperf0", "libsctp1")),
}


def byte_size(text: str) -> int:
    """A benchmark's size argument: "2G", "64M", "512K" or a number of bytes."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(float(text[:-1]) * units[text[-1]]) if text[-1] in units else int(text)


def _download(package: str, into: Path) -> Path:
    """The .deb of package (apt-get download; the index refreshed once if it is unknown)."""
    for attempt in range(2):
        r = subprocess.run(["apt-get", "download", "-qq", package], cwd=into,
                           capture_output=True, text=True, check=False)
        found = sorted(into.glob(f"{package}_*.deb"))
        if r.returncode == 0 and found:
            return found[-1]
        if attempt == 0:
            subprocess.run(["apt-get", "update", "-qq"], capture_output=True, check=False)
    raise RuntimeError(f"cannot download Debian package {package}: {r.stderr.strip()[-300:]}")


def _unpack(deb: Path, into: Path) -> None:
    into.mkdir(exist_ok=True)
    with subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)],
                          stdout=subprocess.PIPE) as tar:
        subprocess.run(["tar", "-x", "-C", str(into)], stdin=tar.stdout, check=True)


def _missing_libraries(binary: Path) -> list[str]:
    r = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, check=False,
                       env=_env())
    return [line.split()[0] for line in r.stdout.splitlines() if "not found" in line]


def tool(name: str) -> str:
    """The path of a runnable `name`: the host's, or one unpacked into the cache."""
    on_path = shutil.which(name)
    if on_path:
        return on_path
    package, inside, libraries = PACKAGES[name]
    binary, wrapper = CACHE / "libexec" / name, CACHE / "bin" / name
    if not binary.exists() or _missing_libraries(binary):
        for sub in ("libexec", "bin", "lib"):
            (CACHE / sub).mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="bpfsync-bench-tools-") as tmp:
            work = Path(tmp)
            os.chmod(work, 0o755)  # apt's download user writes here
            if not binary.exists():
                _unpack(_download(package, work), work / "root")
                shutil.copy2(work / "root" / inside, binary)
            for lib in libraries:  # only while some library is still missing
                if not _missing_libraries(binary):
                    break
                _unpack(_download(lib, work), work / "root")
                for so in (work / "root").glob("usr/lib/*/*.so*"):
                    shutil.copy2(so, CACHE / "lib" / so.name, follow_symlinks=True)
    missing = _missing_libraries(binary)
    if missing:
        raise RuntimeError(f"{binary}: libraries not found: {', '.join(missing)}")
    wrapper.write_text(f'#!/bin/sh\nLD_LIBRARY_PATH="{CACHE / "lib"}'
                       f'${{LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}}" exec "{binary}" "$@"\n')
    wrapper.chmod(0o755)
    return str(wrapper)


def _env() -> dict[str, str]:
    """The environment ldd checks a cached tool in (its libraries found in the cache)."""
    have = os.environ.get("LD_LIBRARY_PATH")
    lib = str(CACHE / "lib")
    return {**os.environ, "LD_LIBRARY_PATH": f"{lib}:{have}" if have else lib}

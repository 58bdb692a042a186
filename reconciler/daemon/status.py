"""`bpfsync status`: the daemon answers on a unix socket only root can reach.

The socket lives in the pin root's run directory (mode 0700) with mode 0600, and the peer's
credentials are checked as well. The protocol is one request line ("status", or a verb:
reconcile, suspend, resume) and one JSON reply.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import struct
import threading
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import Any

log = logging.getLogger("bpfsync.status")

SOCKET_NAME = "daemon.sock"
MAX_REPLY = 64 * 1024 * 1024
CLIENT_TIMEOUT = 10.0
VERBS = ("reconcile", "suspend", "resume", "hold")  # daemon/gate.py acts on them


class DaemonNotRunning(Exception):
    pass


def socket_path(run_dir: Path) -> Path:
    return run_dir / SOCKET_NAME


class StatusServer:
    """Serves report() (built in this server's thread) to each connecting root process, and
    passes the verbs of VERBS to command(verb), whose reply it sends back."""

    def __init__(self, run_dir: Path, report: Callable[[], dict[str, Any]],
                 command: Callable[[str], dict[str, Any]] | None = None) -> None:
        self.path = socket_path(run_dir)
        self.report = report
        self.command = command
        self.sock: socket.socket | None = None
        self.thread: threading.Thread | None = None
        self._stopping = False

    def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.path.parent, 0o700)
        with suppress(FileNotFoundError):
            self.path.unlink()  # stale: the daemon's lock proves no other daemon owns it
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        old = os.umask(0o177)
        try:
            sock.bind(str(self.path))
        finally:
            os.umask(old)
        sock.listen(16)
        self.sock = sock
        self.thread = threading.Thread(target=self._serve, name="status", daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        assert self.sock is not None
        while not self._stopping:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                try:
                    self._answer(conn)
                except Exception as exc:  # a status request must never hurt the daemon
                    log.warning("status request failed: %s", exc)

    def _answer(self, conn: socket.socket) -> None:
        conn.settimeout(CLIENT_TIMEOUT)
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        _, uid, _ = struct.unpack("3i", creds)
        if uid not in (0, os.getuid()):
            conn.sendall(b'{"error": "permission denied"}\n')
            return
        request = conn.recv(256).decode(errors="replace").strip()
        if request == "status":
            reply = self.report()
        elif request in VERBS and self.command is not None:
            reply = self.command(request)
            log.info("request %r from uid %d", request, uid)
        else:
            reply = {"error": f"unknown request {request[:40]!r}"}
        conn.sendall(json.dumps(reply).encode() + b"\n")

    def stop(self) -> None:
        self._stopping = True
        if self.sock is not None:
            with suppress(OSError):
                self.sock.shutdown(socket.SHUT_RDWR)
            self.sock.close()
        if self.thread is not None:
            self.thread.join(timeout=5)
        with suppress(OSError):
            self.path.unlink()


def query(run_dir: Path, request: str = "status") -> dict[str, Any]:
    """The daemon's answer to request (status, or one of VERBS)."""
    path = socket_path(run_dir)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(CLIENT_TIMEOUT)
        try:
            s.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError):
            raise DaemonNotRunning(str(path)) from None
        s.sendall(request.encode() + b"\n")
        chunks = []
        total = 0
        while chunk := s.recv(1 << 16):
            chunks.append(chunk)
            total += len(chunk)
            if total > MAX_REPLY:
                raise ValueError("status reply too large")
    doc = json.loads(b"".join(chunks))
    if "error" in doc:
        raise PermissionError(doc["error"])
    return doc

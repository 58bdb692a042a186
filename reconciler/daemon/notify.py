"""systemd's notification protocol (sd_notify(3)): one datagram per message to
$NOTIFY_SOCKET. A dozen lines; no library needed, and nothing happens outside systemd."""

from __future__ import annotations

import os
import socket


class Notifier:
    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        if address.startswith("@"):  # abstract namespace
            address = "\0" + address[1:]
        self.address = address or None
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        watchdog = usec.isdigit() and (not pid or pid == str(os.getpid()))
        # ping at half the interval, as systemd recommends
        self.watchdog_interval = int(usec) / 2e6 if watchdog else None

    def send(self, **fields: str) -> bool:
        """READY="1", STATUS="...", WATCHDOG="1", STOPPING="1"; False outside systemd."""
        if self.address is None:
            return False
        message = "\n".join(f"{k}={v}" for k, v in fields.items()).encode()
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            try:
                s.sendto(message, self.address)
            except OSError:
                return False
        return True

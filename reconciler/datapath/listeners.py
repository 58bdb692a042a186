"""The proxies' listening sockets, owned by the data path's supervisor: one per Proxy slot,
made in the Proxies' namespace, kept registered in the ps_sockets SOCKMAP (steering hands
connections to them) and passed to every worker."""

from __future__ import annotations

import logging
import os
import socket
import struct
from pathlib import Path

from reconciler.kernel import libbpf, netns
from reconciler.steering import tables as st

log = logging.getLogger("bpfsync.supervisor")

SO_COOKIE = 57
IP_FREEBIND = 15
IP_TRANSPARENT = 19
LISTEN_BACKLOG = 4096


def socket_cookie(sock: socket.socket) -> int:
    return struct.unpack("=Q", sock.getsockopt(socket.SOL_SOCKET, SO_COOKIE, 8))[0]


class Listeners:
    """Listening sockets by slot, kept registered in ps_sockets."""

    def __init__(self, pin_root: Path, netns_name: str | None) -> None:
        self.pin_root = pin_root
        self.netns = netns_name
        self.socks: dict[int, socket.socket] = {}

    def _open(self, slot: int) -> socket.socket:
        with netns.inside(self.netns):  # a socket belongs to the namespace it was made in
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.IPPROTO_IP, IP_FREEBIND, 1)  # lo may still be down
        # an Intercept's redirected connections are assigned to it by TC with their original
        # destination as local address: the kernel accepts (and answers) them only then
        try:
            s.setsockopt(socket.IPPROTO_IP, IP_TRANSPARENT, 1)
        except PermissionError:  # steering still works; redirection needs CAP_NET_ADMIN
            log.warning("listener for slot %d: IP_TRANSPARENT refused (no CAP_NET_ADMIN): "
                        "connections an Intercept redirects to it will not be accepted", slot)
        s.bind(("127.0.0.1", 0))
        s.listen(LISTEN_BACKLOG)
        log.info("listener for slot %d on %s:%d", slot, *s.getsockname())
        return s

    def sync(self, slots: set[int]) -> bool:
        """Open missing listeners, close removed ones, re-register drifted ones; True when the
        set of listeners changed."""
        changed = False
        for slot in sorted(set(self.socks) - slots):
            log.info("closing listener for slot %d (Proxy removed)", slot)
            self.socks.pop(slot).close()
            changed = True
        for slot in sorted(slots - set(self.socks)):
            self.socks[slot] = self._open(slot)
            changed = True
        if self.socks:
            self._register()
        return changed

    def reopen(self) -> None:
        """New sockets for every slot (made where this process is now: its cgroup decides
        which getsockopt programs their accepted sockets run)."""
        old = self.socks
        self.socks = {slot: self._open(slot) for slot in sorted(old)}
        if self.socks:
            self._register()  # replaces the old ones in ps_sockets: steering never stops
        for sock in old.values():
            sock.close()

    def _register(self) -> None:
        fd = libbpf.obj_get_if_pinned(str(self.pin_root / "maps" / st.SOCKETS.name))
        if fd is None:
            return
        try:
            for slot, s in self.socks.items():
                key = struct.pack("=I", slot)
                cookie = socket_cookie(s)
                have = libbpf.lookup_elem(fd, key, 8)
                if have is None or struct.unpack("=Q", have)[0] != cookie:
                    libbpf.update_elem(fd, key, struct.pack("=Q", s.fileno()))
                    if have is not None:
                        log.info("slot %d held another socket (a previous data path's); "
                                 "steering now hands connections to ours", slot)
        finally:
            os.close(fd)

    def close(self) -> None:
        for s in self.socks.values():
            s.close()
        self.socks.clear()

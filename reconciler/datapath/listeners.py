"""The proxies' listening sockets, owned by the data path's supervisor: per Proxy slot an
IPv4 one and, where the namespace has IPv6, an IPv6 one; made in the Proxies' namespace, kept
registered in the ps_sockets and ps_sockets6 SOCKMAPs (steering hands connections to them)
and passed to every worker."""

from __future__ import annotations

import logging
import os
import socket
import struct
from contextlib import suppress
from pathlib import Path

from reconciler.kernel import libbpf, netns
from reconciler.steering import tables as st

log = logging.getLogger("bpfsync.supervisor")

SO_COOKIE = 57
IP_FREEBIND = 15
IP_TRANSPARENT = 19
IPV6_FREEBIND = 78
IPV6_TRANSPARENT = 75
LISTEN_BACKLOG = 4096


def socket_cookie(sock: socket.socket) -> int:
    return struct.unpack("=Q", sock.getsockopt(socket.SOL_SOCKET, SO_COOKIE, 8))[0]


class Listeners:
    """Listening sockets by slot, kept registered in ps_sockets (IPv4) and ps_sockets6 (IPv6).
    A slot's IPv6 listener is made and replaced together with its IPv4 one, whose cookie
    names the pair."""

    def __init__(self, pin_root: Path, netns_name: str | None) -> None:
        self.pin_root = pin_root
        self.netns = netns_name
        self.socks: dict[int, socket.socket] = {}  # IPv4
        self.socks6: dict[int, socket.socket] = {}  # IPv6, where the namespace has it
        self._no_ipv6: str | None = None  # why IPv6 listeners cannot be made (said once)

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

    def _open6(self, slot: int) -> socket.socket | None:
        """The slot's IPv6 listener on ::1 (v6 only: bpf_sk_assign gives it IPv6 lookups, the
        IPv4 listener the rest); None where the namespace has no IPv6."""
        try:
            with netns.inside(self.netns):
                s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        except OSError as exc:
            if self._no_ipv6 != str(exc):
                log.warning("no IPv6 listeners (IPv6 connections to steered destinations are "
                            "dropped): %s", exc)
                self._no_ipv6 = str(exc)
            return None
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            s.setsockopt(socket.IPPROTO_IPV6, IPV6_FREEBIND, 1)
            with suppress(PermissionError):
                s.setsockopt(socket.IPPROTO_IPV6, IPV6_TRANSPARENT, 1)
            s.bind(("::1", 0))
            s.listen(LISTEN_BACKLOG)
        except OSError as exc:
            s.close()
            if self._no_ipv6 != str(exc):
                log.warning("no IPv6 listener for slot %d (IPv6 connections to its "
                            "destinations are dropped): %s", slot, exc)
                self._no_ipv6 = str(exc)
            return None
        log.info("listener for slot %d on [%s]:%d", slot, *s.getsockname()[:2])
        return s

    def _open_pair(self, slot: int) -> None:
        self.socks[slot] = self._open(slot)
        s6 = self._open6(slot)
        if s6 is not None:
            self.socks6[slot] = s6

    def of(self, slot: int) -> list[socket.socket]:
        """The slot's listeners: IPv4 first."""
        return [self.socks[slot], *([self.socks6[slot]] if slot in self.socks6 else [])]

    def sync(self, slots: set[int]) -> bool:
        """Open missing listeners, close removed ones, re-register drifted ones; True when the
        set of listeners changed."""
        changed = False
        for slot in sorted(set(self.socks) - slots):
            log.info("closing listener for slot %d (Proxy removed)", slot)
            for s in self.of(slot):
                s.close()
            del self.socks[slot]
            self.socks6.pop(slot, None)
            changed = True
        for slot in sorted(slots - set(self.socks)):
            self._open_pair(slot)
            changed = True
        if self.socks:
            self._register()
        return changed

    def reopen(self) -> None:
        """New sockets for every slot (made where this process is now: its cgroup decides
        which getsockopt programs their accepted sockets run)."""
        old = [s for slot in sorted(self.socks) for s in self.of(slot)]
        slots = sorted(self.socks)
        self.socks, self.socks6 = {}, {}
        for slot in slots:
            self._open_pair(slot)
        if self.socks:
            self._register()  # replaces the old ones in ps_sockets: steering never stops
        for sock in old:
            sock.close()

    def _register(self) -> None:
        for spec, socks in ((st.SOCKETS, self.socks), (st.SOCKETS6, self.socks6)):
            fd = libbpf.obj_get_if_pinned(str(self.pin_root / "maps" / spec.name))
            if fd is None:
                continue
            try:
                for slot, s in socks.items():
                    key = struct.pack("=I", slot)
                    cookie = socket_cookie(s)
                    have = libbpf.lookup_elem(fd, key, 8)
                    if have is None or struct.unpack("=Q", have)[0] != cookie:
                        libbpf.update_elem(fd, key, struct.pack("=Q", s.fileno()))
                        if have is not None:
                            log.info("slot %d held another socket in %s (a previous data "
                                     "path's); steering now hands connections to ours", slot,
                                     spec.name)
            finally:
                os.close(fd)

    def close(self) -> None:
        for s in [*self.socks.values(), *self.socks6.values()]:
            s.close()
        self.socks.clear()
        self.socks6.clear()

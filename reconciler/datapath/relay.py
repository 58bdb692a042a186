"""Moving bytes between two sockets on an asyncio loop, with half-close.

Each direction is a Flow driven by readiness callbacks (no task, no future per connection).
A direction's first chunks are copied (recv_into a reused buffer, then send): for a short
request or response that costs less than a pipe. Once a read fills a whole buffer (a bulk
flow), its bytes are spliced (splice(2) through a pipe: socket -> pipe -> socket, pages
moved in the kernel, never copied into Python), as HAProxy's splice-auto does; the loop
still sees every chunk, so half-close, backpressure, resets, byte counts and idle times
work as for a copy. Where no pipe can be had (out of descriptors, BPFSYNC_RELAY=copy),
bulk flows are copied too. Pipes and buffers come from a shared pool and are held only
while data flows, so an idle connection holds neither: it costs its sockets, their two
entries in the worker's epoll (reactor.Reactor) and a few small objects. Measured in
bench/RESULTS.md.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import os
import socket
import struct
import time
from collections.abc import Callable
from contextlib import suppress
from typing import Any

from reconciler.datapath.fdgate import DescriptorGate
from reconciler.datapath.reactor import READ, WRITE

BUFFER_SIZE = 256 * 1024
POOL_KEEP = 64  # buffers kept for reuse; more are allocated under load and then freed
PIPE_SIZE = 256 * 1024  # bytes a pipe holds (and one splice moves) at most
PIPES_KEEP = 16  # empty pipes kept for reuse (two descriptors each)
F_SETPIPE_SZ = 1031
FLOW_BATCH = 16  # chunks a flow moves per readiness, at most (a turn for other work)
_SPLICE = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK
_LINGER_RESET = struct.pack("ii", 1, 0)


class BufferPool:
    """Buffers and pipes, lent while data flows. splice: False copies every chunk."""

    def __init__(self, size: int = BUFFER_SIZE, keep: int = POOL_KEEP,
                 splice: bool | None = None, gate: DescriptorGate | None = None) -> None:
        self.size, self.keep = size, keep
        self.pipe_size = PIPE_SIZE
        self.gate = gate or DescriptorGate()  # pipes count among the worker's descriptors
        self.splice = (os.environ.get("BPFSYNC_RELAY", "splice") != "copy"
                       if splice is None else splice)
        self._free: list[bytearray] = []
        self._pipes: list[tuple[int, int]] = []

    def get(self) -> bytearray:
        return self._free.pop() if self._free else bytearray(self.size)

    def put(self, buf: bytearray) -> None:
        if len(self._free) < self.keep:
            self._free.append(buf)

    def get_pipe(self) -> tuple[int, int] | None:
        """An empty pipe (read end, write end), or None: splicing is off, or no descriptor
        is left for one (the chunk is copied instead)."""
        if not self.splice:
            return None
        if self._pipes:
            return self._pipes.pop()
        if not self.gate.room():  # connections need the descriptors more
            return None
        try:
            r, w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE):
                return None
            raise
        with suppress(OSError):  # as much as a copy buffer holds, where allowed
            fcntl.fcntl(w, F_SETPIPE_SZ, self.pipe_size)
        self.gate.pipes += 1
        return r, w

    def put_pipe(self, pipe: tuple[int, int], empty: bool = True) -> None:
        """Return a pipe; one that may still hold bytes (an error mid-way) is closed."""
        if empty and len(self._pipes) < PIPES_KEEP:
            self._pipes.append(pipe)
            return
        for fd in pipe:
            os.close(fd)
        self.gate.pipes -= 1


async def wait_writable(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
    await _wait(loop, sock, loop.add_writer, loop.remove_writer)


async def _wait(loop: asyncio.AbstractEventLoop, sock: socket.socket, add: Any,
                remove: Any) -> None:
    fut = loop.create_future()
    fd = sock.fileno()

    def ready() -> None:  # unwatched at once: no second report while the task wakes
        remove(fd)
        if not fut.done():
            fut.set_result(None)

    add(fd, ready)
    try:
        await fut
    finally:
        if not fut.done() or fut.cancelled():  # still watched: ready() never ran
            remove(fd)


def start_connect(sock: socket.socket, address: tuple[str, int]) -> bool:
    """Begin connecting the non-blocking sock to address: True when it is connected already
    (a backend on this host usually is: the handshake runs within connect()), False while in
    progress (writable once done; SO_ERROR then says how); OSError when it failed at once."""
    err = sock.connect_ex(address)
    if err == 0:
        return True
    if err not in (errno.EINPROGRESS, errno.EINTR):
        raise OSError(err, os.strerror(err))
    try:
        sock.getpeername()
        return True
    except OSError:  # ENOTCONN: still in progress, or failed (SO_ERROR says which)
        return False


def dial(sock: socket.socket, address: tuple[str, int], mark: int | None) -> bool:
    """start_connect for a connection to a backend (or an original destination), with what
    every such connection gets: no Nagle, and SO_MARK mark if given (an Intercept's
    proxyMark: never intercepted again)."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if mark is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
    return start_connect(sock, address)


def connect_result(sock: socket.socket) -> None:
    """After a connect in progress made sock writable: OSError with its error, if any."""
    err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if err:
        raise OSError(err, os.strerror(err))


def connect_done(sock: socket.socket) -> bool:
    """A report of sock while its connect was in progress: True when it is connected, False
    when still in progress (a report meant for an earlier user of its descriptor); OSError
    when it failed."""
    connect_result(sock)
    try:
        sock.getpeername()
    except OSError:  # ENOTCONN
        return False
    return True


async def connect(loop: asyncio.AbstractEventLoop, sock: socket.socket,
                  address: tuple[str, int], timeout: float) -> None:
    """Connect the non-blocking sock to address; OSError with the connect's error,
    TimeoutError after timeout seconds (no timer when connected at once)."""
    if start_connect(sock, address):
        return
    async with asyncio.timeout(timeout):  # no task of its own
        await wait_writable(loop, sock)
    connect_result(sock)


class Stream:
    """One direction's progress: counters and the time of the last byte, for idle timeouts."""

    __slots__ = ("bytes", "last")

    def __init__(self) -> None:
        self.bytes = 0
        self.last = time.monotonic()


class Flow:
    """One direction of a connection, src to dst, moved when its owner reports readiness
    (edge-triggered: reactor.Reactor; no task, no future: a connection's setup and short
    exchanges cost a few calls each), until src's EOF half-closes dst; the other direction
    keeps flowing. While dst takes what was read, src is not read (backpressure); every
    chunk updates stream (bytes, time of the last).

    Edge-triggered means a report comes once per change, so a flow reads until EAGAIN, and
    when it stops short of that (FLOW_BATCH chunks a turn, a full dst) it reads again by
    itself (the next turn; once dst has taken everything). start() begins; done() is
    called once src's EOF has been passed on, failed(exc) on an error of either socket (the
    owner resets both). stop() returns what was lent and ignores every later report; it
    is the owner's to call before closing the sockets. full(dfd), if given, is called when
    dst is full: dst's writability is wanted from then on (Reactor.want_write); without it,
    the owner watches dst's writability all along."""

    __slots__ = ("buf", "bulk", "dfd", "done", "dst", "end_at", "failed", "full", "loop", "over",
                 "pipe", "pool", "sfd", "src", "start_at", "stream", "writing")

    def __init__(self, loop: asyncio.AbstractEventLoop, src: socket.socket,
                 dst: socket.socket, pool: BufferPool, stream: Stream,
                 done: Callable[[], None], failed: Callable[[OSError], None],
                 full: Callable[[int], None] | None = None) -> None:
        self.loop, self.src, self.dst, self.pool, self.stream = loop, src, dst, pool, stream
        self.sfd, self.dfd = src.fileno(), dst.fileno()
        self.done, self.failed, self.full = done, failed, full
        self.buf: bytearray | None = None  # lent while a chunk is copied
        self.pipe: tuple[int, int] | None = None  # lent while a chunk is spliced
        self.start_at = self.end_at = 0  # buf[start_at:end_at] or (pipe) end_at bytes: not sent
        self.bulk = False  # a read filled a whole buffer: splice from now on
        self.writing = False  # dst is full: src is not read until dst has taken the rest
        self.over = False  # ended or stopped: reports are ignored

    def start(self, try_first: bool = True, watched_next: bool = False) -> None:
        """try_first: read now (whatever src holds already was reported before we started,
        or comes with its connection); else at src's next report. watched_next: src is
        added to the epoll right after this (Reactor.watch, which reports at once what src
        holds then, its EOF too), so a short first read need not be followed by one that
        finds nothing (EAGAIN)."""
        if try_first:
            self.readable(watched_next)

    def readable(self, short_ends: bool = False) -> None:
        """src has something (or may have): move it, at most FLOW_BATCH chunks this turn.
        short_ends: a read that did not fill the buffer ends the turn (start())."""
        if self.over or self.writing:
            return
        pool, src, stream = self.pool, self.src, self.stream
        try:
            for _ in range(FLOW_BATCH):
                buf, pipe = self.buf, self.pipe
                if buf is None and pipe is None:
                    pipe = self.pipe = pool.get_pipe() if self.bulk else None
                    if pipe is None:
                        buf = self.buf = pool.get()
                try:
                    n = (src.recv_into(buf) if pipe is None else
                         os.splice(self.sfd, pipe[1], pool.pipe_size, flags=_SPLICE))
                except BlockingIOError:  # nothing more for now: what was lent goes back
                    self._give_back()
                    return
                if n == 0:
                    self._end()
                    return
                stream.bytes += n
                stream.last = time.monotonic()
                self.start_at, self.end_at = 0, n
                if not self._send():  # dst is full: its report resumes us (writable)
                    self.writing = True
                    if self.full is not None:
                        self.full(self.dfd)
                    return
                if buf is not None and n < len(buf) and short_ends:
                    self._give_back()
                    return
                if buf is not None and n == len(buf) and pool.splice and not self.bulk:
                    self.bulk = True  # more waits: a bulk flow
                    self._give_back()
            self.loop.call_soon(self.readable)  # more may wait: the next turn
        except OSError as exc:
            self.failed(exc)

    def _send(self) -> bool:
        """Send what is held; True when all of it went."""
        if self.pipe is None:
            assert self.buf is not None
            try:
                self.start_at += self.dst.send(
                    memoryview(self.buf)[self.start_at:self.end_at])
            except BlockingIOError:
                return False
            return self.start_at == self.end_at
        while self.end_at:
            try:
                self.end_at -= os.splice(self.pipe[0], self.dfd, self.end_at, flags=_SPLICE)
            except BlockingIOError:
                return False
        return True

    def writable(self) -> None:
        """dst may take more: send the rest, then read src again."""
        if self.over or not self.writing:
            return
        try:
            if not self._send():
                return
        except OSError as exc:
            self.failed(exc)
            return
        self.writing = False
        self.readable()

    def _give_back(self) -> None:
        if self.pipe is not None:
            self.pool.put_pipe(self.pipe, empty=self.end_at == 0)
        elif self.buf is not None:
            self.pool.put(self.buf)
        self.buf = self.pipe = None
        self.start_at = self.end_at = 0

    def _end(self) -> None:
        self.stop()
        with suppress(OSError):
            self.dst.shutdown(socket.SHUT_WR)
        self.done()

    def stop(self) -> None:
        """Ignore every later report; return what was lent (a pipe that may still hold bytes
        is closed)."""
        self.over = True
        self._give_back()


def deliver(events: int, reading: Flow, writing: Flow) -> None:
    """A socket's readiness report (reactor.Reactor) to the flow that reads it and the flow
    that writes it."""
    if events & READ:
        reading.readable()
    if events & WRITE:
        writing.writable()


def close(sock: socket.socket, reset: bool = False) -> None:
    """Close; with reset, abortively (RST), so the peer learns that bytes were lost."""
    with suppress(OSError):
        if reset:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
        sock.close()

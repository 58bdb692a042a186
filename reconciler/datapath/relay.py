"""Moving bytes between two sockets on an asyncio loop, with half-close.

A direction's first chunks are copied (recv_into a reused buffer, then send): for a short
request or response that costs less than a pipe. Once a read fills a whole buffer (a bulk
flow), its bytes are spliced (splice(2) through a pipe: socket -> pipe -> socket, pages
moved in the kernel, never copied into Python), as HAProxy's splice-auto does; the loop
still sees every chunk, so half-close, backpressure, resets, byte counts and idle times
work as for a copy. Where no pipe can be had (out of descriptors, BPFSYNC_RELAY=copy),
bulk flows are copied too (which moves about twice what StreamReader and
StreamWriter do). Pipes and buffers come from a shared pool and are held only while data
flows, so an idle connection holds neither: 1,000 idle connections cost sockets and two
pending futures each. Measured in bench/RESULTS.md.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import os
import socket
import struct
import time
from contextlib import suppress
from typing import Any

from reconciler.datapath.fdgate import DescriptorGate

BUFFER_SIZE = 256 * 1024
POOL_KEEP = 64  # buffers kept for reuse; more are allocated under load and then freed
PIPE_SIZE = 256 * 1024  # bytes a pipe holds (and one splice moves) at most
PIPES_KEEP = 16  # empty pipes kept for reuse (two descriptors each)
F_SETPIPE_SZ = 1031
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


async def wait_readable(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
    await _wait(loop, sock, loop.add_reader, loop.remove_reader)


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


async def connect(loop: asyncio.AbstractEventLoop, sock: socket.socket,
                  address: tuple[str, int], timeout: float) -> None:
    """Connect the non-blocking sock to address; OSError with the connect's error,
    TimeoutError after timeout seconds. A backend on this host is usually connected by the
    time connect() returns (the handshake runs within it): then no turn of the loop, and no
    timer, is spent learning it."""
    try:
        sock.connect(address)
        return
    except (BlockingIOError, InterruptedError):  # in progress (as asyncio's sock_connect)
        pass
    try:
        sock.getpeername()
        return
    except OSError:  # ENOTCONN: still in progress, or failed (SO_ERROR says which)
        pass
    async with asyncio.timeout(timeout):  # no task of its own
        await wait_writable(loop, sock)
    err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if err:
        raise OSError(err, os.strerror(err))


class Stream:
    """One direction's progress: counters and the time of the last byte, for idle timeouts."""

    __slots__ = ("bytes", "last")

    def __init__(self) -> None:
        self.bytes = 0
        self.last = time.monotonic()


async def pump(loop: asyncio.AbstractEventLoop, src: socket.socket, dst: socket.socket,
               pool: BufferPool, stream: Stream, try_first: bool = True) -> None:
    """Move src to dst until src's EOF, then half-close dst (its reader sees FIN; the other
    direction keeps flowing). Errors propagate to the caller, which resets both sides.
    try_first: read before waiting (a client's first bytes often come with its connection;
    a backend just connected has rarely sent any)."""
    buf: bytearray | None = None
    pipe: tuple[int, int] | None = None
    held = 0  # bytes in the pipe, not yet in dst
    bulk = False  # a read filled a whole buffer: splice from now on (small ones: copied)
    try:
        while True:
            if buf is None and pipe is None:
                if not try_first:
                    await wait_readable(loop, src)
                try_first = False
                pipe = pool.get_pipe() if bulk else None
                if pipe is None:
                    buf = pool.get()
            try:
                n = (src.recv_into(buf) if pipe is None else
                     os.splice(src.fileno(), pipe[1], pool.pipe_size, flags=_SPLICE))
            except BlockingIOError:  # nothing more for now: what was lent goes back
                if pipe is not None:
                    pool.put_pipe(pipe)
                elif buf is not None:
                    pool.put(buf)
                buf = pipe = None
                continue
            if n == 0:
                with suppress(OSError):
                    dst.shutdown(socket.SHUT_WR)
                return
            stream.bytes += n
            stream.last = time.monotonic()
            if pipe is None:
                assert buf is not None
                try:
                    sent = dst.send(memoryview(buf)[:n])  # all of it, as a rule
                except BlockingIOError:
                    sent = 0
                if sent < n:  # dst is full: wait as it takes the rest (backpressure)
                    await loop.sock_sendall(dst, memoryview(buf)[sent:n])
                if n == len(buf) and pool.splice and not bulk:  # more waits: a bulk flow
                    pool.put(buf)
                    buf, bulk, try_first = None, True, True
                continue
            held = n
            while held:  # into dst, as fast as it takes them (backpressure: we wait)
                try:
                    held -= os.splice(pipe[0], dst.fileno(), held, flags=_SPLICE)
                except BlockingIOError:
                    await wait_writable(loop, dst)
    finally:
        if buf is not None:
            pool.put(buf)
        if pipe is not None:
            pool.put_pipe(pipe, empty=held == 0)


def close(sock: socket.socket, reset: bool = False) -> None:
    """Close; with reset, abortively (RST), so the peer learns that bytes were lost."""
    with suppress(OSError):
        if reset:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
        sock.close()

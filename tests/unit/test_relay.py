"""The relay moves bytes by splice through a lent pipe, or copies when no pipe can be had:
either way every byte arrives in order, the count is exact, src's EOF half-closes dst, a
reader that stops reading stops the flow (backpressure) until it reads again, an error is
reported, and no pipe or descriptor is left behind."""

from __future__ import annotations

import asyncio
import os
import select
import socket

import pytest

from reconciler.datapath import relay
from reconciler.datapath.fdgate import DescriptorGate
from reconciler.datapath.reactor import READ, WRITE, Reactor


def _tcp_pair() -> tuple[socket.socket, socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as server:
        a = socket.create_connection(server.getsockname())
        b, _ = server.accept()
    for s in (a, b):
        s.setblocking(False)
    return a, b


def _flow(loop: asyncio.AbstractEventLoop, src: socket.socket, dst: socket.socket,
          pool: relay.BufferPool, stream: relay.Stream,
          on_demand: bool = False) -> tuple[relay.Flow, asyncio.Future[str]]:
    """A flow told of its sockets' readiness as a session tells it (reactor.Reactor, edge-
    triggered), and a future that says how it ended: "done" or the error's name.
    on_demand: dst's writability is watched only once the flow finds dst full."""
    ended: asyncio.Future[str] = loop.create_future()

    def done() -> None:
        ended.set_result("done")

    def failed(exc: OSError) -> None:
        ended.set_result(type(exc).__name__)

    reactor = Reactor(loop)
    flow = relay.Flow(loop, src, dst, pool, stream, done, failed,
                      reactor.want_write if on_demand else None)
    reactor.watch(src.fileno(), lambda events: events & READ and flow.readable())
    reactor.watch(dst.fileno(), lambda events: events & WRITE and flow.writable(),
                  write=not on_demand)
    ended.add_done_callback(lambda _: reactor.close())
    return flow, ended


async def _through(pool: relay.BufferPool, data: bytes) -> tuple[bytes, relay.Stream]:
    loop = asyncio.get_running_loop()
    client, src = _tcp_pair()  # client writes into src's peer...
    dst, reader = _tcp_pair()  # ...the relay moves src to dst, reader reads it
    stream = relay.Stream()
    flow, ended = _flow(loop, src, dst, pool, stream)
    flow.start(try_first=False)
    await loop.sock_sendall(client, data)
    client.shutdown(socket.SHUT_WR)
    got = bytearray()
    while chunk := await loop.sock_recv(reader, 1 << 20):  # ends at the relayed FIN
        got += chunk
    assert await ended == "done" and flow.over
    flow.stop()
    for s in (client, src, dst, reader):
        s.close()
    return bytes(got), stream


@pytest.mark.parametrize("splice", [True, False])
def test_bytes_arrive_counted_and_half_closed(splice: bool) -> None:
    data = os.urandom(8 << 20)
    pool = relay.BufferPool(splice=splice)
    got, stream = asyncio.run(_through(pool, data))
    assert got == data and stream.bytes == len(data)
    assert pool.gate.pipes == (1 if splice else 0)  # one kept for reuse, empty; none lent


def test_a_short_exchange_is_copied_without_a_pipe() -> None:
    pool = relay.BufferPool(splice=True)
    got, stream = asyncio.run(_through(pool, b"ping\n"))
    assert got == b"ping\n" and stream.bytes == 5 and pool.gate.pipes == 0


def test_no_room_for_a_pipe_means_a_copy() -> None:
    gate = DescriptorGate(limit=100, base=100)  # nothing left for pipes
    pool = relay.BufferPool(splice=True, gate=gate)
    assert pool.get_pipe() is None
    data = os.urandom(1 << 20)
    got, stream = asyncio.run(_through(pool, data))
    assert got == data and stream.bytes == len(data) and gate.pipes == 0


def test_a_pipe_that_may_hold_bytes_is_closed_not_kept() -> None:
    pool = relay.BufferPool(splice=True)
    pipe = pool.get_pipe()
    assert pipe is not None and pool.gate.pipes == 1
    pool.put_pipe(pipe, empty=False)
    assert pool.gate.pipes == 0
    with pytest.raises(OSError):
        os.fstat(pipe[0])


async def _stalled_reader(on_demand: bool) -> tuple[int, int, int, str]:
    """A reader that stops reading: the flow stops reading its source once dst is full (what
    it holds stays bounded), and moves the rest once the reader reads again; the reader's
    reset is reported as an error."""
    loop = asyncio.get_running_loop()
    client, src = _tcp_pair()
    dst, reader = _tcp_pair()
    for s in (src, dst, reader):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
    pool = relay.BufferPool(splice=True)
    stream = relay.Stream()
    flow, ended = _flow(loop, src, dst, pool, stream, on_demand)
    flow.start(try_first=True)
    sent = 0
    chunk = b"x" * (1 << 20)
    client.setblocking(False)
    deadline = loop.time() + 30
    while loop.time() < deadline:  # until the client can send no more: all buffers are full
        try:
            sent += client.send(chunk)
        except BlockingIOError:
            if flow.writing:  # dst is full: src is not read
                break
            await asyncio.sleep(0.01)  # the flow moves what it can meanwhile
    moved_while_stalled = stream.bytes
    writing = flow.writing
    got = 0
    client.shutdown(socket.SHUT_WR)
    while chunk := await loop.sock_recv(reader, 1 << 20):
        got += len(chunk)
    result = await ended
    flow.stop()
    for s in (client, src, dst, reader):
        s.close()
    assert writing, "the flow did not stop reading while dst was full"
    return sent, moved_while_stalled, got, result


@pytest.mark.parametrize("on_demand", [False, True])
def test_a_stalled_reader_stops_the_flow_and_every_byte_arrives_once_it_reads(
        on_demand: bool) -> None:
    """on_demand: dst's writability is watched from the moment it was found full
    (Reactor.want_write), as a session watches its sockets."""
    sent, moved, got, result = asyncio.run(_stalled_reader(on_demand))
    assert moved < sent and got == sent and result == "done"


async def _reset_reader() -> str:
    loop = asyncio.get_running_loop()
    client, src = _tcp_pair()
    dst, reader = _tcp_pair()
    flow, ended = _flow(loop, src, dst, relay.BufferPool(), relay.Stream())
    flow.start(try_first=False)
    relay.close(reader, reset=True)  # the reader goes away abortively
    await loop.sock_sendall(client, b"x" * 100_000)
    result = await asyncio.wait_for(ended, 30)
    flow.stop()
    for s in (client, src, dst):
        s.close()
    return result


def test_an_error_of_dst_is_reported() -> None:
    assert asyncio.run(_reset_reader()) in ("BrokenPipeError", "ConnectionResetError")


async def _dial(address: tuple[str, int]) -> socket.socket:
    """As the proxy dials (relay.connect): done at once, or once the socket is writable."""
    sock = socket.socket()
    sock.setblocking(False)
    try:
        await relay.connect(asyncio.get_running_loop(), sock, address, 10)
    except OSError:
        sock.close()
        raise
    return sock


def test_a_dial_is_connected_or_fails_with_the_connects_error() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        sock = asyncio.run(_dial(server.getsockname()))
        accepted, _ = server.accept()
        assert sock.getpeername() == accepted.getsockname()
        sock.close()
        accepted.close()
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()
        with pytest.raises(ConnectionRefusedError):
            asyncio.run(_dial(closed))


def test_writability_is_reported_where_it_is_wanted() -> None:
    """watch(write=False): a writable socket is not reported; want_write reports it at once
    (nothing missed between a send's EAGAIN and the ask), and once only; watch() alone
    reports it at once."""
    async def main() -> list[list[int]]:
        reactor = Reactor(asyncio.get_running_loop())
        a, b = _tcp_pair()
        seen: list[list[int]] = []
        reports: list[int] = []
        reactor.watch(a.fileno(), reports.append, write=False)
        reactor._dispatch()
        seen.append(reports[:])
        reactor.want_write(a.fileno())
        reactor.want_write(a.fileno())  # asked again: nothing changes
        reactor._dispatch()
        reactor._dispatch()
        seen.append(reports[:])
        reports.clear()
        reactor.watch(b.fileno(), reports.append)
        reactor._dispatch()
        seen.append(reports[:])
        reactor.close()
        a.close()
        b.close()
        return seen

    unwatched, wanted, watched = asyncio.run(main())
    assert unwatched == []
    assert len(wanted) == 1 and wanted[0] & WRITE
    assert len(watched) == 1 and watched[0] & WRITE


def test_a_short_first_read_then_the_watch_misses_nothing() -> None:
    """start(watched_next=True): the first read stops short of EAGAIN because src is
    watched right after, and the watch reports what came meanwhile: bytes that arrived
    between the read and the watch, and an EOF that came with the first bytes."""
    async def main(eof_first: bool) -> tuple[bytes, str]:
        loop = asyncio.get_running_loop()
        client, src = _tcp_pair()
        dst, reader = _tcp_pair()
        ended: asyncio.Future[str] = loop.create_future()
        reactor = Reactor(loop)
        flow = relay.Flow(loop, src, dst, relay.BufferPool(), relay.Stream(),
                          lambda: ended.set_result("done"),
                          lambda exc: ended.set_result(type(exc).__name__), reactor.want_write)
        client.sendall(b"ping")
        if eof_first:
            client.shutdown(socket.SHUT_WR)
        await _until_readable(src)
        flow.start(try_first=True, watched_next=True)
        if not eof_first:  # more, and the EOF, before src is watched
            client.sendall(b"pong")
            client.shutdown(socket.SHUT_WR)
            await _until_readable(src)
        reactor.watch(src.fileno(), lambda events: events & READ and flow.readable(),
                      write=False)
        reactor.watch(dst.fileno(), lambda events: events & WRITE and flow.writable(),
                      write=False)
        got = bytearray()
        while chunk := await loop.sock_recv(reader, 1 << 16):
            got += chunk
        result = await asyncio.wait_for(ended, 30)
        reactor.close()
        for s in (client, src, dst, reader):
            s.close()
        return bytes(got), result

    for eof_first, want in ((True, b"ping"), (False, b"pingpong")):  # bounded: a miss hangs
        assert asyncio.run(asyncio.wait_for(main(eof_first), 60)) == (want, "done")


async def _until_readable(sock: socket.socket) -> None:
    """Until sock has bytes (or its EOF) to read: the peer's send has arrived."""
    while not select.select([sock], [], [], 0)[0]:
        await asyncio.sleep(0.01)

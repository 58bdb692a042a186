"""The relay moves bytes by splice through a lent pipe, or copies when no pipe can be had:
either way every byte arrives in order, the count is exact, src's EOF half-closes dst, a
reader that stops reading stops the flow (backpressure) until it reads again, an error is
reported, and no pipe or descriptor is left behind."""

from __future__ import annotations

import asyncio
import os
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
          pool: relay.BufferPool, stream: relay.Stream) -> tuple[relay.Flow, asyncio.Future[str]]:
    """A flow told of its sockets' readiness as a session tells it (reactor.Reactor, edge-
    triggered), and a future that says how it ended: "done" or the error's name."""
    ended: asyncio.Future[str] = loop.create_future()

    def done() -> None:
        ended.set_result("done")

    def failed(exc: OSError) -> None:
        ended.set_result(type(exc).__name__)

    flow = relay.Flow(loop, src, dst, pool, stream, done, failed)
    reactor = Reactor(loop)
    reactor.watch(src.fileno(), lambda events: events & READ and flow.readable())
    reactor.watch(dst.fileno(), lambda events: events & WRITE and flow.writable())
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


async def _stalled_reader() -> tuple[int, int, int, str]:
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
    flow, ended = _flow(loop, src, dst, pool, stream)
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


def test_a_stalled_reader_stops_the_flow_and_every_byte_arrives_once_it_reads() -> None:
    sent, moved, got, result = asyncio.run(_stalled_reader())
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

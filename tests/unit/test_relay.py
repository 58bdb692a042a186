"""The relay moves bytes by splice through a lent pipe, or copies when no pipe can be had:
either way every byte arrives in order, the count is exact, src's EOF half-closes dst, and
no pipe or descriptor is left behind."""

from __future__ import annotations

import asyncio
import os
import socket

import pytest

from reconciler.datapath import relay
from reconciler.datapath.fdgate import DescriptorGate


def _tcp_pair() -> tuple[socket.socket, socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as server:
        a = socket.create_connection(server.getsockname())
        b, _ = server.accept()
    for s in (a, b):
        s.setblocking(False)
    return a, b


async def _through(pool: relay.BufferPool, data: bytes) -> tuple[bytes, relay.Stream]:
    loop = asyncio.get_running_loop()
    client, src = _tcp_pair()  # client writes into src's peer...
    dst, reader = _tcp_pair()  # ...the relay moves src to dst, reader reads it
    stream = relay.Stream()
    pump = loop.create_task(relay.pump(loop, src, dst, pool, stream))
    await loop.sock_sendall(client, data)
    client.shutdown(socket.SHUT_WR)
    got = bytearray()
    while chunk := await loop.sock_recv(reader, 1 << 20):  # ends at the relayed FIN
        got += chunk
    await pump
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

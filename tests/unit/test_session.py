"""A proxy's connections on its reactor (datapath/session.py, reactor.py), end to end on
loopback in one process: bytes both ways with half-close, a refused backend retried on the
next, a backend that speaks first or ends its side first, an idle connection reset, a
client accepted beyond the room another worker took; and afterwards nothing is left
watched, open or counted; a proxy standing by; writability watched only where it is
awaited."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import select
import socket
import struct
import threading
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import TypeVar

import pytest

from reconciler.datapath import relay, shared
from reconciler.datapath.proxyserver import ProxyServer
from reconciler.datapath.selector import ExclusiveEpollSelector
from reconciler.datapath.session import Session
from reconciler.steering.model import HealthCheck
from reconciler.steering.proxyconf import RuntimeConfig
from tests.unit.helpers import epoll_registrations

LOOP = "127.0.0.1"
T = TypeVar("T")


def _config(*ports: int) -> RuntimeConfig:
    return RuntimeConfig(1, "unit", tuple((LOOP, p) for p in ports), "roundrobin",
                         HealthCheck(enabled=False), connect_timeout=5.0, idle_timeout=60.0,
                         drain_timeout=None, max_connections=1000, resolve_interval=60.0)


async def _backend(handle: Callable[[asyncio.StreamReader, asyncio.StreamWriter],
                                    Awaitable[None]]) -> tuple[asyncio.Server, int]:
    server = await asyncio.start_server(handle, LOOP, 0)
    return server, server.sockets[0].getsockname()[1]


async def _upper(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Everything it reads, upper-cased, then its own EOF once the client's came."""
    while data := await reader.read(1 << 16):
        writer.write(data.upper())
        await writer.drain()
    writer.close()


async def _proxy(config: RuntimeConfig,
                 view: shared.Shared | None = None) -> tuple[ProxyServer, int]:
    """A proxy on a listener of its own (view: its worker's view of the shared table)."""
    listener = socket.create_server((LOOP, 0))
    proxy = ProxyServer([listener], config, relay.BufferPool(), shared=view)
    proxy.start()
    return proxy, listener.getsockname()[1]


async def _exchange(port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection(LOOP, port)
    writer.write(data)
    writer.write_eof()
    got = await reader.read()
    writer.close()
    return got


def _run(main: Awaitable[T], worker_loop: bool = False) -> T:
    """Run main, bounded: a connection that never ends fails the test, not the suite.
    worker_loop: on a worker's loop (its selector takes the reactor's sockets on its own
    epoll), not asyncio's default (the reactor nests an epoll of its own)."""
    async def bounded() -> T:
        return await asyncio.wait_for(main, 60)
    if not worker_loop:
        return asyncio.run(bounded())
    factory = partial(asyncio.SelectorEventLoop, ExclusiveEpollSelector(set()))
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(bounded())


def _shares_the_loops_epoll(proxy: ProxyServer) -> bool:
    host = getattr(asyncio.get_running_loop(), "_selector", None)
    return host is not None and proxy.reactor.fileno() == host.fileno()


async def _until(check: Callable[[], bool]) -> None:
    async with asyncio.timeout(30):
        while not check():
            await asyncio.sleep(0.01)


def _settled(proxy: ProxyServer) -> bool:
    return not proxy.conns and proxy.reactor.watched == 0 and proxy.gate.conns == 0


@pytest.mark.parametrize("worker_loop", [False, True])
def test_bytes_both_ways_then_nothing_is_left(worker_loop: bool) -> None:
    async def main() -> tuple[list[bytes], ProxyServer]:
        server, port = await _backend(_upper)
        proxy, front = await _proxy(_config(port))
        assert _shares_the_loops_epoll(proxy) == worker_loop
        got = await asyncio.gather(*(_exchange(front, b"abc%d" % i * 10_000)
                                     for i in range(20)))
        await _until(lambda: _settled(proxy))
        proxy.close()
        server.close()
        return got, proxy

    got, proxy = _run(main(), worker_loop)
    assert got == [b"ABC%d" % i * 10_000 for i in range(20)]
    c = proxy.counters
    assert (c.accepted, c.proxied, c.reset) == (20, 20, 0)
    assert c.bytes_in == c.bytes_out == sum(len(b"abc%d" % i) * 10_000 for i in range(20))


def test_a_refused_backend_is_retried_on_the_next() -> None:
    with socket.socket() as closed:  # a port nobody listens on
        closed.bind((LOOP, 0))
        refused = closed.getsockname()[1]

        async def main() -> tuple[bytes, ProxyServer]:
            server, port = await _backend(_upper)
            proxy, front = await _proxy(_config(refused, port))
            got = await _exchange(front, b"x")
            await _until(lambda: _settled(proxy))
            proxy.close()
            server.close()
            return got, proxy

        got, proxy = _run(main())
    assert got == b"X"
    assert (proxy.counters.connect_failed, proxy.counters.proxied) == (1, 1)


def test_a_backend_that_speaks_first_is_heard() -> None:
    async def banner(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 ready\r\n")
        await writer.drain()
        await reader.read()
        writer.close()

    async def main() -> bytes:
        server, port = await _backend(banner)
        proxy, front = await _proxy(_config(port))
        reader, writer = await asyncio.open_connection(LOOP, front)
        got = await reader.readline()  # before the client has sent anything
        writer.close()
        await _until(lambda: _settled(proxy))
        proxy.close()
        server.close()
        return got

    assert _run(main()) == b"220 ready\r\n"


def test_an_aborted_connection_is_reset_on_both_sides() -> None:
    held: list[asyncio.StreamReader] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(reader)
        await reader.read()  # until the proxy's reset
        writer.close()

    async def main() -> tuple[str, ProxyServer]:
        server, port = await _backend(silent)
        proxy, front = await _proxy(_config(port))
        reader, writer = await asyncio.open_connection(LOOP, front)
        await _until(lambda: bool(held) and len(proxy.conns) == 1)
        next(iter(proxy.conns)).abort("idle")
        try:
            outcome = "eof" if await reader.read() == b"" else "data"
        except ConnectionResetError:
            outcome = "reset"
        writer.close()
        await _until(lambda: _settled(proxy))
        proxy.close()
        server.close()
        return outcome, proxy

    outcome, proxy = _run(main())
    assert outcome == "reset" and proxy.counters.idle_closed == 1


def test_a_closed_listeners_descriptor_reused_at_once_stays_watched() -> None:
    """close() unwatches the listeners; their accept loops end a turn later and must not
    unwatch a descriptor that meanwhile belongs to someone else."""
    async def main() -> tuple[bool, bool]:
        proxy, _ = await _proxy(_config(9))
        await _until(lambda: bool(proxy._watched))
        fd = proxy.listeners[0].fileno()
        proxy.close()
        a, b = socket.socketpair()  # the lowest free descriptors: the listener's among them
        mine, peer = (a, b) if a.fileno() == fd else (b, a)
        loop = asyncio.get_running_loop()
        seen = loop.create_future()
        loop.add_reader(mine.fileno(), lambda: seen.done() or seen.set_result(True))
        for _ in range(3):  # the accept loop's cancellation runs meanwhile
            await asyncio.sleep(0)
        peer.send(b"!")
        try:
            heard = await asyncio.wait_for(seen, 10)
        except TimeoutError:
            heard = False
        loop.remove_reader(mine.fileno())
        reused = mine.fileno() == fd
        a.close()
        b.close()
        return reused, heard

    reused, heard = _run(main())
    assert reused and heard


class _Stale(shared.Shared):
    """A worker's view whose unlocked look at every worker's connections is always out of
    date (another worker took places since): only the locked count is right."""

    def total(self, slot: int) -> int:
        return 0


def test_accepted_beyond_the_room_another_worker_took_waits_uncounted_then_is_served(
        tmp_path: Path) -> None:
    """Accepts come before the lock: clients accepted while another worker took the last
    places wait (parked: not counted, not served) and are served once a place is free;
    every worker's connections never exceed maxConnections."""
    path = tmp_path / "shared"
    shared.create(path)
    mine, other = _Stale(path, 0, 2), shared.Shared(path, 1, 2)
    totals: list[int] = []

    async def main() -> tuple[list[bytes], ProxyServer, int]:
        server, port = await _backend(_upper)
        config = dataclasses.replace(_config(port), max_connections=2)
        slot = config.slot
        proxy, front = await _proxy(config, mine)
        assert other.admit(slot, 2)  # the other worker holds one place
        clients = [await asyncio.open_connection(LOOP, front) for _ in range(3)]
        for _, writer in clients:
            writer.write(b"hi")
        # one place was left: one is served, one more accepted waits, uncounted
        await _until(lambda: proxy.counters.proxied == 1 and len(proxy._parked) == 1)
        parked = len(proxy._parked)
        totals.append(other.total(slot))
        other.release(slot)  # the other worker's connection ended: a place is free
        for _, writer in clients:
            writer.write_eof()
        got = []
        for reader, _ in clients:
            got.append(await reader.read())
            totals.append(other.total(slot))
        await _until(lambda: _settled(proxy))
        proxy.close()
        server.close()
        return got, proxy, parked

    got, proxy, parked = _run(main())
    assert parked == 1 and got == [b"HI"] * 3 and proxy.counters.proxied == 3
    assert max(totals) <= 2


@pytest.mark.parametrize("worker_loop", [False, True])
def test_a_backend_that_answers_and_half_closes_at_once_still_hears_the_client(
        monkeypatch: pytest.MonkeyPatch, worker_loop: bool) -> None:
    """The backend's side can end first, before the client's side has started: its answer
    and FIN came with the connect's completion (as from a backend on another host, whose
    connect completes by report). The client still gets the answer, and its bytes still
    reach the backend."""
    heard: list[bytes] = []
    backend = socket.create_server((LOOP, 0))

    def answer_first() -> None:  # a thread: it answers while the proxy's loop is held
        conn, _ = backend.accept()
        with conn:
            conn.sendall(b"220 bye\r\n")
            conn.shutdown(socket.SHUT_WR)  # its side ends here
            got = b""
            while chunk := conn.recv(4096):
                got += chunk
            heard.append(got)

    real = relay.start_connect

    def in_progress(sock: socket.socket, address: tuple[str, int]) -> bool:
        """Connect, wait for the answer and its FIN, and say the connect is in progress."""
        real(sock, address)
        select.select([sock], [], [], 10)
        return False

    monkeypatch.setattr(relay, "start_connect", in_progress)

    async def main() -> bytes:
        proxy, front = await _proxy(_config(backend.getsockname()[1]))
        reader, writer = await asyncio.open_connection(LOOP, front)
        got = await reader.read()  # the answer, then EOF
        writer.write(b"QUIT\r\n")
        writer.write_eof()
        await _until(lambda: bool(heard) and _settled(proxy))
        writer.close()
        proxy.close()
        return got

    thread = threading.Thread(target=answer_first, daemon=True)
    thread.start()
    try:
        assert _run(main(), worker_loop) == b"220 bye\r\n" and heard == [b"QUIT\r\n"]
    finally:
        backend.close()
        thread.join(10)


def _queued(listener: socket.socket) -> int:
    """Connections waiting in listener's accept queue, as the kernel counts them (TCP_INFO
    of a listener: tcpi_unacked)."""
    return struct.unpack_from("=I", listener.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO,
                                                        104), 24)[0]


def test_a_proxy_standing_by_leaves_its_queue_alone_then_serves_it() -> None:
    """A standby worker's proxy (datapath/standby.py) watches no listener: connections wait
    in the kernel's queue, for the other workers; asked to accept again, it serves them."""
    async def main() -> tuple[list[bytes], list[bytes], ProxyServer]:
        server, port = await _backend(_upper)
        proxy, front = await _proxy(_config(port))
        first = [await _exchange(front, b"one")]  # watching, as a first worker does
        proxy.stand_by(True)
        waiting = [asyncio.ensure_future(_exchange(front, b"two%d" % i)) for i in range(3)]
        listener = proxy.listeners[0]
        await _until(lambda: _queued(listener) == 3)  # handshaken, and none accepted
        assert proxy.counters.accepted == 1
        proxy.stand_by(False)
        later = await asyncio.gather(*waiting)
        await _until(lambda: _settled(proxy))
        proxy.close()
        server.close()
        return first, later, proxy

    first, later, proxy = _run(main())
    assert first == [b"ONE"] and later == [b"TWO%d" % i for i in range(3)]
    assert (proxy.counters.accepted, proxy.counters.proxied) == (4, 4)


async def _relaying(handle: Callable[[asyncio.StreamReader, asyncio.StreamWriter],
                                     Awaitable[None]]
                    ) -> tuple[asyncio.Server, ProxyServer, asyncio.StreamReader,
                               asyncio.StreamWriter, Session]:
    """A backend that runs handle, a proxy to it, and a client whose connection through it
    is relaying (a line went both ways, answered as _upper does): its session."""
    server, port = await _backend(handle)
    proxy, front = await _proxy(_config(port))
    reader, writer = await asyncio.open_connection(LOOP, front)
    writer.write(b"x\n")
    assert await reader.readexactly(2) == b"X\n"
    (session,) = proxy.conns
    return server, proxy, reader, writer, session


async def _close(server: asyncio.Server, proxy: ProxyServer, writer: asyncio.StreamWriter) -> None:
    """The client's end, then the proxy's (once nothing is left) and the backend's."""
    writer.close()
    await _until(lambda: _settled(proxy))
    proxy.close()
    server.close()


async def _big_on_request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Each line upper-cased; "big" is answered with 32 MiB."""
    while line := await reader.readline():
        writer.write(b"y" * (32 << 20) if line == b"big\n" else line.upper())
        await writer.drain()
    writer.close()


@pytest.mark.parametrize("worker_loop", [False, True])
def test_writability_is_watched_only_where_it_is_awaited(worker_loop: bool) -> None:
    """A connected connection's sockets are watched for reading alone: added for writing, a
    writable socket is reported at once, a turn of the worker's loop for nothing per socket
    (bench/RESULTS.md). A client that stops reading is watched for writing from then on,
    and gets every byte once it reads."""
    async def main() -> tuple[int, int, int, int]:
        server, proxy, reader, writer, session = await _relaying(_big_on_request)
        assert session.backend is not None
        client, backend = session.client.fileno(), session.backend.fileno()
        epoll = proxy.reactor.fileno()
        before = epoll_registrations(epoll)
        writer.write(b"big\n")  # 32 MiB back, which this client does not read yet
        await _until(lambda: bool(epoll_registrations(epoll)[client] & select.EPOLLOUT))
        during = epoll_registrations(epoll)
        got = len(await reader.readexactly(32 << 20))
        await _close(server, proxy, writer)
        return before[client], before[backend], during[backend], got

    client, backend, backend_later, got = _run(main(), worker_loop)
    assert not client & select.EPOLLOUT and not backend & select.EPOLLOUT
    assert client & select.EPOLLIN and backend & select.EPOLLIN and client & select.EPOLLET
    assert not backend_later & select.EPOLLOUT  # it never was full
    assert got == 32 << 20


def test_both_sockets_of_a_connection_are_non_blocking_and_without_nagle() -> None:
    """As the kernel holds them: the client's TCP_NODELAY inherited from the listener, the
    backend's socket made non-blocking by socket() itself."""
    async def main() -> list[tuple[int, int, bool, bool]]:
        server, proxy, _, writer, session = await _relaying(_upper)
        assert session.backend is not None
        got = [(s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY),
                s.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE),
                os.get_blocking(s.fileno()), s.getblocking())
               for s in (session.client, session.backend)]
        await _close(server, proxy, writer)
        return got

    assert _run(main()) == [(1, socket.SOCK_STREAM, False, False)] * 2

"""Backend connections opened ahead (datapath/preconnect.py), end to end on loopback in one
process: clients get connections the backend accepted before they came, each once; a
replacement follows; a greeting sent first reaches the client; a connection the backend
closed is never handed to a client, not even when its close is still unreported; standing
by, a backend removed and closing the proxy keep none; nothing is left watched or counted."""

from __future__ import annotations

import asyncio
import dataclasses
import socket

from reconciler.datapath.proxyserver import ProxyServer
from tests.unit.test_session import LOOP, _backend, _config, _exchange, _proxy, _run, _until


class _Accepts:
    """A backend that upper-cases what it reads; it notes the order in which it accepted
    connections and which of them carried a client's bytes."""

    def __init__(self, greeting: bytes = b"") -> None:
        self.accepted = 0
        self.used: list[int] = []
        self.greeting = greeting

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        index = self.accepted
        if self.greeting:
            writer.write(self.greeting)
        first = True
        while data := await reader.read(1 << 16):
            if first:
                self.used.append(index)
                first = False
            writer.write(data.upper())
            await writer.drain()
        writer.close()


def _spares(proxy: ProxyServer) -> int:
    return proxy.preconnects.ready


def _nothing_left(proxy: ProxyServer) -> bool:
    return (not proxy.conns and proxy.reactor.watched == 0 and proxy.gate.conns == 0
            and proxy.gate.spares == 0)


def test_clients_get_connections_opened_before_they_came_each_once() -> None:
    async def main() -> tuple[_Accepts, ProxyServer, list[bytes]]:
        backend = _Accepts()
        server, port = await _backend(backend)
        proxy, front = await _proxy(dataclasses.replace(_config(port), preconnect=2))
        await _until(lambda: backend.accepted == 2 and _spares(proxy) == 2)
        got = [await _exchange(front, b"abc"), await _exchange(front, b"def")]
        # replaced: two ahead, two replacements, and never one per client besides
        await _until(lambda: _spares(proxy) == 2 and not proxy.conns and backend.accepted >= 4)
        accepted = backend.accepted
        proxy.close()
        await _until(lambda: _nothing_left(proxy))
        server.close()
        assert accepted == 4
        return backend, proxy, got

    backend, proxy, got = _run(main())
    assert got == [b"ABC", b"DEF"]
    assert backend.used == [1, 2]  # the ones accepted before any client, oldest first
    c = proxy.counters
    assert (c.proxied, c.preconnect_used, c.preconnect_dropped) == (2, 2, 0)


def test_a_greeting_sent_before_the_client_came_reaches_it() -> None:
    async def main() -> bytes:
        backend = _Accepts(greeting=b"220 ready\r\n")
        server, port = await _backend(backend)
        proxy, front = await _proxy(dataclasses.replace(_config(port), preconnect=1))
        await _until(lambda: _spares(proxy) == 1)
        spare = proxy.preconnects.spares[proxy.pool.targets[0]][0].sock
        await _until(lambda: _peek(spare) != b"-")  # the greeting waits in it
        reader, writer = await asyncio.open_connection(LOOP, front)
        got = await reader.readline()
        writer.close()
        assert proxy.counters.preconnect_used == 1
        proxy.close()
        server.close()
        return got

    assert _run(main()) == b"220 ready\r\n"


def _peek(sock: socket.socket) -> bytes:
    try:
        return sock.recv(16, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except BlockingIOError:
        return b"-"


def test_a_connection_the_backend_closed_is_never_handed_to_a_client() -> None:
    """Closed while waiting: dropped on its report. Closed just before a client takes it
    (its report not delivered yet): the take's peek sees the end and drops it too."""
    with socket.create_server((LOOP, 0)) as listener:
        port = listener.getsockname()[1]

        async def main() -> tuple[ProxyServer, bytes, int]:
            proxy, _ = await _proxy(dataclasses.replace(_config(port), preconnect=2))
            await _until(lambda: _spares(proxy) == 2)
            first, _ = listener.accept()
            first.close()  # reported: dropped
            await _until(lambda: _spares(proxy) == 1)
            second, _ = listener.accept()
            second.close()
            target = proxy.pool.targets[0]
            taken = proxy.preconnects.take(target)  # before the loop has heard of it
            dropped = proxy.counters.preconnect_dropped
            proxy.close()
            await _until(lambda: _nothing_left(proxy))
            return proxy, b"" if taken is None else b"taken", dropped

        proxy, taken, dropped = _run(main())
    assert taken == b""
    assert dropped == 2 and proxy.counters.preconnect_used == 0


def test_standing_by_or_losing_the_backend_keeps_none() -> None:
    async def main() -> None:
        backend = _Accepts()
        server, port = await _backend(backend)
        proxy, _ = await _proxy(dataclasses.replace(_config(port), preconnect=3))
        await _until(lambda: _spares(proxy) == 3)
        proxy.stand_by(True)
        assert _spares(proxy) == 0 and proxy.gate.spares == 0 and proxy.reactor.watched == 0
        proxy.stand_by(False)
        await _until(lambda: _spares(proxy) == 3)
        proxy.update(dataclasses.replace(proxy.config, preconnect=1))
        assert _spares(proxy) == 1
        proxy.update(dataclasses.replace(proxy.config, backends=()))
        await _until(lambda: not proxy.pool.targets)
        assert _spares(proxy) == 0 and proxy.gate.spares == 0
        assert proxy.counters.preconnect_dropped == 0  # let go, not failed
        proxy.close()
        server.close()

    _run(main())


def test_a_refused_connect_is_counted_and_not_retried_at_once() -> None:
    with socket.socket() as closed:  # a port nobody listens on
        closed.bind((LOOP, 0))
        refused = closed.getsockname()[1]

        async def main() -> ProxyServer:
            proxy, _ = await _proxy(dataclasses.replace(_config(refused), preconnect=4))
            await _until(lambda: proxy.counters.preconnect_dropped >= 1)
            await _until(lambda: proxy.gate.spares == 0)
            proxy.close()
            return proxy

        proxy = _run(main())
    # once per sweep at most (the sweep is a second away): the first four, no more
    assert proxy.counters.preconnect_dropped == 4

"""What a proxy knows of its backends: their addresses (hostnames resolved again and again)
and their health (one task per backend address, a TCP connect every interval; the pool,
balancer.Pool, counts rises and falls and takes a backend out or back)."""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Protocol

from reconciler.datapath import relay
from reconciler.datapath.addresses import addresses, family, is_address
from reconciler.datapath.balancer import Pool, Target
from reconciler.datapath.fdgate import EXHAUSTED
from reconciler.steering.proxyconf import RuntimeConfig

log = logging.getLogger("bpfsync.proxy")


async def resolve(proxy: str, backends: tuple[tuple[str, int], ...],
                  resolved: dict[tuple[str, int], list[str]]) -> None:
    """resolved[(host, port)]: the addresses of each backend now. A hostname that does not
    resolve keeps the addresses it had, or none (kept out until it resolves)."""
    loop = asyncio.get_running_loop()
    for host, port in backends:
        if is_address(host):
            resolved[(host, port)] = [host]
            continue
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            addrs = addresses(infos)
            if addrs != resolved.get((host, port)):
                log.info("proxy %s: %s resolves to %s", proxy, host, ", ".join(addrs))
            resolved[(host, port)] = addrs
        except OSError as exc:
            if (host, port) not in resolved:
                log.warning("proxy %s: cannot resolve %s: %s (kept out until it resolves)",
                            proxy, host, exc)
                resolved[(host, port)] = []


class Checked(Protocol):
    """What a check reads of its proxy: the settings now (they may change) and the pool."""

    config: RuntimeConfig
    pool: Pool


async def check_loop(proxy: Checked, target: Target) -> None:
    """Check target until cancelled, with the proxy's health settings of each round."""
    loop = asyncio.get_running_loop()
    while True:
        h = proxy.config.health
        ok = True
        try:
            sock = socket.socket(family(target.address), socket.SOCK_STREAM)
        except OSError as exc:  # out of descriptors: says nothing of the backend
            if exc.errno not in EXHAUSTED:
                raise
            await asyncio.sleep(h.interval_ms / 1000)
            continue
        sock.setblocking(False)
        try:
            await relay.connect(loop, sock, (target.address, target.port),
                                h.timeout_ms / 1000)
        except (OSError, TimeoutError):
            ok = False
        finally:
            relay.close(sock)
        change = proxy.pool.record(target, ok)
        if change:
            log.warning("proxy %s: backend %s is %s", proxy.config.name, target, change)
        await asyncio.sleep(h.interval_ms / 1000)

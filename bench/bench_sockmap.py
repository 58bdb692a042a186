"""The kernel path the proxy does not take (yet): is splicing two sockets with a sockhash and
an sk_skb stream verdict program (bpf_sk_redirect_hash) faster than the worker's relay?

One bulk download per round through a scratch proxy in a scratch namespace, three ways,
interleaved, medians over rounds:

  direct   client -> backend
  relay    client -> proxy (reconciler.datapath.relay.Flow, the worker's code: copy, then
           splice(2) once a flow is bulk) -> backend
  sockmap  client -> proxy, whose two sockets sit in a SOCKHASH; the verdict program
           redirects each socket's bytes to the other's egress: no wakeup of the proxy

The sockmap proxy only measures the mechanism's ceiling: it does not propagate EOF,
resets or backpressure, which is what keeping it out of the product is about (see
bench/RESULTS.md). The client waits 0.3 s after connecting so that both sockets are in the
map before the first byte (timed from the request on).

    .venv/bin/python bench/bench_sockmap.py [--bytes 2G] [--rounds 3]
    .venv/bin/python bench/bench_sockmap.py --smoke

Needs root and BCC. Everything it creates (namespace, processes) is removed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import struct
import subprocess
import sys
import uuid
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from tools import byte_size  # noqa: E402

from reconciler.datapath import relay  # noqa: E402
from reconciler.datapath.listeners import socket_cookie  # noqa: E402
from reconciler.datapath.reactor import Reactor  # noqa: E402
from reconciler.kernel import libbpf, netns  # noqa: E402

BACKEND = ("192.0.2.1", 9000)
PROXY = {"relay": ("192.0.2.1", 9001), "sockmap": ("192.0.2.1", 9002)}

PROGRAM = r"""
BPF_SOCKHASH(socks, u64, 1024);          // socket cookie -> socket
BPF_HASH(peer, u64, u64, 1024);          // socket cookie -> its peer's cookie

int verdict(struct __sk_buff *skb) {
    u64 cookie = bpf_get_socket_cookie(skb);
    u64 *other = peer.lookup(&cookie);
    if (!other)
        return SK_PASS;
    u64 key = *other;
    return socks.sk_redirect_hash(skb, &key, 0);  /* to the peer's egress */
}
"""

SERVER = r"""
import socket, sys, threading
size = int(sys.argv[3])
chunk = b"x" * (1 << 20)
def serve(c):
    with c:
        c.recv(1)
        left = size
        while left:
            left -= c.send(chunk[:min(left, len(chunk))])
s = socket.create_server((sys.argv[1], int(sys.argv[2])), backlog=64)
print("ready", flush=True)
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"""

CLIENT = r"""
import json, socket, sys, time
size = int(sys.argv[3])
s = socket.create_connection((sys.argv[1], int(sys.argv[2])))
time.sleep(0.3)  # the proxy's sockets are in its map before the first byte
t0 = time.perf_counter()
s.sendall(b"g")
got, buf = 0, bytearray(1 << 20)
while got < size:
    n = s.recv_into(buf)
    if not n:
        break
    got += n
print(json.dumps({"bytes": got, "seconds": time.perf_counter() - t0}))
"""


def _nothing(*_: object) -> None:
    """A flow's end, which the scratch proxy does not act on (the client's download ends
    the round)."""


async def proxy(listen: tuple[str, int], kind: str, socks_map: int, peers: int,
                ready: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    pool = relay.BufferPool()
    reactor = Reactor(loop)
    server = socket.create_server(listen, backlog=64)
    server.setblocking(False)
    ready.set()
    held: list[socket.socket] = []
    while True:
        client, _ = await loop.sock_accept(server)
        client.setblocking(False)
        backend = socket.socket()
        backend.setblocking(False)
        await loop.sock_connect(backend, BACKEND)
        if kind == "relay":  # both directions on readiness reports, as a session does it
            up = relay.Flow(loop, client, backend, pool, relay.Stream(), _nothing, _nothing)
            down = relay.Flow(loop, backend, client, pool, relay.Stream(), _nothing, _nothing)
            reactor.watch(client.fileno(), partial(relay.deliver, reading=up, writing=down))
            reactor.watch(backend.fileno(), partial(relay.deliver, reading=down, writing=up))
            up.start()
            down.start()
            held += [client, backend]
            continue
        cookies = [socket_cookie(s) for s in (client, backend)]
        for mine, other in (cookies, cookies[::-1]):
            libbpf.update_elem(peers, struct.pack("=Q", mine), struct.pack("=Q", other))
        for s, c in zip((client, backend), cookies, strict=True):
            libbpf.update_elem(socks_map, struct.pack("=Q", c), struct.pack("=I", s.fileno()))
        held += [client, backend]  # the kernel moves the bytes; the proxy never wakes


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bytes", default="2G")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--smoke", action="store_true", help="64 MiB, one round (CI)")
    args = ap.parse_args()
    if args.smoke:
        args.bytes, args.rounds = "64M", 1
    size = byte_size(args.bytes)
    from bcc import BPF, BPFAttachType

    from reconciler.kernel.bcc_env import ensure_kernel_source

    ensure_kernel_source()  # BCC's headers, as the product compiles its programs
    ns = f"bsbsm{uuid.uuid4().hex[:6]}"
    procs: list[subprocess.Popen] = []
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        subprocess.run(["ip", "-n", ns, "addr", "add", f"{BACKEND[0]}/32", "dev", "lo"],
                       check=True)
        srv = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", SERVER,
                                *map(str, BACKEND), str(size)], stdout=subprocess.PIPE,
                               text=True)
        procs.append(srv)
        assert srv.stdout is not None and srv.stdout.readline().strip() == "ready"
        b = BPF(text=PROGRAM)
        fn = b.load_func("verdict", BPF.SK_SKB)
        from bcc.libbcc import lib  # this BCC's Table does not know SOCKHASH: the raw fds

        socks_map, peers = (lib.bpf_table_fd(b.module, name) for name in (b"socks", b"peer"))
        BPF.attach_func(fn, socks_map, BPFAttachType.SK_SKB_STREAM_VERDICT)

        results: dict[str, list[float]] = {"direct": [], "relay": [], "sockmap": []}

        proxies: list[asyncio.Task[None]] = []

        async def run_all() -> None:
            for kind in PROXY:
                ready = asyncio.Event()
                proxies.append(asyncio.get_running_loop().create_task(
                    proxy(PROXY[kind], kind, socks_map, peers, ready)))
                await ready.wait()
            for r in range(args.rounds):
                order = list(results)
                for kind in order[r % 3:] + order[:r % 3]:
                    host, port = BACKEND if kind == "direct" else PROXY[kind]
                    c = await asyncio.create_subprocess_exec(
                        sys.executable, "-c", CLIENT, host, str(port), str(size),
                        stdout=asyncio.subprocess.PIPE)
                    out, _ = await c.communicate()
                    doc = json.loads(out)
                    if doc["bytes"] != size:
                        raise RuntimeError(f"{kind}: {doc['bytes']} of {size} bytes")
                    results[kind].append(size * 8 / doc["seconds"] / 1e9)

        with netns.inside(ns):
            asyncio.run(run_all())
    finally:
        for p in procs:
            p.kill()
            p.wait()
        subprocess.run(["ip", "netns", "del", ns], check=False)
    med = {k: statistics.median(v) for k, v in results.items()}
    print(f"one download of {args.bytes}, median of {args.rounds} rounds")
    for k, v in med.items():
        print(f"{k:8} {v:7.2f} Gbit/s")
    print(f"sockmap / relay: {med['sockmap'] / med['relay']:.2f}x; relay / direct: "
          f"{med['relay'] / med['direct']:.2f}x; sockmap / direct: "
          f"{med['sockmap'] / med['direct']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())

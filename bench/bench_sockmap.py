"""The kernel paths the proxy does not take (yet): is splicing two sockets with a sockhash and
an sk_skb stream verdict program (bpf_sk_redirect_hash) faster than the worker's relay? And
is the local leg of a connection (a client on this host, as every TransparentProxy client
is) faster when an sk_msg program hands each send to the peer socket's receive queue
(bpf_msg_redirect_hash with BPF_F_INGRESS), skipping TCP over loopback?

One bulk download per round through a scratch proxy in a scratch namespace, four ways,
interleaved, medians over rounds:

  direct   client -> backend
  relay    client -> proxy (reconciler.datapath.relay.Flow, the worker's code: copy, then
           splice(2) once a flow is bulk) -> backend
  sockmap  client -> proxy, whose two sockets sit in a SOCKHASH; the verdict program
           redirects each socket's bytes to the other's egress: no wakeup of the proxy
  msg      as relay, but the client's socket and the proxy's accepted one are put in a
           SOCKHASH by a sock_ops program (a scratch cgroup holds this process and the
           clients) and an sk_msg program passes what either sends straight to the other's
           receive queue: the client <-> proxy leg skips TCP

The sockmap proxy only measures the mechanism's ceiling: it does not propagate EOF,
resets or backpressure, which is what keeping it out of the product is about (see
bench/RESULTS.md). The client waits 0.3 s after connecting so that both sockets are in the
map before the first byte (timed from the request on).

Then what a receiver that stops reading lets a sender queue (the bound a hostile or stuck
client puts on the proxy's memory): one socket pair over TCP, one over the sk_msg path;
the sender writes until EAGAIN, at most --stall-cap bytes or 10 s.

    .venv/bin/python bench/bench_sockmap.py [--bytes 2G] [--rounds 3]
    .venv/bin/python bench/bench_sockmap.py --smoke

Needs root and BCC. Everything it creates (namespace, processes) is removed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import struct
import subprocess
import sys
import uuid
from contextlib import suppress
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from tools import byte_size  # noqa: E402

from reconciler.datapath import relay  # noqa: E402
from reconciler.datapath.listeners import socket_cookie  # noqa: E402
from reconciler.datapath.reactor import Reactor  # noqa: E402
from reconciler.kernel import cgroups, libbpf, netns  # noqa: E402

BACKEND = ("192.0.2.1", 9000)
PROXY = {"relay": ("192.0.2.1", 9001), "sockmap": ("192.0.2.1", 9002),
         "msg": ("192.0.2.1", 9003)}
MSG_PORT = PROXY["msg"][1]  # connections to it take the sk_msg path
PLAIN_PORT = 9004  # the stall test's TCP pair

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

/* The local leg: both ends of a connection to MSG_PORT, keyed by (local, remote) */
struct pair { u32 local_ip; u32 remote_ip; u32 local_port; u32 remote_port; };
BPF_SOCKHASH(local, struct pair, 1024);

int established(struct bpf_sock_ops *ops) {
    if (ops->family != 2 /* AF_INET */ || (ops->op != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB &&
                                         ops->op != BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB))
        return 0;
    u32 remote_port = bpf_ntohl(ops->remote_port);  /* local_port is in host order */
    if (ops->local_port != MSG_PORT && remote_port != MSG_PORT)
        return 0;
    struct pair key = {ops->local_ip4, ops->remote_ip4, ops->local_port, remote_port};
    local.sock_hash_update(ops, &key, BPF_ANY);
    return 0;
}

int to_peer(struct sk_msg_md *msg) {  /* the peer's key is ours reversed */
    struct pair key = {msg->remote_ip4, msg->local_ip4, bpf_ntohl(msg->remote_port),
                       msg->local_port};
    return local.msg_redirect_hash(msg, &key, BPF_F_INGRESS);
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
        if kind in ("relay", "msg"):  # on readiness reports, as a session does it (msg:
            # the client's leg is the kernel's. The client sends one byte, so its socket is
            # never spliced from: splice(2) would miss what sk_msg queued)
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


STALL_CLIENT = r"""
import json, socket, sys, time
# a receiver that never reads: the sender (the accepting side) writes until EAGAIN
port, cap = int(sys.argv[1]), int(sys.argv[2])
srv = socket.create_server(("127.0.0.1", port))
c = socket.create_connection(("127.0.0.1", port))
a, _ = srv.accept()
a.setblocking(False)
time.sleep(0.1)  # both ends established (and, on MSG_PORT, in the map)
chunk, sent, t0 = b"x" * 65536, 0, time.monotonic()
while sent < cap and time.monotonic() - t0 < 10:
    try:
        sent += a.send(chunk)
    except BlockingIOError:
        break
print(json.dumps({"queued": sent}))
"""


def stalled(port: int, cap: int) -> int:
    """Bytes a sender queued to a receiver that does not read (run inside the namespace and
    the scratch cgroup, as a child: its memory is freed when it exits)."""
    r = subprocess.run([sys.executable, "-c", STALL_CLIENT, str(port), str(cap)],
                       capture_output=True, text=True, timeout=60, check=True)
    return int(json.loads(r.stdout)["queued"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bytes", default="2G")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--stall-cap", default="1G", help="most a stalled receiver is sent")
    ap.add_argument("--smoke", action="store_true", help="64 MiB, one round (CI)")
    args = ap.parse_args()
    if args.smoke:
        args.bytes, args.rounds, args.stall_cap = "64M", 1, "64M"
    size, stall_cap = byte_size(args.bytes), byte_size(args.stall_cap)
    from bcc import BPF, BPFAttachType

    from reconciler.kernel.bcc_env import ensure_kernel_source

    ensure_kernel_source()  # BCC's headers, as the product compiles its programs
    ns = f"bsbsm{uuid.uuid4().hex[:6]}"
    procs: list[subprocess.Popen] = []
    home = cgroups.current()
    scratch = cgroups.fs_path(ns)  # this process and its clients, for the sock_ops program
    cgroup_fd: int | None = None
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
        b = BPF(text=PROGRAM, cflags=[f"-DMSG_PORT={MSG_PORT}"])
        fn = b.load_func("verdict", BPF.SK_SKB)
        from bcc.libbcc import lib  # this BCC's Table does not know SOCKHASH: the raw fds

        socks_map, peers = (lib.bpf_table_fd(b.module, name) for name in (b"socks", b"peer"))
        BPF.attach_func(fn, socks_map, BPFAttachType.SK_SKB_STREAM_VERDICT)
        local = lib.bpf_table_fd(b.module, b"local")
        BPF.attach_func(b.load_func("to_peer", BPF.SK_MSG), local,
                        BPFAttachType.SK_MSG_VERDICT)
        cgroups.move(os.getpid(), ns)  # creates it; the clients, our children, follow
        cgroup_fd = os.open(scratch, os.O_RDONLY)
        BPF.attach_func(b.load_func("established", BPF.SOCK_OPS), cgroup_fd,
                        BPFAttachType.CGROUP_SOCK_OPS)

        results: dict[str, list[float]] = {kind: [] for kind in ("direct", *PROXY)}

        proxies: list[asyncio.Task[None]] = []

        async def run_all() -> None:
            for kind in PROXY:
                ready = asyncio.Event()
                proxies.append(asyncio.get_running_loop().create_task(
                    proxy(PROXY[kind], kind, socks_map, peers, ready)))
                await ready.wait()
            for r in range(args.rounds):
                order = list(results)
                for kind in order[r % len(order):] + order[:r % len(order)]:
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
            queued = {"TCP": stalled(PLAIN_PORT, stall_cap), "msg": stalled(MSG_PORT, stall_cap)}
    finally:
        for p in procs:
            p.kill()
            p.wait()
        cgroups.move(os.getpid(), home)
        if cgroup_fd is not None:
            os.close(cgroup_fd)  # the program's attachment goes with the cgroup
        with suppress(OSError):
            scratch.rmdir()
        subprocess.run(["ip", "netns", "del", ns], check=False)
    med = {k: statistics.median(v) for k, v in results.items()}
    print(f"one download of {args.bytes}, median of {args.rounds} rounds")
    for k, v in med.items():
        print(f"{k:8} {v:7.2f} Gbit/s")
    print(f"sockmap / relay: {med['sockmap'] / med['relay']:.2f}x; relay / direct: "
          f"{med['relay'] / med['direct']:.2f}x; sockmap / direct: "
          f"{med['sockmap'] / med['direct']:.2f}x")
    print(f"msg / relay: {med['msg'] / med['relay']:.2f}x; msg / direct: "
          f"{med['msg'] / med['direct']:.2f}x")
    for path, n in queued.items():
        print(f"queued to a receiver that does not read, {path}: {n / 2**20:.1f} MiB"
              f"{' (the cap: no EAGAIN)' if n >= stall_cap else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

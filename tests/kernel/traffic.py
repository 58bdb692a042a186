"""Traffic endpoints run inside test namespaces: `python traffic.py MODE ...` (stdlib only, so
that it runs under `ip netns exec` with the system interpreter).

  tcp-server ADDR PORT REPLY_BYTES   per connection: read to EOF, answer "<sha256> <n>\\n" then
                                     REPLY_BYTES of seeded data, close; print each peer
  tcp-client ADDR PORT SEND_BYTES REPLY_BYTES   send seeded data, half-close, check the answer;
                                     prints JSON, exit 0 only if every byte matched
  udp-sink ADDR PORT SECONDS         count datagrams until the sender's end marker (then
                                     SECONDS of silence); print JSON
  udp-send ADDR PORT COUNT RATE [STOPFILE]   send numbered datagrams at RATE per second,
                                     COUNT at most or until STOPFILE exists, then an end marker
  capture DEV SECONDS [PROTO]        print every IPv4/UDP (or IPv4/PROTO; 0: every IPv6) frame
                                     seen on DEV as hex, one per line
                                     (starts with a "ready" line), until SIGTERM (then what is
                                     queued is still printed) or SECONDS at most
  inject DEV HEX...                  send raw Ethernet frames on DEV
  udp-payload SRC_ADDR SRC_PORT DST_ADDR DST_PORT HEX   send one datagram with this payload
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import socket
import sys
import time

END = 0xFFFFFFFF  # the sender's last datagram


def seeded(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def tcp_server(addr: str, port: int, reply_bytes: int) -> None:
    srv = socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((addr, port))
    srv.listen(16)
    print("listening", flush=True)
    reply = seeded(reply_bytes, 2)
    while True:
        conn, peer = srv.accept()
        with conn:
            h, n = hashlib.sha256(), 0
            while chunk := conn.recv(65536):
                h.update(chunk)
                n += len(chunk)
            conn.sendall(f"{h.hexdigest()} {n}\n".encode() + reply)
        print(json.dumps({"peer": peer[0], "port": peer[1], "bytes": n}), flush=True)


def tcp_client(addr: str, port: int, send_bytes: int, reply_bytes: int,
               timeout: float = 10) -> int:
    data = seeded(send_bytes, 1)
    started = time.monotonic()
    with socket.create_connection((addr, port), timeout=timeout) as c:
        c.sendall(data)
        c.shutdown(socket.SHUT_WR)
        buf = bytearray()
        while chunk := c.recv(65536):
            buf += chunk
    line, _, rest = bytes(buf).partition(b"\n")
    digest, _, count = line.decode(errors="replace").partition(" ")
    ok_sent = digest == hashlib.sha256(data).hexdigest() and count == str(send_bytes)
    ok_reply = hashlib.sha256(rest).digest() == hashlib.sha256(seeded(reply_bytes, 2)).digest()
    print(json.dumps({"sent_ok": ok_sent, "reply_ok": ok_reply, "reply_bytes": len(rest),
                      "seconds": round(time.monotonic() - started, 3)}))
    return 0 if ok_sent and ok_reply else 1


SO_RCVBUFFORCE = 33


def udp_sink(addr: str, port: int, quiet: float) -> None:
    """Counts distinct datagrams. The receive buffer is forced (CAP_NET_ADMIN) past
    net.core.rmem_max, which would silently cap SO_RCVBUF; a sink that falls behind for a
    while (a loaded machine) loses nothing. It stops at the sender's end marker (or after
    120 s without one), then waits `quiet` seconds for stragglers."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 64 << 20)
    assert s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) >= 64 << 20
    s.bind((addr, port))
    print("listening", flush=True)
    seen: set[int] = set()
    s.settimeout(120)
    try:
        while (n := int.from_bytes(s.recv(2048)[:4], "big")) != END:
            if n:  # 0: the start marker
                seen.add(n)
        s.settimeout(quiet)
        while True:
            seen.add(int.from_bytes(s.recv(2048)[:4], "big"))
    except TimeoutError:
        pass
    seen.discard(END)
    print(json.dumps({"received": len(seen)}), flush=True)


def udp_send(addr: str, port: int, count: int, rate: float, stop: str = "") -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.sendto(b"\0\0\0\0start", (addr, port))
    start = time.monotonic()
    sent = 0
    for i in range(1, count + 1):
        if stop and i % 100 == 0 and os.path.exists(stop):
            break
        s.sendto(i.to_bytes(4, "big") + bytes(60), (addr, port))
        sent = i
        delay = start + i / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    s.sendto(END.to_bytes(4, "big"), (addr, port))
    print(json.dumps({"sent": sent}), flush=True)


def capture(dev: str, seconds: float, proto: int = 17) -> None:
    """IPv4 frames of one protocol (UDP unless told) on dev, one hex line each, until SIGTERM
    or `seconds`."""
    stopped = []
    signal.signal(signal.SIGTERM, lambda *_: stopped.append(True))
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
    s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 32 << 20)
    s.bind((dev, 0))
    s.settimeout(0.2)
    print("ready", flush=True)
    end = time.monotonic() + seconds
    while not stopped and time.monotonic() < end:
        try:
            frame = s.recv(65535)
        except (TimeoutError, InterruptedError):
            continue
        _show(frame, proto)
    s.setblocking(False)
    with_queued = True
    while with_queued:  # what arrived before the stop is printed too
        try:
            _show(s.recv(65535), proto)
        except BlockingIOError:
            with_queued = False


def _show(frame: bytes, proto: int) -> None:
    if (frame[12:14] == b"\x08\x00" and frame[23] == proto) or (
            proto == 0 and frame[12:14] == b"\x86\xdd"):
        print(frame[:200].hex(), flush=True)


def inject(dev: str, frames: list[str]) -> None:
    """Send raw frames out of dev. A frame that a TC egress program drops fails its send
    (ENOBUFS, EPERM): that is an outcome, not an error; the count is printed."""
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    s.bind((dev, 0))
    refused = 0
    for f in frames:
        try:
            s.send(bytes.fromhex(f))
        except OSError:
            refused += 1
    print(json.dumps({"sent": len(frames) - refused, "refused": refused}), flush=True)


def udp_payload(src: str, sport: int, dst: str, dport: int, payload: str) -> None:
    ipv6 = ":" in src
    s = socket.socket(socket.AF_INET6 if ipv6 else socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if ipv6:
        s.setsockopt(socket.IPPROTO_IPV6, 78, 1)  # IPV6_FREEBIND
    else:
        s.setsockopt(socket.IPPROTO_IP, 15, 1)  # IP_FREEBIND
    s.bind((src, sport))
    s.sendto(bytes.fromhex(payload), (dst, dport))


if __name__ == "__main__":
    mode, *a = sys.argv[1:]
    if mode == "tcp-server":
        tcp_server(a[0], int(a[1]), int(a[2]))
    elif mode == "tcp-client":
        sys.exit(tcp_client(a[0], int(a[1]), int(a[2]), int(a[3]), *map(float, a[4:5])))
    elif mode == "udp-sink":
        udp_sink(a[0], int(a[1]), float(a[2]))
    elif mode == "udp-send":
        udp_send(a[0], int(a[1]), int(a[2]), float(a[3]), *a[4:5])
    elif mode == "capture":
        capture(a[0], float(a[1]), *map(int, a[2:3]))
    elif mode == "inject":
        inject(a[0], a[1:])
    elif mode == "udp-payload":
        udp_payload(a[0], int(a[1]), a[2], int(a[3]), a[4])

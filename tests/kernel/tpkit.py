"""Server and clients for transparent-proxy tests, run inside a test namespace with
`ip netns exec NS python3 tpkit.py MODE ...`; clients print one JSON line.

server HOST PORT...      for each connection: read a line, reply "<peer ip:port> <line>", close;
                         a line "down N" is answered with N bytes instead
client HOST PORT MSG     one connection: {"local": "ip:port", "reply": "...", "error": null}
many HOST PORT N SECONDS N sequential connections (bounded by SECONDS):
                         {"done": n, "failed": n, "seconds": s, "p50Ms": x, "p99Ms": y}
                         (latency: connect to the reply's end)
down HOST PORT BYTES     one download: {"bytes": n, "seconds": s}
hold HOST PORT SECONDS   one connection kept for SECONDS (or, with "stdin", until a line on
                         stdin; 300 s at most), a line echoed every 50 ms:
                         {"local": "ip:port", "peer": "ip:port seen by the server",
                          "sent": n, "echoed": n, "error": null}
udp-server HOST PORT...  answer each datagram with "<peer ip:port> <datagram>"
udp HOST PORT MSG        one datagram, one answer: {"reply": "...", "error": null}
TPKIT_TIMEOUT (seconds, default 15) bounds connects and reads; TPKIT_SPORT binds the
clients' source port.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time


def _serve(host: str, port: int) -> None:
    srv = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((host, port))
    srv.listen(1024)
    while True:
        conn, peer = srv.accept()
        conn.settimeout(TIMEOUT)
        try:
            line = b""
            while not line.endswith(b"\n"):
                chunk = conn.recv(4096)
                if not chunk:
                    break
                line += chunk
        except OSError:
            conn.close()
            continue
        if line in (b"echo\n", b"") or line.startswith(b"down "):
            # long ones get a thread: a held connection never keeps the next one waiting
            threading.Thread(target=_answer, args=(conn, peer, line), daemon=True).start()
        else:
            _answer(conn, peer, line)


def _answer(conn: socket.socket, peer: tuple[str, int], line: bytes) -> None:
    with conn:
        conn.settimeout(None)
        if line == b"echo\n":  # then echo until the client closes
            conn.sendall(f"{peer[0]}:{peer[1]}\n".encode())
            while chunk := conn.recv(4096):
                conn.sendall(chunk)
        elif line.startswith(b"down "):
            left = int(line.split()[1])
            block = memoryview(bytearray(1 << 20))
            while left > 0:
                left -= conn.send(block[:min(left, len(block))])
        else:
            conn.sendall(f"{peer[0]}:{peer[1]} ".encode() + line)


TIMEOUT = float(os.environ.get("TPKIT_TIMEOUT", "15"))


def _hold(host: str, port: int, seconds: str) -> dict[str, object]:
    out: dict[str, object] = {"local": None, "peer": None, "sent": 0, "echoed": 0,
                              "error": None}
    try:
        with socket.create_connection((host, port), timeout=TIMEOUT) as s:
            out["local"] = "{}:{}".format(*s.getsockname())
            s.sendall(b"echo\n")
            f = s.makefile("rb")
            out["peer"] = f.readline().decode().strip()
            released = threading.Event()
            if seconds == "stdin":
                threading.Thread(target=lambda: (sys.stdin.readline(), released.set()),
                                 daemon=True).start()
            end = time.monotonic() + (300 if seconds == "stdin" else float(seconds))
            n = 0
            while time.monotonic() < end and not released.is_set():
                msg = f"line {n}\n".encode()
                s.sendall(msg)
                out["sent"] = n + 1
                if f.readline() != msg:
                    out["error"] = f"line {n} not echoed"
                    break
                n += 1
                out["echoed"] = n
                time.sleep(0.05)
    except OSError as exc:
        out["error"] = f"{type(exc).__name__}: {exc}"
    return out


SPORT = int(os.environ.get("TPKIT_SPORT", "0"))


def _udp_serve(host: str, port: int) -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((host, port))
    while True:
        data, peer = s.recvfrom(2048)
        s.sendto(f"{peer[0]}:{peer[1]} ".encode() + data, peer)


def _udp(host: str, port: int, msg: str) -> dict[str, object]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(TIMEOUT)
        s.bind(("0.0.0.0", SPORT))
        s.sendto(msg.encode(), (host, port))
        try:
            return {"reply": s.recv(2048).decode(), "error": None}
        except OSError as exc:
            return {"reply": None, "error": f"{type(exc).__name__}: {exc}"}


def _one(host: str, port: int, msg: str, family: int | None = None) -> dict[str, object]:
    """One line to the server and its reply. AF_INET6 (the default for an IPv6 host): host
    is an IPv6 or IPv4-mapped address (local shown without the ::ffff: of a mapped one, as
    the server sees it)."""
    family = family or (socket.AF_INET6 if ":" in host else socket.AF_INET)
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.settimeout(TIMEOUT)
            if family == socket.AF_INET:
                s.bind(("0.0.0.0", SPORT))
            s.connect((host, port))
            addr, lport = s.getsockname()[:2]
            local = f"{addr.removeprefix('::ffff:')}:{lport}"
            s.sendall(msg.encode() + b"\n")
            reply = b""
            while chunk := s.recv(4096):
                reply += chunk
            return {"local": local, "reply": reply.decode(), "error": None}
    except OSError as exc:
        return {"local": None, "reply": None, "error": f"{type(exc).__name__}: {exc}",
                "errno": exc.errno}


def main() -> None:
    mode = sys.argv[1]
    if mode == "server":
        host = sys.argv[2]
        for port in sys.argv[3:]:
            threading.Thread(target=_serve, args=(host, int(port)), daemon=True).start()
        print("listening", flush=True)
        threading.Event().wait()
    elif mode == "udp-server":
        host = sys.argv[2]
        for port in sys.argv[3:]:
            threading.Thread(target=_udp_serve, args=(host, int(port)), daemon=True).start()
        print("listening", flush=True)
        threading.Event().wait()
    elif mode == "udp":
        print(json.dumps(_udp(sys.argv[2], int(sys.argv[3]), sys.argv[4])))
    elif mode == "client":
        print(json.dumps(_one(sys.argv[2], int(sys.argv[3]), sys.argv[4])))
    elif mode == "client6":
        print(json.dumps(_one(sys.argv[2], int(sys.argv[3]), sys.argv[4], socket.AF_INET6)))
    elif mode == "hold":
        print(json.dumps(_hold(sys.argv[2], int(sys.argv[3]), sys.argv[4])))
    elif mode == "many":
        host, port, n, limit = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
        start = time.monotonic()
        done = failed = 0
        took = []
        while done + failed < n and time.monotonic() - start < limit:
            t0 = time.perf_counter()
            r = _one(host, port, "x")
            took.append(time.perf_counter() - t0)
            if r["error"] is None and r["reply"].endswith("x\n"):
                done += 1
            else:
                failed += 1
        took.sort()
        print(json.dumps({"done": done, "failed": failed,
                          "seconds": round(time.monotonic() - start, 4),
                          "p50Ms": round(took[len(took) // 2] * 1000, 3) if took else None,
                          "p99Ms": round(took[len(took) * 99 // 100] * 1000, 3) if took else None}))
    elif mode == "down":
        host, port, size = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
        buf = bytearray(1 << 20)
        got = 0
        with socket.create_connection((host, port), timeout=10) as s:
            t0 = time.perf_counter()
            s.sendall(f"down {size}\n".encode())
            while n := s.recv_into(buf):
                got += n
            took = time.perf_counter() - t0
        print(json.dumps({"bytes": got, "seconds": took}))


if __name__ == "__main__":
    main()

"""TCP backends and clients for proxy tests, run inside a test namespace with
`ip netns exec NS python3 tcpkit.py MODE ...`. Clients print one JSON line of results.

Backend protocol: the client sends one header line, then a payload.
  who\\n         -> "<backend name>\\n", close
  echo\\n...     -> echoes everything until the client's EOF, then closes (half-close test)
  down N\\n      -> N seeded bytes, then closes
  hold\\n        -> "<backend name>\\n", then one byte every 0.1 s until the client's EOF
`stuck ADDR:PORT` is a backend whose connects time out (a full listen queue).

Clients that wait for the test (never for a fixed time) read a line on stdin: `hold` holds
its connection until then, `down ... stdin` reads nothing until then, `stream ... STOPFILE`
runs until that file exists. TCPKIT_TIMEOUT (seconds, default 15) bounds connects and reads.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import socket
import sys
import threading
import time

CHUNK = 1 << 16
TIMEOUT = float(os.environ.get("TCPKIT_TIMEOUT", "15"))


def seeded(n: int) -> bytes:
    """n deterministic bytes: a random block of odd length, repeated (so misplaced or lost
    chunks change the checksum)."""
    block = random.Random(n).randbytes(min(n, (1 << 20) + 7))
    return (block * (n // len(block) + 1))[:n] if block else b""


async def _backend(name: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        head = (await reader.readline()).decode().split()
        if not head:
            return
        if head[0] == "who":
            writer.write(f"{name}\n".encode())
        elif head[0] == "echo":
            while data := await reader.read(CHUNK):
                writer.write(data)
                await writer.drain()
        elif head[0] == "down":
            data = seeded(int(head[1]))
            for i in range(0, len(data), CHUNK):
                writer.write(data[i:i + CHUNK])
                await writer.drain()
        elif head[0] == "hold":
            writer.write(f"{name}\n".encode())
            await writer.drain()
            while True:
                try:
                    await asyncio.wait_for(reader.read(1), 0.1)
                    break  # EOF or data: done
                except TimeoutError:
                    writer.write(b".")
                    await writer.drain()
        await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()


async def serve(specs: list[str]) -> None:
    servers = []
    for spec in specs:
        name, _, where = spec.partition("@")
        host, port = where.rsplit(":", 1)
        servers.append(await asyncio.start_server(
            lambda r, w, n=name: _backend(n, r, w), host, int(port), reuse_address=True))
    print("ready", flush=True)
    await asyncio.Event().wait()


def stuck(where: str) -> None:
    """A backend whose connects time out: it listens with backlog 0 and never accepts; one
    connection of its own fills the queue, so the kernel drops every further SYN."""
    host, port = where.rsplit(":", 1)
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((host, int(port)))
    srv.listen(0)
    filler = socket.create_connection((host, int(port)), timeout=5)
    print("ready", flush=True)
    threading.Event().wait()
    filler.close()


def _connect(host: str, port: int, timeout: float = TIMEOUT) -> socket.socket:
    return socket.create_connection((host, port), timeout=timeout)


def who(host: str, port: int) -> str:
    with _connect(host, port) as s:
        s.sendall(b"who\n")
        out = b""
        while chunk := s.recv(100):
            out += chunk
        return out.decode().strip()


def cmd_who(host: str, ports: str, count: int) -> dict:
    """count connections spread over ports "A-B" (or one port): backend names seen."""
    first, _, last = ports.partition("-")
    port_list = list(range(int(first), int(last or first) + 1))
    names: dict[str, int] = {}
    errors: list[str] = []
    for i in range(count):
        try:
            n = who(host, port_list[i % len(port_list)])
            names[n] = names.get(n, 0) + 1
        except OSError as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
    return {"names": names, "errors": errors}


def cmd_stream(host: str, port: int, seconds: float, gap: float, stop: str = "") -> dict:
    """Connections one after another until the file `stop` exists (at most `seconds`):
    every failure is recorded."""
    deadline = time.monotonic() + seconds
    names: dict[str, int] = {}
    errors: list[str] = []
    slowest = 0.0
    n = 0
    while time.monotonic() < deadline and n < 100000 and not (stop and os.path.exists(stop)):
        n += 1
        t0 = time.monotonic()
        try:
            name = who(host, port)
            if name:
                names[name] = names.get(name, 0) + 1
            else:
                errors.append("empty reply")
        except OSError as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
        slowest = max(slowest, time.monotonic() - t0)
        time.sleep(gap)
    return {"attempts": n, "names": names, "errors": errors, "slowest": slowest}


def cmd_echo(host: str, port: int, size: int, seconds: float) -> dict:
    """Send size seeded bytes (spread over `seconds`), half-close, read the echo to EOF
    (read concurrently: an echo is a deadlock otherwise)."""
    data = seeded(size)
    got = bytearray()
    with _connect(host, port, timeout=max(30.0, seconds * 3)) as s:

        def read() -> None:
            while chunk := s.recv(1 << 20):
                got.extend(chunk)

        reader = threading.Thread(target=read)
        reader.start()
        s.sendall(b"echo\n")
        steps = max(1, int(seconds * 20))
        step = -(-size // steps)
        for i in range(0, size, step):
            s.sendall(data[i:i + step])
            if seconds:
                time.sleep(seconds / steps)
        s.shutdown(socket.SHUT_WR)
        reader.join()
    return {"sent": size, "received": len(got),
            "match": hashlib.sha256(got).digest() == hashlib.sha256(data).digest()}


def cmd_down(host: str, port: int, size: int, pause: str) -> dict:
    """Ask for size bytes, read nothing for `pause` seconds (or until a line on stdin when
    pause is "stdin"), then read all and check them."""
    with _connect(host, port, timeout=max(TIMEOUT, 30)) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        s.sendall(f"down {size}\n".encode())
        if pause == "stdin":
            sys.stdin.readline()
        else:
            time.sleep(float(pause))
        got = bytearray()
        while chunk := s.recv(1 << 20):
            got += chunk
    return {"received": len(got), "match": bytes(got) == seeded(size)}


def cmd_hold(host: str, port: int) -> dict:
    """One connection to a `hold` backend: print {"held": name} once connected through to a
    backend, keep it open until a line on stdin, then close and read to the end."""
    got = 0
    try:
        with _connect(host, port, timeout=max(TIMEOUT, 30)) as s:
            s.sendall(b"hold\n")
            f = s.makefile("rb")
            name = f.readline().decode().strip()
            print(json.dumps({"held": name}), flush=True)
            sys.stdin.readline()
            s.shutdown(socket.SHUT_WR)
            while chunk := f.read1(CHUNK):
                got += len(chunk)
        return {"name": name, "bytes": got, "error": None}
    except OSError as exc:
        return {"name": None, "bytes": got, "error": f"{type(exc).__name__}: {exc}"}


def cmd_idle(host: str, port: int, limit: float) -> dict:
    """Connect to an `echo` backend, send the header and nothing else: how long until the
    other side ends the connection (at most `limit` seconds)."""
    started = time.monotonic()
    with _connect(host, port, timeout=limit) as s:
        s.sendall(b"echo\n")
        try:
            data = s.recv(100)
            how = "eof" if not data else f"data {data!r}"
        except TimeoutError:
            how = "still open"
        except ConnectionResetError:
            how = "reset"
    return {"how": how, "seconds": round(time.monotonic() - started, 3)}


def cmd_crowd(host: str, port: int, count: int) -> dict:
    """count idle connections (connect started, nothing sent), printed as {"opened": n} once
    every connect was issued; all kept until a line on stdin, then closed."""
    import resource

    want = count + 64
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < want:  # root: this client must not be the one to run out
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(hard, want)))
    socks = []
    for _ in range(count):
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex((host, port))
        socks.append(s)
    print(json.dumps({"opened": len(socks)}), flush=True)
    sys.stdin.readline()
    for s in socks:
        s.close()
    return {"closed": len(socks)}


def main() -> None:
    mode, *a = sys.argv[1:]
    if mode == "serve":
        asyncio.run(serve(a))
        return
    if mode == "stuck":
        stuck(a[0])
        return
    if mode == "who":
        out = cmd_who(a[0], a[1], int(a[2]))
    elif mode == "stream":
        out = cmd_stream(a[0], int(a[1]), float(a[2]), float(a[3]) if len(a) > 3 else 0.01,
                         a[4] if len(a) > 4 else "")
    elif mode == "echo":
        out = cmd_echo(a[0], int(a[1]), int(a[2]), float(a[3]) if len(a) > 3 else 0.0)
    elif mode == "down":
        out = cmd_down(a[0], int(a[1]), int(a[2]), a[3])
    elif mode == "hold":
        out = cmd_hold(a[0], int(a[1]))
    elif mode == "idle":
        out = cmd_idle(a[0], int(a[1]), float(a[2]))
    elif mode == "crowd":
        out = cmd_crowd(a[0], int(a[1]), int(a[2]))
    else:
        raise SystemExit(f"unknown mode {mode}")
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()

"""Native IPv6 interception by cgroup, on a real kernel: the IPv4 test's twin. A client in the
intercepted cgroup connects to an IPv6 server by its real address; connect6 sends it to the
Proxy's IPv6 listener (::1) and the proxy learns the destination with
getsockopt(SOL_IPV6, IP6T_SO_ORIGINAL_DST).

    client netns  2001:db8::1 ──veth── 2001:db8::2, 2001:db8::3  server netns
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.kernel.daemonkit import wait_for
from tests.kernel.interception import intercepted, sh, start_server
from tests.kernel.test_transparent import Env, made_env

SERVER6 = "2001:db8::2"  # intercepted on port 80, excluded on 81
OTHER6 = "2001:db8::3"  # no rule names it


@pytest.fixture
def env6(tmp_path: Path, pin_root: Path) -> Iterator[Env]:
    with made_env(tmp_path, pin_root) as e:
        sh(f"ip -n {e.ns} -6 addr add 2001:db8::1/64 dev {e.device} nodad")
        for addr in (SERVER6, OTHER6):
            sh(f"ip -n {e.server_ns} -6 addr add {addr}/64 dev {e.peer} nodad")
        e.procs.append(start_server(e.server_ns, SERVER6, 80, 81))
        e.procs.append(start_server(e.server_ns, OTHER6, 80))
        yield e


def write(env: Env, extra: str = "") -> None:
    """Port 80 of SERVER6 (and 203.0.113.0/24) intercepted; port 81 of SERVER6 excluded."""
    env.write(ports="80, 81", extra=extra, intercept=f"203.0.113.0/24, '{SERVER6}/128'",
              excluded=f"'{SERVER6}/128'")


def tracked6(env: Env) -> list[object]:
    """tp_conns6 read back with bpftool, not with bpfsync's reader."""
    out = sh(f"bpftool -j map dump pinned {env.pin_root}/maps/tp_conns6")
    return json.loads(out.stdout)


def counters(env: Env, **expect: int) -> dict[str, int]:
    assert env.daemon is not None
    daemon = env.daemon
    return wait_for(lambda: (c := daemon.status()["transparentProxies"]["resources"][0][
        "counters"]) and all(c[k] == v for k, v in expect.items()) and c, 60)


def test_native_ipv6_is_intercepted_by_ipv6_rules(env6: Env) -> None:
    env = env6
    write(env)
    env.start()
    inside = env.client(80, cgroup=env.apps, mode="client6", host=SERVER6)
    assert intercepted(inside), inside  # the server saw the proxy's connection
    assert inside["local"].startswith("::1:")  # connected to the proxy's IPv6 listener
    env.proxy_counters(originalDestination=1, noOriginalDestination=0)
    wait_for(lambda: tracked6(env) == [], 60)  # the socket closed: its entry is gone

    excluded = env.client(81, cgroup=env.apps, mode="client6", host=SERVER6)
    assert not intercepted(excluded), excluded
    outside = env.client(80, mode="client6", host=SERVER6)  # another cgroup: untouched
    assert not intercepted(outside), outside
    other = env.client(80, cgroup=env.apps, mode="client6", host=OTHER6)  # no rule: direct
    assert not intercepted(other), other
    c = counters(env, intercepted=1, ipv6_direct=1)
    assert (c["excluded"], c["answered"], c["ipv6_refused"]) == (1, 1, 0), c
    env.proxy_counters(originalDestination=1)

    # ipv6: refuse refuses what no rule intercepts; the rules still intercept
    assert env.daemon is not None
    events = env.daemon.events()
    write(env, "  ipv6: refuse\n")
    env.daemon.settled(events)
    refused = env.client(80, cgroup=env.apps, mode="client6", host=OTHER6)
    assert refused["errno"] == 1, refused  # EPERM: the connect never left
    still = env.client(80, cgroup=env.apps, mode="client6", host=SERVER6)
    assert intercepted(still), still
    counters(env, intercepted=2, ipv6_refused=1)
    env.proxy_counters(originalDestination=2, noOriginalDestination=0)
    bpfsync = [sys.executable, "-m", "reconciler", "--pin-root", str(env.pin_root)]
    diff = subprocess.run([*bpfsync, "diff", str(env.directory)], capture_output=True,
                          text=True, timeout=120)
    assert diff.returncode == 0, diff.stdout + diff.stderr
    rules = sh(f"bpftool -j map dump pinned {env.pin_root}/maps/tp_rules6").stdout
    assert len(json.loads(rules)) == 3  # intercept ports 80 and 81, exclude 81

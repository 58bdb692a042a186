"""The descriptor gate (pure asyncio) and the descriptor budget `validate` checks."""

from __future__ import annotations

import asyncio
import errno
from pathlib import Path

import pytest

from reconciler.datapath import fdgate
from reconciler.datapath.fdgate import EXHAUSTED, HEADROOM, DescriptorGate
from reconciler.load.directory import load_directory
from reconciler.steering.checks import DESCRIPTOR_LIMIT, descriptors_needed
from tests.unit.helpers import write_tree


def test_room_counts_two_descriptors_per_connection_and_keeps_headroom() -> None:
    gate = DescriptorGate(limit=HEADROOM + 10 + 6, base=10)
    for _ in range(3):
        assert gate.room()
        gate.opened()
    assert not gate.room()  # a fourth would need 8 of the 6 left
    gate.released()
    assert gate.room()
    assert DescriptorGate().room()  # no limit known: never in the way
    assert errno.EMFILE in EXHAUSTED and errno.ENFILE in EXHAUSTED


def test_a_pause_ends_when_a_connection_ends_and_logs_once_per_episode(caplog) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level("INFO", logger="bpfsync.proxy")

    async def run() -> DescriptorGate:
        gate = DescriptorGate(limit=2 * HEADROOM, base=0)
        gate.conns = 32  # full: 2 x 33 + HEADROOM > limit
        assert not gate.room()
        waiting = asyncio.create_task(gate.pause("web", "two per connection"))
        await asyncio.sleep(0)
        second = asyncio.create_task(gate.pause("web", "two per connection"))
        await asyncio.sleep(0)
        gate.released()  # wakes both, long before PAUSE_MAX_S
        await asyncio.wait_for(asyncio.gather(waiting, second), 0.5)
        gate.resume()  # one connection fewer: still above half its share, the episode goes on
        assert gate.paused
        while gate.conns > 0:
            gate.released()
        gate.resume()  # under half the descriptors left for connections: over
        return gate

    gate = asyncio.run(run())
    assert (gate.pauses, gate.episodes, gate.paused) == (2, 1, False)
    assert caplog.text.count("out of file descriptors") == 1
    assert caplog.text.count("descriptors free again") == 1


def test_a_pause_begun_after_every_connection_ended_ends_the_episode(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The last connection can end before the accept loop's pause begins: nothing ends or is
    accepted afterwards, so the pause itself must see that the episode is over."""
    monkeypatch.setattr(fdgate, "PAUSE_MAX_S", 0.01)

    async def run() -> DescriptorGate:
        gate = DescriptorGate(limit=2 * HEADROOM, base=0)
        gate.opened()
        gate.released()  # the last one ended...
        await gate.pause("web", "two per connection")  # ...before the pause
        return gate

    gate = asyncio.run(run())
    assert (gate.episodes, gate.paused) == (1, False)


def _proxy(pid: int, max_connections: int) -> str:
    return (f"apiVersion: bpfsync/v1\nkind: Proxy\nmetadata: {{name: p{pid}}}\nspec:\n"
            f"  id: {pid}\n  ports: [{8000 + pid}]\n  backends: [\"192.0.2.10:80\"]\n"
            f"  maxConnections: {max_connections}\n")


def test_validate_warns_when_max_connections_outgrow_the_unit_limit(tmp_path: Path) -> None:
    ok = load_directory(write_tree(tmp_path / "ok", {"a.yaml": _proxy(1, 10000)}))
    assert not [w for w in ok.warnings if "file descriptors" in w.message]
    files = {f"p{i}.yaml": _proxy(i, 200_000) for i in range(1, 4)}
    big = load_directory(write_tree(tmp_path / "big", files))
    warned = [w for w in big.warnings if "file descriptors" in w.message]
    assert len(warned) == 1 and "maxConnections" in str(warned[0])
    assert f"{descriptors_needed([]) + 1_200_000:,}" in warned[0].message
    assert str(f"{DESCRIPTOR_LIMIT:,}") in warned[0].message

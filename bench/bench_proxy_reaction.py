"""How fast the steered proxy reacts — the timing limits the functional tests no longer
assert (they only check that the thing happens, with generous deadlines):

  health   a backend stops: time until the worker reports it unhealthy, against the bound
           fall x interval + one interval + one report period (0.25 s)
  change   a backend change applied: time from `bpfsync apply` returning until a new
           connection reaches the new backend (the worker re-reads ps_proxy every 0.25 s)

Rounds alternate the two measurements in one namespace and one data path; medians and
maxima are printed.

    .venv/bin/python bench/bench_proxy_reaction.py [--rounds 20] [--smoke]

--smoke: one round, for CI (checks that the benchmark runs, not its figures).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.kernel import owned  # noqa: E402
from tests.kernel.test_proxy import BACKENDS, VIP, ProxyNet, proxy_doc  # noqa: E402

INTERVAL, TIMEOUT, FALL = 0.2, 0.1, 2
HEALTH = (f"  healthCheck: {{intervalSeconds: {INTERVAL}, timeoutSeconds: {TIMEOUT}, "
          f"rise: 2, fall: {FALL}}}\n")


def doc(backends: tuple[str, ...]) -> str:
    return proxy_doc(ports="[80]", backends=backends).replace(
        "  healthCheck: {intervalSeconds: 0.5, timeoutSeconds: 0.5, rise: 2, fall: 2}\n",
        HEALTH)


def poll(check, seconds: float = 30.0) -> float:
    """Seconds until check() holds (polled every 5 ms)."""
    t0 = time.monotonic()
    while not check():
        if time.monotonic() - t0 > seconds:
            raise SystemExit("condition not met within 30 s")
        time.sleep(0.005)
    return time.monotonic() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args()
    owned.private_state_dir()  # the history of its pin roots goes with it
    rounds = 1 if args.smoke else args.rounds
    health, change = [], []
    with tempfile.TemporaryDirectory(prefix="bpfsync-bench-") as tmp:
        pn = ProxyNet(Path(tmp))
        try:
            pn.setup()
            for name in BACKENDS:
                pn.start_backend(name)
            pn.write(doc(("b1", "b2")))
            pn.apply()
            pn.start_datapath()
            for i in range(rounds):
                pn.stop_backend("b2")
                health.append(poll(lambda: pn.healthy().get(BACKENDS["b2"]) is False))
                pn.start_backend("b2")
                poll(lambda: pn.healthy().get(BACKENDS["b2"]) is True)
                target = "b3" if i % 2 == 0 else "b1"
                pn.write(doc((target,)))
                pn.apply()
                change.append(poll(lambda t=target: pn.client("who", VIP, 80, 1)["names"]
                                   == {t: 1}))
                pn.write(doc(("b1", "b2")))
                pn.apply()
                poll(lambda: len(pn.healthy()) == 2 and all(pn.healthy().values()))
        finally:
            pn.cleanup()
    bound = FALL * INTERVAL + INTERVAL + 0.25
    print(f"rounds {rounds}")
    print(f"health: backend down -> reported unhealthy: median {statistics.median(health):.3f} s, "
          f"max {max(health):.3f} s (bound {bound:.2f} s: fall {FALL} x {INTERVAL} s + one "
          f"interval + one report)")
    print(f"change: apply returned -> new connections on the new backend: median "
          f"{statistics.median(change):.3f} s, max {max(change):.3f} s (includes one client "
          f"connection, ~0.05 s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env bash
# The demo, in three parts, as root after packaging/install.sh:
#  1. examples/quickstart: validate -> diff -> apply -> get -> diff (in sync), maps only.
#  2. examples/gue: a live GUE tunnel between two network namespaces (gateway, node) plus a
#     client namespace, configured only by YAML: apply both ends, start the node's data path
#     (pings), fetch a page through the tunnel, show what the kernel holds and counted.
#  3. examples/proxy: port steering in a namespace: many ports, one listener, three backends
#     in round-robin; one backend is stopped and taken out by its health check.
#  4. bpfsync run: the daemon watches a copy of examples/quickstart; a save is applied at
#     once, an entry deleted behind its back is put back at the next resync; status.
# Everything (pin roots, namespaces, processes) is removed at the end.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
bpfsync="$here/.venv/bin/bpfsync"
dir="$here/examples/quickstart"
export BPFSYNC_PIN_ROOT="/sys/fs/bpf/bpfsync-demo-$$"
gw_root="/sys/fs/bpf/bpfsync-demo-gw-$$"
node_root="/sys/fs/bpf/bpfsync-demo-node-$$"
proxy_root="/sys/fs/bpf/bpfsync-demo-proxy-$$"
run_root="/sys/fs/bpf/bpfsync-demo-run-$$"
pids=()
dp_log=$(mktemp)
run_log=$(mktemp)
work=$(mktemp -d)
# the history of these throwaway pin roots (bpfsync history) stays in the demo's own folder
export BPFSYNC_STATE_DIR="$work/state"
cleanup_ns() { for ns in bpfsync-demo-client bpfsync-demo-gw bpfsync-demo-node bpfsync-demo-proxy; do
  ip netns del "$ns" 2>/dev/null || true; done; }
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -f "$dp_log" "$run_log"
  cleanup_ns
  for root in "$BPFSYNC_PIN_ROOT" "$gw_root" "$node_root" "$proxy_root" "$run_root"; do
    # the run directory bpfsync keeps for a pin root (status of the daemon and data path)
    rm -rf "$("$here/.venv/bin/python" -c 'import sys; from pathlib import Path
from reconciler.datapath.supervisor import run_dir; print(run_dir(Path(sys.argv[1])))' "$root")"
    rm -rf "$root"
  done
  rm -rf "$work" "/tmp/bpfsync-demo-$$-"*
}
trap cleanup EXIT

step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; }
run() { step "$*"; "$@"; }
# until SECONDS CMD...: wait for a condition (never for a fixed time); fail if it never holds
until_true() {
  local end=$((SECONDS + $1)); shift
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$end" ] || { echo "demo: timed out waiting for: $*" >&2; return 1; }
    sleep 0.2
  done
}

# Git does not keep file modes, and bpfsync refuses key files others can read.
chmod 600 "$dir/keys/web.key"
# The dns Service takes its key from the environment (keyFrom: {env: BPFSYNC_DNS_KEY}).
export BPFSYNC_DNS_KEY="${BPFSYNC_DNS_KEY:-demo-dns-key}"
export BPFSYNC_NODE_B_KEY="${BPFSYNC_NODE_B_KEY:-demo-node-b-key}"

cd "$here"
run "$bpfsync" validate examples/quickstart
step "$bpfsync diff examples/quickstart   # exit 2: changes pending"
"$bpfsync" diff examples/quickstart || [ $? -eq 2 ]
run "$bpfsync" apply -q examples/quickstart
run "$bpfsync" get all
run bpftool map dump pinned "$BPFSYNC_PIN_ROOT/maps/ti_tunnel"
step "$bpfsync diff examples/quickstart   # exit 0: in sync"
"$bpfsync" diff examples/quickstart
run "$bpfsync" apply examples/quickstart

printf '\n\033[1m== Part 2: a live GUE tunnel (examples/gue) ==\033[0m\n'
# client 198.51.100.1 --c0/g0-- gateway --g1/n0 (underlay 192.0.2.0/24, MTU 1600)-- node
cleanup_ns  # leftovers of an interrupted run
for ns in client gw node; do ip netns add "bpfsync-demo-$ns"; ip -n "bpfsync-demo-$ns" link set lo up; done
ip link add name c0 netns bpfsync-demo-client type veth peer name g0 netns bpfsync-demo-gw
ip link add name g1 netns bpfsync-demo-gw mtu 1600 type veth peer name n0 netns bpfsync-demo-node mtu 1600
ip -n bpfsync-demo-client addr add 198.51.100.1/24 dev c0
ip -n bpfsync-demo-gw addr add 198.51.100.254/24 dev g0
ip -n bpfsync-demo-gw addr add 192.0.2.1/24 dev g1
ip -n bpfsync-demo-node addr add 192.0.2.2/24 dev n0
ip -n bpfsync-demo-node addr add 203.0.113.100/32 dev lo
for pair in client:c0 gw:g0 gw:g1 node:n0; do ip -n "bpfsync-demo-${pair%%:*}" link set "${pair#*:}" up; done
ip -n bpfsync-demo-client route add default via 198.51.100.254
ip netns exec bpfsync-demo-gw sysctl -qw net.ipv4.ip_forward=1
ip -n bpfsync-demo-gw route add 203.0.113.10/32 via 192.0.2.2 dev g1
ip -n bpfsync-demo-node route add default via 192.0.2.1
echo "namespaces bpfsync-demo-{client,gw,node} ready"

export BPFSYNC_DEMO_TUNNEL_KEY="${BPFSYNC_DEMO_TUNNEL_KEY:-demo-tunnel-key}"
export BPFSYNC_DEMO_SERVICE_KEY="${BPFSYNC_DEMO_SERVICE_KEY:-demo-svc-key}"
run "$bpfsync" --pin-root "$gw_root" apply examples/gue/gateway
run "$bpfsync" --pin-root "$node_root" apply -q examples/gue/node
step "$bpfsync --pin-root $node_root datapath --netns bpfsync-demo-node &   # sends GUE pings"
"$bpfsync" --pin-root "$node_root" datapath --netns bpfsync-demo-node >"$dp_log" 2>&1 &
pids+=($!)
ip netns exec bpfsync-demo-node /usr/bin/python3 -m http.server 8080 --bind 203.0.113.100 \
  --directory "$here/examples/gue" >/dev/null 2>&1 &
pids+=($!)
learned() { [[ "$("$bpfsync" --pin-root "$gw_root" get tunnels -o json)" == *'"learned": {'* ]]; }
until_true 60 learned
sed 's/^/  [datapath] /' "$dp_log"
run "$bpfsync" --pin-root "$gw_root" get tunnels
step "ip netns exec bpfsync-demo-client curl-like GET http://203.0.113.10/   # through the tunnel"
ip netns exec bpfsync-demo-client /usr/bin/python3 - <<'PY'
import urllib.request
body = urllib.request.urlopen("http://203.0.113.10/node/node.yaml", timeout=10).read()
print(f"  200 OK, {len(body)} bytes from the backend 203.0.113.100:8080 via GUE; first line:")
print("  " + body.decode().splitlines()[0])
PY
run "$bpfsync" --pin-root "$gw_root" get interfaces
run "$bpfsync" --pin-root "$gw_root" get stats
step "$bpfsync --pin-root $gw_root diff examples/gue/gateway   # learned remote is not drift"
"$bpfsync" --pin-root "$gw_root" diff examples/gue/gateway

printf '\n\033[1m== Part 3: a port-steering proxy (examples/proxy) ==\033[0m\n'
ip netns add bpfsync-demo-proxy
ip -n bpfsync-demo-proxy link set lo up
ip -n bpfsync-demo-proxy route add local 203.0.113.0/24 dev lo   # the steered addresses
ip -n bpfsync-demo-proxy -6 route add local 2001:db8:7::/48 dev lo   # and their IPv6 twins
backends=()
for i in 11 12 13; do
  ip -n bpfsync-demo-proxy addr add "192.0.2.$i/32" dev lo
  mkdir -p "/tmp/bpfsync-demo-$$-$i" && echo "backend 192.0.2.$i" >"/tmp/bpfsync-demo-$$-$i/index.html"
  ip netns exec bpfsync-demo-proxy /usr/bin/python3 -m http.server 8080 --bind "192.0.2.$i" \
    --directory "/tmp/bpfsync-demo-$$-$i" >/dev/null 2>&1 &
  pids+=($!); backends+=($!)
done
run "$bpfsync" --pin-root "$proxy_root" apply -q examples/proxy
step "$bpfsync --pin-root $proxy_root datapath --netns bpfsync-demo-proxy &"
"$bpfsync" --pin-root "$proxy_root" datapath --netns bpfsync-demo-proxy >"$dp_log" 2>&1 &
pids+=($!)
fetch() { ip netns exec bpfsync-demo-proxy /usr/bin/python3 - "$@" <<'PY'
import sys, urllib.request
for i, port in enumerate(sys.argv[1:]):
    v6, port = port.startswith("6:"), port.removeprefix("6:")
    url = f"http://[2001:db8:7::{20 + i}]:{port}/" if v6 else f"http://203.0.113.{20 + i}:{port}/"
    body = urllib.request.urlopen(url, timeout=5).read().decode().strip()
    print(f"  GET {url:31} -> {body}")
PY
}
healthy() { [[ "$("$bpfsync" --pin-root "$proxy_root" get proxies)" == *"$1/3 healthy"* ]]; }
until_true 60 healthy 3
step "GET six steered addresses and ports, IPv4 and IPv6   # round-robin over 3 backends"
fetch 80 8000 8003 6:8009 6:80 6:8005
kill "${backends[1]}"; wait "${backends[1]}" 2>/dev/null || true
step "# backend 192.0.2.12 stopped; its health check takes it out within fall x interval"
until_true 60 healthy 2
fetch 80 8001 8002 80
run "$bpfsync" --pin-root "$proxy_root" get proxies
run "$bpfsync" --pin-root "$proxy_root" get stats
rm -rf /tmp/bpfsync-demo-$$-*

printf '\n\033[1m== Part 4: the daemon (bpfsync run) ==\033[0m\n'
cp -r examples/quickstart "$work/desired"
chmod 600 "$work/desired/keys/web.key"
step "$bpfsync --pin-root $run_root run $work/desired --resync 2 --no-datapath &"
"$bpfsync" --pin-root "$run_root" run "$work/desired" --resync 2 --no-datapath >"$run_log" 2>&1 &
pids+=($!)
until_true 60 "$bpfsync" --pin-root "$run_root" status
run "$bpfsync" --pin-root "$run_root" status
step "sed -i 's/port: 8080/port: 8081/' $work/desired/services.yaml   # a save"
sed -i 's/port: 8080/port: 8081/' "$work/desired/services.yaml"
applied() { [[ "$("$bpfsync" --pin-root "$run_root" get services)" == *":8081"* ]]; }
until_true 60 applied
run "$bpfsync" --pin-root "$run_root" get services
key=$(bpftool -j map dump pinned "$run_root/maps/ti_encap" | python3 -c \
  'import json,sys; print(" ".join(json.load(sys.stdin)[0]["key"]))')
step "bpftool map delete pinned $run_root/maps/ti_encap key hex $key   # drift"
entries() { bpftool -j map dump pinned "$run_root/maps/ti_encap" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))'; }
before=$(entries)
bpftool map delete pinned "$run_root/maps/ti_encap" key hex $key
restored() { [ "$(entries)" -eq "$before" ]; }
until_true 60 restored   # the next resync (2 s) puts it back
run "$bpfsync" --pin-root "$run_root" status
step "# the daemon's log"
cat "$run_log"
printf '\nDemo done; namespaces, pin roots and processes are removed on exit.\n'


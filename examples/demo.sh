#!/usr/bin/env bash
# The quick-start demo: validate -> diff -> apply -> get -> diff (in sync) on examples/quickstart,
# against a throwaway pin root that is removed at the end. Run as root after packaging/install.sh.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
bpfsync="$here/.venv/bin/bpfsync"
dir="$here/examples/quickstart"
export BPFSYNC_PIN_ROOT="/sys/fs/bpf/bpfsync-demo-$$"
trap 'rm -rf "$BPFSYNC_PIN_ROOT"' EXIT

step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; }
run() { step "$*"; "$@"; }

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
printf '\nDemo done; throwaway pin root %s removed.\n' "$BPFSYNC_PIN_ROOT"

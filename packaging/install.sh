#!/usr/bin/env bash
# Idempotent set-up for a fresh Debian 12 machine, as root: system packages, the BCC header
# tree (only when the running kernel ships none), bpffs, and the project's virtualenv.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
venv="${BPFSYNC_VENV:-$here/.venv}"
headers_root=/var/lib/bpfsync/kernel-headers
log() { printf 'install: %s\n' "$*" >&2; }

[ "$(id -u)" -eq 0 ] || { log "run as root"; exit 1; }

packages=(python3-bpfcc bpfcc-tools libbpf1 linux-headers-amd64 iproute2 bpftool
          python3-venv python3-pip git ca-certificates iperf3)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# BCC compiles against the running kernel's headers. Debian ships none for a custom kernel, so
# merge the newest linux-headers-*-amd64 tree with its -common twin into a symlink tree that
# BCC_KERNEL_SOURCE can point at. /lib/modules is never written.
kver=$(uname -r)
if [ ! -e "/lib/modules/$kver/build" ]; then
  arch_tree=$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -n 1)
  common_tree=${arch_tree%-amd64}-common
  [ -d "$arch_tree" ] && [ -d "$common_tree" ] || { log "no linux-headers tree in /usr/src"; exit 1; }
  target="$headers_root/$kver"
  if [ ! -e "$target/.complete" ] || [ "$(cat "$target/.complete")" != "$arch_tree" ]; then
    log "building BCC header tree $target from $arch_tree + $common_tree"
    rm -rf "$target"
    mkdir -p "$target"
    cp -rs "$common_tree/." "$target/"
    cp -rsf "$arch_tree/." "$target/" 2>/dev/null || true
    # Debian's -amd64 tree links some folders back into -common; make sure the generated
    # headers of the arch tree win over anything copied from -common.
    for d in include/generated arch/x86/include/generated include/config; do
      if [ -d "$arch_tree/$d" ]; then rm -rf "${target:?}/$d"; mkdir -p "$(dirname "$target/$d")"; cp -rs "$arch_tree/$d" "$target/$d"; fi
    done
    echo "$arch_tree" > "$target/.complete"
  fi
  ln -sfn "$target" "$headers_root/current"
fi

if ! mountpoint -q /sys/fs/bpf; then
  log "mounting bpffs on /sys/fs/bpf"
  mount -t bpf bpf /sys/fs/bpf
fi

# Tracepoints (used by the kernel tests to count map writes independently) need tracefs.
if [ -d /sys/kernel/tracing ] && [ ! -e /sys/kernel/tracing/events ]; then
  mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null || log "could not mount tracefs"
fi

if [ ! -x "$venv/bin/python" ]; then
  log "creating $venv"
  /usr/bin/python3 -m venv --system-site-packages "$venv"
fi
"$venv/bin/python" -m pip install -q --upgrade pip >/dev/null
# BPFSYNC_EXTRAS: pip extras; the tests' tools by default, none on production hosts (the
# Ansible role sets it empty).
extras=${BPFSYNC_EXTRAS-test}
"$venv/bin/python" -m pip install -q -e "$here${extras:+[$extras]}"
log "ready: $venv/bin/bpfsync"

# promtool, Prometheus's own checker (metrics exposition, alert rules and their unit tests),
# for the tests only: taken out of Debian's prometheus package into the virtualenv, without
# installing the package, so no Prometheus server is set up or started on the host.
if [[ ",$extras," == *",test,"* ]] && [ ! -x "$venv/bin/promtool" ]; then
  tmp=$(mktemp -d)
  ( cd "$tmp" && { apt-get download -qq prometheus 2>/dev/null ||
                   { apt-get update -qq && apt-get download -qq prometheus 2>/dev/null; }; } )
  dpkg-deb --fsys-tarfile "$tmp"/prometheus_*.deb | tar -x -C "$tmp" ./usr/bin/promtool
  install -m 0755 "$tmp/usr/bin/promtool" "$venv/bin/promtool"
  rm -rf "$tmp"
  log "promtool: $venv/bin/promtool"
fi

# Completion and the man page, made from the command line's own parser, under
# BPFSYNC_SHARE (default /usr/local/share).
share=${BPFSYNC_SHARE:-/usr/local/share}
while read -r what dest; do
  dest="$share/$dest"
  install -d -m 0755 "$(dirname "$dest")"
  "$venv/bin/bpfsync" completion "$what" > "$dest.tmp" && mv "$dest.tmp" "$dest"
done <<'TARGETS'
bash bash-completion/completions/bpfsync
zsh zsh/site-functions/_bpfsync
man man/man1/bpfsync.1
TARGETS
log "installed bash and zsh completion and bpfsync(1) under $share"

# --systemd: install the unit (pointing at this virtualenv) and the watched directory.
if [ "${1:-}" = "--systemd" ]; then
  install -d -m 0755 /etc/bpfsync/desired.d
  sed "s#/opt/bpfsync/.venv#$venv#g" "$here/packaging/systemd/bpfsync.service" \
    > /etc/systemd/system/bpfsync.service
  if [ -d /run/systemd/system ]; then
    systemctl daemon-reload
    log "installed bpfsync.service; start it with: systemctl enable --now bpfsync"
  else
    log "installed /etc/systemd/system/bpfsync.service (systemd is not running here)"
  fi
fi

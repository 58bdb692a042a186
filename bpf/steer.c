/* Port steering: an sk_lookup program that hands TCP connections for steered destinations
 * to the listener of the Proxy that owns them (proxify's bpf_proxy_dispatch, with prefixes,
 * several proxies and fail-closed behaviour).  Compiled by BCC from
 * reconciler/kernel/programs.py with PS_PIN_DIR "<pin root>/maps/".
 *
 * Lookup: (tcp, exact port, longest destination prefix), then (tcp, any port, longest
 * prefix), in ps_dest for IPv4 and ps_dest6 for IPv6; the slot's listener of the same family
 * (ps_sockets, ps_sockets6) gets the connection.  No match: SK_PASS, the normal socket lookup runs.  A match whose slot has no
 * socket in ps_sockets, or whose socket bpf_sk_assign refuses, is dropped and counted: a
 * steered destination never falls through to whatever else listens on it.
 */
#include <uapi/linux/bpf.h>
#include <uapi/linux/in.h>
#include <linux/socket.h>
#include "steer.h"

BPF_TABLE_PINNED("lpm_trie", struct ps_dest_key, struct ps_dest, ps_dest, PS_MAX_DEST,
                 PS_PIN_DIR "ps_dest");
BPF_TABLE_PINNED("lpm_trie", struct ps_dest6_key, struct ps_dest, ps_dest6, PS_MAX_DEST,
                 PS_PIN_DIR "ps_dest6");
BPF_TABLE_PINNED("sockmap", u32, u64, ps_sockets, PS_MAX_PROXIES, PS_PIN_DIR "ps_sockets");
BPF_TABLE_PINNED("sockmap", u32, u64, ps_sockets6, PS_MAX_PROXIES, PS_PIN_DIR "ps_sockets6");
BPF_TABLE_PINNED("percpu_array", u32, u64, ps_stats, PS_MAX_PROXIES * PS_COUNTERS,
                 PS_PIN_DIR "ps_stats");

static __always_inline void ps_count(u32 slot, u32 counter) {
    u32 idx = slot * PS_COUNTERS + counter;
    u64 *v = ps_stats.lookup(&idx);
    if (v)
        *v += 1;
}

static __always_inline struct ps_dest *ps_find4(struct bpf_sk_lookup *ctx) {
    struct ps_dest_key key = {};
    key.prefixlen = 64;
    key.proto = IPPROTO_TCP;
    key.port = bpf_htons((u16)ctx->local_port);
    key.addr = ctx->local_ip4;
    struct ps_dest *dest = ps_dest.lookup(&key);
    if (!dest) {
        key.port = PS_PORT_ANY;
        dest = ps_dest.lookup(&key);
    }
    return dest;
}

static __always_inline struct ps_dest *ps_find6(struct bpf_sk_lookup *ctx) {
    struct ps_dest6_key key = {};
    key.prefixlen = 160;
    key.proto = IPPROTO_TCP;
    key.port = bpf_htons((u16)ctx->local_port);
    key.addr[0] = ctx->local_ip6[0];
    key.addr[1] = ctx->local_ip6[1];
    key.addr[2] = ctx->local_ip6[2];
    key.addr[3] = ctx->local_ip6[3];
    struct ps_dest *dest = ps_dest6.lookup(&key);
    if (!dest) {
        key.port = PS_PORT_ANY;
        dest = ps_dest6.lookup(&key);
    }
    return dest;
}

int ps_dispatch(struct bpf_sk_lookup *ctx) {
    if (ctx->protocol != IPPROTO_TCP)
        return SK_PASS;
    int v6 = ctx->family == AF_INET6;
    if (!v6 && ctx->family != AF_INET)
        return SK_PASS;
    ps_count(0, PS_STAT_LOOKUP);
    struct ps_dest *dest = v6 ? ps_find6(ctx) : ps_find4(ctx);
    if (!dest)
        return SK_PASS;
    u32 slot = dest->slot;
    if (slot == 0 || slot >= PS_MAX_PROXIES)
        return SK_PASS;  /* not an entry bpfsync writes */
    ps_count(slot, PS_STAT_LOOKUP);
    struct bpf_sock *sk = v6 ? (struct bpf_sock *)ps_sockets6.lookup(&slot)
                             : (struct bpf_sock *)ps_sockets.lookup(&slot);
    if (!sk) {
        ps_count(slot, PS_STAT_NO_LISTENER);
        return SK_DROP;
    }
    long err = bpf_sk_assign(ctx, sk, 0);
    bpf_sk_release(sk);
    if (err) {
        ps_count(slot, PS_STAT_ASSIGN_ERROR);
        return SK_DROP;
    }
    ps_count(slot, PS_STAT_STEERED);
    return SK_PASS;
}

/* Transparent proxy by cgroup: the seed's three programs (Pipy's cg_connect4, cg_sock_ops,
 * cg_sock_opt) without its defects. Compiled by BCC from reconciler/kernel/programs.py with
 * TP_PIN_DIR and PS_PIN_DIR "<pin root>/maps/", and TP_IDS naming one tp_connect4_<id> per
 * TransparentProxy (the other two programs are the same for all).
 *
 * tp_connect4_<id> (cgroup connect4, on the intercepted cgroup): a TCP connect() to a destination
 *   an intercept rule matches and no exclude rule does, from a socket in the Proxy's network
 *   namespace and not in an excluded cgroup, is sent to the Proxy's listener (the socket in
 *   ps_sockets, so a data path restart needs no rewrite here); the original destination goes
 *   into socket-local storage (freed with the socket: the seed's map filled up).
 * tp_connect6_<id> (cgroup connect6, same cgroup): an AF_INET6 socket connecting to an
 *   IPv4-mapped address (::ffff:a.b.c.d) is an IPv4 connection and is treated exactly as
 *   connect4 treats it (the seed had no connect6: such sockets walked around it); a native
 *   IPv6 connect is matched against tp_rules6 the same way and sent to the Proxy's IPv6
 *   listener (ps_sockets6), its destination kept in tp_orig6; one no rule intercepts is let
 *   through or refused as the TransparentProxy's `ipv6` says.
 * tp_sock_ops (sock_ops, on the intercepted cgroup): once such a connection is established,
 *   its full 4-tuple (the seed keyed by source port alone: two clients collided) -> original
 *   destination goes into tp_conns (tp_conns6 for native IPv6); the entry is deleted when the
 *   socket closes.
 * tp_getsockopt (cgroup getsockopt, on the data path's cgroup, where the listener was made):
 *   answers getsockopt(SOL_IP, SO_ORIGINAL_DST) on an accepted socket from tp_conns, and
 *   getsockopt(SOL_IPV6, IP6T_SO_ORIGINAL_DST) from tp_conns6.
 */
#include <uapi/linux/bpf.h>
#include <uapi/linux/in.h>
#include <uapi/linux/in6.h>
#include <linux/socket.h>
#include <linux/tcp.h>
#include "steer.h"
#include "tproxy.h"

#ifndef TP_IDS
#define TP_IDS
#endif
#define SO_ORIGINAL_DST 80
#define IP6T_SO_ORIGINAL_DST 80
#ifndef SOL_IPV6
#define SOL_IPV6 41
#endif

/* Copies an IPv6 address out of (or into) a context one u32 at a time: clang would merge two
 * neighbouring 4-byte context accesses into one 8-byte access, which the verifier refuses. */
#define TP_COPY6(dst, src) do {                          \
        (dst)[0] = *(volatile u32 *)&(src)[0];           \
        (dst)[1] = *(volatile u32 *)&(src)[1];           \
        (dst)[2] = *(volatile u32 *)&(src)[2];           \
        (dst)[3] = *(volatile u32 *)&(src)[3];           \
    } while (0)
#define TP_STORE6(dst, src) do {                         \
        *(volatile u32 *)&(dst)[0] = (src)[0];           \
        *(volatile u32 *)&(dst)[1] = (src)[1];           \
        *(volatile u32 *)&(dst)[2] = (src)[2];           \
        *(volatile u32 *)&(dst)[3] = (src)[3];           \
    } while (0)

BPF_TABLE_PINNED("lpm_trie", struct tp_rule_key, struct tp_rule, tp_rules, TP_MAX_RULES,
                 TP_PIN_DIR "tp_rules", BPF_F_NO_PREALLOC);
BPF_TABLE_PINNED("lpm_trie", struct tp_rule6_key, struct tp_rule, tp_rules6, TP_MAX_RULES,
                 TP_PIN_DIR "tp_rules6", BPF_F_NO_PREALLOC);
BPF_TABLE_PINNED("hash", struct tp_conn6_key, struct tp_orig6, tp_conns6, TP_MAX_CONNS,
                 TP_PIN_DIR "tp_conns6");
BPF_TABLE_PINNED("sk_storage", int, struct tp_orig6, tp_orig6, 0, TP_PIN_DIR "tp_orig6",
                 BPF_F_NO_PREALLOC);
BPF_TABLE_PINNED("hash", u32, struct tp_config, tp_config, TP_MAX, TP_PIN_DIR "tp_config");
BPF_TABLE_PINNED("hash", struct tp_conn_key, struct tp_orig, tp_conns, TP_MAX_CONNS,
                 TP_PIN_DIR "tp_conns");
BPF_TABLE_PINNED("sk_storage", int, struct tp_orig, tp_orig, 0, TP_PIN_DIR "tp_orig",
                 BPF_F_NO_PREALLOC);
BPF_TABLE_PINNED("percpu_array", u32, u64, tp_stats, TP_MAX * TP_COUNTERS,
                 TP_PIN_DIR "tp_stats");
BPF_TABLE_PINNED("percpu_array", u32, u64, tp_stats6, TP_MAX * TP6_COUNTERS,
                 TP_PIN_DIR "tp_stats6");
BPF_TABLE_PINNED("sockmap", u32, u64, ps_sockets, PS_MAX_PROXIES, PS_PIN_DIR "ps_sockets");
BPF_TABLE_PINNED("sockmap", u32, u64, ps_sockets6, PS_MAX_PROXIES, PS_PIN_DIR "ps_sockets6");

static __always_inline void tp6_count(u32 id, u32 counter) {
    u32 idx = id * TP6_COUNTERS + counter;
    u64 *v = tp_stats6.lookup(&idx);
    if (v)
        *v += 1;
}

static __always_inline void tp_count(u32 id, u32 counter) {
    u32 idx = id * TP_COUNTERS + counter;
    u64 *v = tp_stats.lookup(&idx);
    if (v)
        *v += 1;
}

static __always_inline int tp_rule_hit(u32 id, u8 kind, u32 addr, u16 port) {
    struct tp_rule_key key = {};
    key.prefixlen = 64;
    key.kind = kind;
    key.tp = id;
    key.port = port;
    key.addr = addr;
    if (tp_rules.lookup(&key))
        return 1;
    key.port = TP_PORT_ANY;
    return tp_rules.lookup(&key) != 0;
}

/* Never intercepted: a socket of another namespace than the Proxy's (TP_STAT_OTHER_NETNS),
 * or of an excluded cgroup (TP_STAT_EXCLUDED); 0 otherwise. */
static __always_inline int tp_excluded_socket(struct bpf_sock_addr *ctx, struct tp_config *cfg) {
    if (bpf_get_netns_cookie(ctx) != cfg->netns_cookie)
        return TP_STAT_OTHER_NETNS;
#pragma unroll
    for (int i = 0; i < TP_EXCLUDE_CGROUPS; i++) {
        if (cfg->cgroup_id[i] &&
            bpf_get_current_ancestor_cgroup_id(cfg->cgroup_level[i]) == cfg->cgroup_id[i])
            return TP_STAT_EXCLUDED;
    }
    return 0;
}

/* An IPv4 TCP connect to *addr:*port (network order): 0 refuse, 1 go on unchanged, 2 go on to
 * the rewritten *addr:*port (the Proxy's listener). */
static __always_inline int tp_decide(struct bpf_sock_addr *ctx, u32 id, u32 *addr, u16 *port) {
    struct tp_config *cfg = tp_config.lookup(&id);
    if (!cfg)
        return 1;
    tp_count(id, TP_STAT_CONNECTS);
    int excluded = tp_excluded_socket(ctx, cfg);
    if (excluded) {
        tp_count(id, excluded);
        return 1;
    }
    if (tp_rule_hit(id, TP_KIND_EXCLUDE, *addr, *port)) {
        tp_count(id, TP_STAT_EXCLUDED);
        return 1;
    }
    if (!tp_rule_hit(id, TP_KIND_INTERCEPT, *addr, *port))
        return 1;
    u32 slot = cfg->slot;
    struct bpf_sock *listener = (struct bpf_sock *)ps_sockets.lookup(&slot);
    if (!listener) {
        tp_count(id, TP_STAT_NO_PROXY);
        return (cfg->flags & TP_FLAG_FAIL_OPEN) ? 1 : 0;
    }
    u32 proxy_ip = listener->src_ip4;
    u16 proxy_port = bpf_htons((u16)listener->src_port);
    bpf_sk_release(listener);
    if (*addr == proxy_ip && *port == proxy_port)
        return 1;  /* a connection to the proxy itself */
    struct tp_orig *orig = tp_orig.sk_storage_get(ctx->sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
    if (!orig) {
        tp_count(id, TP_STAT_TRACK_FULL);
        return (cfg->flags & TP_FLAG_FAIL_OPEN) ? 1 : 0;
    }
    orig->addr = *addr;
    orig->port = *port;
    orig->tp = id;
    *addr = proxy_ip;
    *port = proxy_port;
    tp_count(id, TP_STAT_INTERCEPTED);
    return 2;
}

static __always_inline int tp_rule_hit6(u32 id, u8 kind, struct bpf_sock_addr *ctx) {
    struct tp_rule6_key key = {};
    key.prefixlen = 160;
    key.kind = kind;
    key.tp = id;
    key.port = (u16)ctx->user_port;
    TP_COPY6(key.addr, ctx->user_ip6);
    if (tp_rules6.lookup(&key))
        return 1;
    key.port = TP_PORT_ANY;
    return tp_rules6.lookup(&key) != 0;
}

/* A native IPv6 TCP connect: 0 refuse, 1 go on (to the Proxy's IPv6 listener when a rule
 * intercepts it: the address is rewritten here). */
static __always_inline int tp_decide6(struct bpf_sock_addr *ctx, u32 id) {
    struct tp_config *cfg = tp_config.lookup(&id);
    if (!cfg)
        return 1;
    tp_count(id, TP_STAT_CONNECTS);
    int excluded = tp_excluded_socket(ctx, cfg);
    if (excluded) {
        tp_count(id, excluded);
        return 1;
    }
    if (tp_rule_hit6(id, TP_KIND_EXCLUDE, ctx)) {
        tp_count(id, TP_STAT_EXCLUDED);
        return 1;
    }
    if (!tp_rule_hit6(id, TP_KIND_INTERCEPT, ctx)) {
        if (cfg->flags & TP_FLAG_REFUSE_IPV6) {
            tp6_count(id, TP6_STAT_REFUSED);
            return 0;
        }
        tp6_count(id, TP6_STAT_DIRECT);
        return 1;
    }
    u32 slot = cfg->slot;
    struct bpf_sock *listener = (struct bpf_sock *)ps_sockets6.lookup(&slot);
    if (!listener) {
        tp_count(id, TP_STAT_NO_PROXY);
        return (cfg->flags & TP_FLAG_FAIL_OPEN) ? 1 : 0;
    }
    u32 proxy[4], addr[4];
    TP_COPY6(proxy, listener->src_ip6);
    u16 proxy_port = bpf_htons((u16)listener->src_port);
    bpf_sk_release(listener);
    TP_COPY6(addr, ctx->user_ip6);
    u16 port = (u16)ctx->user_port;
    if (addr[0] == proxy[0] && addr[1] == proxy[1] && addr[2] == proxy[2] &&
        addr[3] == proxy[3] && port == proxy_port)
        return 1;  /* a connection to the proxy itself */
    struct tp_orig6 *orig = tp_orig6.sk_storage_get(ctx->sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
    if (!orig) {
        tp_count(id, TP_STAT_TRACK_FULL);
        return (cfg->flags & TP_FLAG_FAIL_OPEN) ? 1 : 0;
    }
    __builtin_memcpy(orig->addr, addr, sizeof(addr));
    orig->port = port;
    orig->tp = id;
    TP_STORE6(ctx->user_ip6, proxy);
    ctx->user_port = proxy_port;
    tp_count(id, TP_STAT_INTERCEPTED);
    return 1;
}

static __always_inline int tp_connect4(struct bpf_sock_addr *ctx, u32 id) {
    if (ctx->type != SOCK_STREAM || (ctx->protocol && ctx->protocol != IPPROTO_TCP))
        return 1;
    u32 addr = ctx->user_ip4;
    u16 port = (u16)ctx->user_port;
    int verdict = tp_decide(ctx, id, &addr, &port);
    if (verdict == 2) {
        ctx->user_ip4 = addr;
        ctx->user_port = port;
    }
    return verdict != 0;
}

static __always_inline int tp_connect6(struct bpf_sock_addr *ctx, u32 id) {
    if (ctx->type != SOCK_STREAM || (ctx->protocol && ctx->protocol != IPPROTO_TCP))
        return 1;
    if (ctx->user_ip6[0] == 0 && ctx->user_ip6[1] == 0 &&
        ctx->user_ip6[2] == bpf_htonl(0xffff)) {  /* ::ffff:a.b.c.d: an IPv4 connection */
        u32 addr = ctx->user_ip6[3];
        u16 port = (u16)ctx->user_port;
        int verdict = tp_decide(ctx, id, &addr, &port);
        if (verdict == 2) {
            ctx->user_ip6[3] = addr;  /* stays IPv4-mapped: ::ffff:<listener> */
            ctx->user_port = port;
        }
        return verdict != 0;
    }
    return tp_decide6(ctx, id);
}

/* tp_connect4_<id> and tp_connect6_<id>: entry points per TransparentProxy, listed in TP_IDS
 * by the compiler flags (TP_CONNECT4(3) TP_CONNECT4(7)); each one's instructions depend on
 * its id only. */
#define TP_CONNECT4(n) \
    int tp_connect4_##n(struct bpf_sock_addr *ctx) { return tp_connect4(ctx, n); } \
    int tp_connect6_##n(struct bpf_sock_addr *ctx) { return tp_connect6(ctx, n); }
TP_IDS

static __always_inline void tp_conn_key_of(struct bpf_sock_ops *skops, struct tp_conn_key *k) {
    k->client_ip = bpf_ntohl(skops->local_ip4);
    k->client_port = (u16)skops->local_port;
    k->proxy_ip = bpf_ntohl(skops->remote_ip4);
    k->proxy_port = (u16)bpf_ntohl(skops->remote_port);
}

static __always_inline void tp_conn6_key_of(struct bpf_sock_ops *skops,
                                            struct tp_conn6_key *k) {
    TP_COPY6(k->client_ip, skops->local_ip6);
    TP_COPY6(k->proxy_ip, skops->remote_ip6);
    k->client_port = (u16)skops->local_port;
    k->proxy_port = (u16)bpf_ntohl(skops->remote_port);
}

/* A native IPv6 connection of ours: its tp_conns6 entry, made when established and deleted
 * when it closes. */
static __always_inline int tp_sock_ops6(struct bpf_sock_ops *skops, u32 op) {
    struct tp_conn6_key key = {};
    tp_conn6_key_of(skops, &key);
    if (op == BPF_SOCK_OPS_STATE_CB) {
        if (skops->args[1] == BPF_TCP_CLOSE)
            tp_conns6.delete(&key);
        return 1;
    }
    struct bpf_sock *sk = skops->sk;
    if (!sk)
        return 1;
    struct tp_orig6 *orig = tp_orig6.sk_storage_get(sk, 0, 0);
    if (!orig)
        return 1;  /* not intercepted */
    struct tp_orig6 value = *orig;
    if (tp_conns6.update(&key, &value) != 0) {
        tp_count(value.tp, TP_STAT_TRACK_FULL);
        return 1;
    }
    bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_STATE_CB_FLAG);
    return 1;
}

int tp_sock_ops(struct bpf_sock_ops *skops) {
    u32 op = skops->op;
    if (op != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB && op != BPF_SOCK_OPS_STATE_CB)
        return 1;
    if (skops->family != AF_INET && skops->family != AF_INET6)
        return 1;
    /* AF_INET6 to a v4-mapped address: an IPv4 connection (tp_orig, tp_conns, below) */
    if (skops->family == AF_INET6) {
        u32 remote[4];
        TP_COPY6(remote, skops->remote_ip6);
        if (!(remote[0] == 0 && remote[1] == 0 && remote[2] == bpf_htonl(0xffff)))
            return tp_sock_ops6(skops, op);
    }
    struct tp_conn_key key = {};
    tp_conn_key_of(skops, &key);
    if (op == BPF_SOCK_OPS_STATE_CB) {
        if (skops->args[1] == BPF_TCP_CLOSE)
            tp_conns.delete(&key);
        return 1;
    }
    struct bpf_sock *sk = skops->sk;
    if (!sk)
        return 1;
    struct tp_orig *orig = tp_orig.sk_storage_get(sk, 0, 0);
    if (!orig)
        return 1;  /* not intercepted */
    struct tp_orig value = *orig;
    if (tp_conns.update(&key, &value) != 0) {
        tp_count(value.tp, TP_STAT_TRACK_FULL);
        return 1;
    }
    bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_STATE_CB_FLAG);
    return 1;
}

/* getsockopt(SOL_IPV6, IP6T_SO_ORIGINAL_DST) on an accepted IPv6 socket: a sockaddr_in6. */
static __always_inline int tp_getsockopt6(struct bpf_sockopt *ctx, struct bpf_sock *sk) {
    struct tp_conn6_key key = {};
    TP_COPY6(key.client_ip, sk->dst_ip6);
    TP_COPY6(key.proxy_ip, sk->src_ip6);
    key.client_port = bpf_ntohs(sk->dst_port);
    key.proxy_port = (u16)sk->src_port;
    struct tp_orig6 *orig = tp_conns6.lookup(&key);
    if (!orig) {
        tp_count(0, TP_STAT_UNANSWERED);
        return 1;
    }
    struct sockaddr_in6 *sin6 = ctx->optval;
    if ((void *)(sin6 + 1) > ctx->optval_end)
        return 1;
    sin6->sin6_family = AF_INET6;
    sin6->sin6_port = orig->port;
    sin6->sin6_flowinfo = 0;
    sin6->sin6_addr.in6_u.u6_addr32[0] = orig->addr[0];
    sin6->sin6_addr.in6_u.u6_addr32[1] = orig->addr[1];
    sin6->sin6_addr.in6_u.u6_addr32[2] = orig->addr[2];
    sin6->sin6_addr.in6_u.u6_addr32[3] = orig->addr[3];
    sin6->sin6_scope_id = 0;
    *(volatile s32 *)&ctx->optlen = sizeof(*sin6);
    *(volatile s32 *)&ctx->retval = 0;
    tp_count(orig->tp, TP_STAT_ANSWERED);
    return 1;
}

int tp_getsockopt(struct bpf_sockopt *ctx) {
    if (ctx->optname != SO_ORIGINAL_DST)  /* == IP6T_SO_ORIGINAL_DST */
        return 1;
    if (ctx->level != SOL_IP && ctx->level != SOL_IPV6)
        return 1;
    struct bpf_sock *sk = ctx->sk;
    if (!sk)
        return 1;
    if (ctx->level == SOL_IPV6)
        return tp_getsockopt6(ctx, sk);
    struct tp_conn_key key = {};
    key.client_ip = bpf_ntohl(sk->dst_ip4);
    key.client_port = bpf_ntohs(sk->dst_port);
    key.proxy_ip = bpf_ntohl(sk->src_ip4);
    key.proxy_port = (u16)sk->src_port;
    struct tp_orig *orig = tp_conns.lookup(&key);
    if (!orig) {
        tp_count(0, TP_STAT_UNANSWERED);
        return 1;
    }
    struct sockaddr_in *sin = ctx->optval;
    if ((void *)(sin + 1) > ctx->optval_end)
        return 1;  /* the caller's buffer is too small: leave the kernel's answer */
    sin->sin_family = AF_INET;
    sin->sin_port = orig->port;
    sin->sin_addr.s_addr = orig->addr;
    __builtin_memset(sin->sin_zero, 0, sizeof(sin->sin_zero));
    /* two stores the verifier sees apart (clang would merge them into one 8-byte store) */
    *(volatile s32 *)&ctx->optlen = sizeof(*sin);
    *(volatile s32 *)&ctx->retval = 0;
    tp_count(orig->tp, TP_STAT_ANSWERED);
    return 1;
}

/* TrueIngress TC programs: GUE encapsulation (egress), decapsulation and ping learning
 * (ingress).  Compiled by BCC from reconciler/kernel/programs.py with:
 *
 *   TI_PIN_DIR     "<pin root>/maps/": the pinned tables (created and checked by bpfsync)
 *   TI_ROLE_NODE   0 gateway: encapsulate by destination (TI_ENCAP), decapsulate as is
 *                  1 node: decapsulate and rewrite to the backend, reverse-NAT replies
 *   TI_REPLIES_TUNNEL  node only: 1 standard mode (replies encapsulated back), 0 DSO
 *   TI_FIB         1: after encapsulation, route the outer packet with a FIB lookup
 *
 * Header reads use bpf_skb_load_bytes (works on non-linear and GSO packets); writes use
 * bpf_skb_store_bytes and the checksum helpers, never pointers kept across
 * bpf_skb_adjust_room.  Layout and byte order: trueingress.h and README.md.
 */
#include <uapi/linux/bpf.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/in.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/ipv6.h>
#include <uapi/linux/pkt_cls.h>
#include <uapi/linux/udp.h>
#include "trueingress.h"

#ifndef TI_ROLE_NODE
#define TI_ROLE_NODE 0
#endif
#ifndef TI_REPLIES_TUNNEL
#define TI_REPLIES_TUNNEL 1
#endif
#ifndef TI_FIB
#define TI_FIB 0
#endif

#define TI_IP_MF 0x2000
#define TI_IP_OFFSET 0x1fff
#define TI_IP_DF 0x4000
#define TI_OUTER_LEN (sizeof(struct iphdr) + sizeof(struct udphdr) + \
                      sizeof(struct ti_gue_hdr) + sizeof(struct ti_gue_data))
#define TI_OUTER6_LEN (40 + sizeof(struct udphdr) + sizeof(struct ti_gue_hdr) + \
                       sizeof(struct ti_gue_data))
#define TI_AF_INET 2
#define TI_AF_INET6 10
#define TI_SPORT_BASE 49152
#define TI_IP6_HLEN 40
/* Kernel 6.3's bpf_skb_adjust_room flags (uapi/linux/bpf.h); the headers BCC compiles against
 * may be older than the kernel.  They set skb->protocol to the inner family when the outer
 * header of the other family goes. */
#define TI_ADJ_ROOM_DECAP_L3_IPV4 (1ULL << 7)
#define TI_ADJ_ROOM_DECAP_L3_IPV6 (1ULL << 8)

/* BCC's helpers.h declares the pre-5.11 three-argument form of this helper. */
static long (*ti_redirect_neigh)(u32 ifindex, struct bpf_redir_neigh *params, int plen,
                                 u64 flags) = (void *)BPF_FUNC_redirect_neigh;

BPF_TABLE_PINNED("hash", struct ti_endpoint, struct ti_service, ti_encap, TI_MAX_SERVICES,
                 TI_PIN_DIR "ti_encap");
BPF_TABLE_PINNED("hash", struct ti_sid, struct ti_verify, ti_verify, TI_MAX_SERVICES,
                 TI_PIN_DIR "ti_verify");
BPF_TABLE_PINNED("hash", struct ti_endpoint, struct ti_reply, ti_reply, TI_MAX_SERVICES,
                 TI_PIN_DIR "ti_reply");
BPF_TABLE_PINNED("hash", u32, struct ti_tunnel, ti_tunnel, TI_MAX_TUNNELS,
                 TI_PIN_DIR "ti_tunnel");
BPF_TABLE_PINNED("hash", struct ti_endpoint, struct ti_decap, ti_decap, TI_MAX_DECAP,
                 TI_PIN_DIR "ti_decap");
BPF_TABLE_PINNED("hash", u32, struct ti_learned, ti_learned, TI_MAX_TUNNELS,
                 TI_PIN_DIR "ti_learned");
BPF_TABLE_PINNED("percpu_array", u32, u64, ti_stats, TI_STATS_SLOTS, TI_PIN_DIR "ti_stats");
BPF_TABLE_PINNED("hash", struct ti_next_key, struct ti_next, ti_next, TI_MAX_SERVICES,
                 TI_PIN_DIR "ti_next");
BPF_TABLE_PINNED("hash", u32, struct ti_fresh, ti_fresh, TI_MAX_TUNNELS, TI_PIN_DIR "ti_fresh");
BPF_TABLE_PINNED("hash", struct ti_endpoint6, struct ti_service, ti_encap6, TI_MAX_SERVICES,
                 TI_PIN_DIR "ti_encap6");
BPF_TABLE_PINNED("hash", struct ti_sid, struct ti_verify6, ti_verify6, TI_MAX_SERVICES,
                 TI_PIN_DIR "ti_verify6");
BPF_TABLE_PINNED("hash", struct ti_endpoint6, struct ti_reply6, ti_reply6, TI_MAX_SERVICES,
                 TI_PIN_DIR "ti_reply6");
BPF_TABLE_PINNED("hash", u32, struct ti_tunnel6, ti_tunnel6, TI_MAX_TUNNELS,
                 TI_PIN_DIR "ti_tunnel6");
BPF_TABLE_PINNED("hash", struct ti_endpoint6, struct ti_decap, ti_decap6, TI_MAX_DECAP,
                 TI_PIN_DIR "ti_decap6");
BPF_TABLE_PINNED("hash", u32, struct ti_learned6, ti_learned6, TI_MAX_TUNNELS,
                 TI_PIN_DIR "ti_learned6");

/* Declared here: BCC's helpers.h may predate it (kernel 6.1). */
static u64 (*ti_ktime_get_tai_ns)(void) = (void *)BPF_FUNC_ktime_get_tai_ns;

/* Everything before the inner IP header, written in one bpf_skb_store_bytes. */
struct ti_outer {
    struct iphdr ip;
    struct udphdr udp;
    struct ti_gue_hdr gue;
    struct ti_gue_data data;
} __attribute__((packed));

/* The same over an IPv6 underlay: 76 bytes. */
struct ti_outer6 {
    struct ipv6hdr ip;
    struct udphdr udp;
    struct ti_gue_hdr gue;
    struct ti_gue_data data;
} __attribute__((packed));

static __always_inline int count(u32 stat, int verdict)
{
    u64 *c = ti_stats.lookup(&stat);
    if (c)
        *c += 1;
    return verdict;
}

static __always_inline int key_equal(const u8 *a, const u8 *b)
{
    const u32 *x = (const u32 *)a, *y = (const u32 *)b;
    return ((x[0] ^ y[0]) | (x[1] ^ y[1]) | (x[2] ^ y[2]) | (x[3] ^ y[3])) == 0;
}

/* The second accepted key of a tunnel or service (TI_NEXT), or NULL. */
static __always_inline const u8 *next_key(u32 kind, __be32 id)
{
    struct ti_next_key k = {.kind = bpf_htonl(kind), .id = id};
    struct ti_next *n = ti_next.lookup(&k);
    return n ? n->key : 0;
}

/* 8 bytes read little-endian (SipHash's word order) or big-endian (wire order), whatever the
 * host's order. */
static __always_inline u64 le64(const u8 *p)
{
    return (u64)p[0] | (u64)p[1] << 8 | (u64)p[2] << 16 | (u64)p[3] << 24 |
           (u64)p[4] << 32 | (u64)p[5] << 40 | (u64)p[6] << 48 | (u64)p[7] << 56;
}

static __always_inline u64 be64(const u8 *p)
{
    return (u64)p[7] | (u64)p[6] << 8 | (u64)p[5] << 16 | (u64)p[4] << 24 |
           (u64)p[3] << 32 | (u64)p[2] << 40 | (u64)p[1] << 48 | (u64)p[0] << 56;
}

#define TI_ROTL(x, b) (((x) << (b)) | ((x) >> (64 - (b))))
#define TI_SIPROUND                                                                    \
    do {                                                                               \
        v0 += v1; v1 = TI_ROTL(v1, 13); v1 ^= v0; v0 = TI_ROTL(v0, 32);                \
        v2 += v3; v3 = TI_ROTL(v3, 16); v3 ^= v2;                                      \
        v0 += v3; v3 = TI_ROTL(v3, 21); v3 ^= v0;                                      \
        v2 += v1; v1 = TI_ROTL(v1, 17); v1 ^= v2; v2 = TI_ROTL(v2, 32);                \
    } while (0)

/* SipHash-2-4 (Aumasson and Bernstein) of a 16-byte message, given as its two little-endian
 * words, under a 128-bit key.  Only 64-bit adds, rotates and xors: no loop, no table. */
static __always_inline u64 siphash16(const u8 *key, u64 m0, u64 m1)
{
    u64 k0 = le64(key), k1 = le64(key + 8);
    u64 v0 = k0 ^ 0x736f6d6570736575ULL, v1 = k1 ^ 0x646f72616e646f6dULL;
    u64 v2 = k0 ^ 0x6c7967656e657261ULL, v3 = k1 ^ 0x7465646279746573ULL;
    u64 b = 16ULL << 56; /* message length, no tail bytes */
    v3 ^= m0; TI_SIPROUND; TI_SIPROUND; v0 ^= m0;
    v3 ^= m1; TI_SIPROUND; TI_SIPROUND; v0 ^= m1;
    v3 ^= b; TI_SIPROUND; TI_SIPROUND; v0 ^= b;
    v2 ^= 0xff;
    TI_SIPROUND; TI_SIPROUND; TI_SIPROUND; TI_SIPROUND;
    return v0 ^ v1 ^ v2 ^ v3;
}

/* The ping's MAC under key: SipHash-2-4 of GUE base header, tunnel id and timestamp. */
static __always_inline int ping_mac_ok(const u8 *key, const struct ti_gue_hdr *g,
                                       const struct ti_gue_ping *p)
{
    u8 msg[16];
    __builtin_memcpy(msg, g, 4);
    __builtin_memcpy(msg + 4, &p->tunnel_id, 4);
    __builtin_memcpy(msg + 8, p->timestamp, 8);
    return siphash16(key, le64(msg), le64(msg + 8)) == le64(p->mac);
}

static __always_inline __u16 fold(u64 sum)
{
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    return ~sum;
}

/* Rewrite one address and port of the IPv4 packet at ETH_HLEN (dst when is_dst, else src),
 * fixing the IP and L4 checksums.  Ports and the L4 checksum only in the first fragment. */
static __always_inline int rewrite(struct __sk_buff *skb, struct iphdr *ip, int is_dst,
                                   __be32 addr, __be16 port)
{
    u32 l4 = ETH_HLEN + ip->ihl * 4;
    u32 addr_off = ETH_HLEN + (is_dst ? offsetof(struct iphdr, daddr) : offsetof(struct iphdr, saddr));
    u32 port_off = l4 + (is_dst ? 2 : 0);
    __be32 old_addr = is_dst ? ip->daddr : ip->saddr;
    __be16 old_port;
    if (!(ip->frag_off & bpf_htons(TI_IP_OFFSET))) {
        u32 csum_off = l4 + (ip->protocol == IPPROTO_TCP ? 16 : 6);
        u64 mangled = ip->protocol == IPPROTO_UDP ? BPF_F_MARK_MANGLED_0 : 0;
        if (bpf_skb_load_bytes(skb, port_off, &old_port, 2))
            return -1;
        if (bpf_l4_csum_replace(skb, csum_off, old_addr, addr, BPF_F_PSEUDO_HDR | mangled | 4) ||
            bpf_l4_csum_replace(skb, csum_off, old_port, port, mangled | 2) ||
            bpf_skb_store_bytes(skb, port_off, &port, 2, 0))
            return -1;
    }
    if (bpf_l3_csum_replace(skb, ETH_HLEN + offsetof(struct iphdr, check), old_addr, addr, 4) ||
        bpf_skb_store_bytes(skb, addr_off, &addr, 4, 0))
        return -1;
    return 0;
}

/* Rewrite one address and port of the IPv6 packet at ETH_HLEN (dst when is_dst, else src),
 * its L4 header right after the fixed header (proto TCP or UDP, checked by the caller).
 * IPv6 has no header checksum; the L4 checksum covers the addresses (pseudo header). */
static __always_inline int rewrite6(struct __sk_buff *skb, u8 proto, int is_dst, const u8 *addr,
                                    __be16 port)
{
    u32 l4 = ETH_HLEN + TI_IP6_HLEN;
    u32 addr_off = ETH_HLEN + (is_dst ? offsetof(struct ipv6hdr, daddr)
                                      : offsetof(struct ipv6hdr, saddr));
    u32 port_off = l4 + (is_dst ? 2 : 0);
    u32 csum_off = l4 + (proto == IPPROTO_TCP ? 16 : 6);
    u64 mangled = proto == IPPROTO_UDP ? BPF_F_MARK_MANGLED_0 : 0;
    __be32 old[4], new[4];
    __be16 old_port;
    __builtin_memcpy(new, addr, 16);
    if (bpf_skb_load_bytes(skb, addr_off, old, 16) || bpf_skb_load_bytes(skb, port_off, &old_port, 2))
        return -1;
    s64 diff = bpf_csum_diff(old, 16, new, 16, 0);
    if (diff < 0)
        return -1;
    if (bpf_l4_csum_replace(skb, csum_off, 0, diff, BPF_F_PSEUDO_HDR | mangled) ||
        bpf_l4_csum_replace(skb, csum_off, old_port, port, mangled | 2) ||
        bpf_skb_store_bytes(skb, port_off, &port, 2, 0) ||
        bpf_skb_store_bytes(skb, addr_off, new, 16, 0))
        return -1;
    return 0;
}

/* Flow hash of the inner 5-tuple for the outer UDP source port: stable per flow, spread
 * across flows (ECMP).  Cheaper than bpf_get_hash_recalc, which runs the flow dissector. */
static __always_inline u32 flow_hash(u32 saddr, u32 daddr, u32 ports, u8 proto)
{
    u32 h = saddr * 0x9e3779b1u;
    h ^= daddr + 0x7f4a7c15u + (h << 6) + (h >> 2);
    h ^= ports + proto + 0x165667b1u + (h << 6) + (h >> 2);
    return h ^ (h >> 15);
}

/* The same for an IPv6 packet: each address folded to 32 bits first. */
static __always_inline u32 flow_hash6(const struct ipv6hdr *ip6, u32 ports)
{
    const u32 *s = (const u32 *)&ip6->saddr, *d = (const u32 *)&ip6->daddr;
    return flow_hash(s[0] ^ s[1] ^ s[2] ^ s[3], d[0] ^ d[1] ^ d[2] ^ d[3], ports, ip6->nexthdr);
}

/* What encap needs of the inner packet at ETH_HLEN, either family. */
struct ti_inner {
    u32 len;      /* its total length in bytes */
    u32 hash;     /* flow hash (outer UDP source port) */
    u8 tos;       /* IPv4 TOS or IPv6 traffic class, copied to the outer header */
    u8 gue_proto; /* IPPROTO_IPIP or IPPROTO_IPV6 */
};

/* After encapsulation: the outer Ethernet type written where the family changed (type, else 0;
 * adjust_room set skb->protocol already), the packet counted, and, with TI_FIB, routed: fib
 * holds the family and the outer addresses. */
static __always_inline int sent(struct __sk_buff *skb, __be16 type, struct bpf_fib_lookup *fib)
{
    if (type && bpf_skb_store_bytes(skb, offsetof(struct ethhdr, h_proto), &type, 2, 0))
        return count(TI_STAT_DROP_ERROR, TC_ACT_SHOT);
    count(TI_STAT_ENCAP, 0);
#if TI_FIB
    fib->l4_protocol = IPPROTO_UDP;
    fib->ifindex = skb->ifindex;
    int rc = bpf_fib_lookup(skb, fib, sizeof(*fib), BPF_FIB_LOOKUP_OUTPUT);
    if (rc == BPF_FIB_LKUP_RET_SUCCESS) {
        bpf_skb_store_bytes(skb, 0, fib->dmac, ETH_ALEN, 0);
        bpf_skb_store_bytes(skb, ETH_ALEN, fib->smac, ETH_ALEN, 0);
        if (fib->ifindex == skb->ifindex)
            return TC_ACT_OK;
        return count(TI_STAT_FIB_REDIRECT, bpf_redirect(fib->ifindex, 0));
    }
    if (rc == BPF_FIB_LKUP_RET_NO_NEIGH) {
        struct bpf_redir_neigh nh = {};
        nh.nh_family = fib->family;
        if (fib->family == TI_AF_INET6)
            __builtin_memcpy(nh.ipv6_nh, fib->ipv6_dst, 16);
        else
            nh.ipv4_nh = fib->ipv4_dst;
        return count(TI_STAT_FIB_REDIRECT, ti_redirect_neigh(fib->ifindex, &nh, sizeof(nh), 0));
    }
    return count(TI_STAT_DROP_ERROR, TC_ACT_SHOT);
#else
    return TC_ACT_OK;
#endif
}

/* The GUE header and private data of a data packet (bpf/README.md). */
static __always_inline void gue_data(struct ti_gue_hdr *g, struct ti_gue_data *d,
                                     const struct ti_inner *inner, __be32 tunnel_id,
                                     struct ti_sid sid, const u8 *key)
{
    g->vch = TI_GUE_DATA_HLEN;
    g->proto = inner->gue_proto;
    d->tunnel_id = tunnel_id;
    d->sid = sid;
    __builtin_memcpy(d->key, key, TI_KEY_LEN);
}

static __always_inline int all_zero(const u8 *a)
{
    const u32 *x = (const u32 *)a;
    return (x[0] | x[1] | x[2] | x[3]) == 0;
}

/* Encapsulate into GUE over the IPv6 underlay of tunnel tunnel_id (TI_TUNNEL6).  The outer UDP
 * checksum is 0 (RFC 6935; the Tunnel declares zeroChecksum): GSO segments the packet after
 * this program and a UDP tunnel segment's checksum is not computed.  The flow label carries
 * 20 bits of the flow hash (ECMP on IPv6 hashes it). */
static __always_inline int encap6(struct __sk_buff *skb, const struct ti_inner *inner,
                                  __be32 tunnel_id, struct ti_sid sid, const u8 *key)
{
    u32 tid = tunnel_id;
    struct ti_tunnel6 *t = ti_tunnel6.lookup(&tid);
    if (!t)
        return count(TI_STAT_DROP_NO_TUNNEL, TC_ACT_SHOT);
    struct ti_outer6 h = {};
    __builtin_memcpy(&h.ip.saddr, t->local_addr, 16);
    __builtin_memcpy(&h.ip.daddr, t->remote_addr, 16);
    h.udp.dest = t->remote_port;
    if (t->flags & bpf_htonl(TI_TUNNEL_LEARN)) {
        struct ti_learned6 *l = ti_learned6.lookup(&tid);
        if (!l)
            return count(TI_STAT_DROP_NO_REMOTE, TC_ACT_SHOT);
        __builtin_memcpy(&h.ip.daddr, l->remote_addr, 16);
        h.udp.dest = l->remote_port;
    }
    if (all_zero((const u8 *)&h.ip.daddr) || !h.udp.dest)
        return count(TI_STAT_DROP_NO_REMOTE, TC_ACT_SHOT);

    u32 payload = inner->len + TI_OUTER6_LEN - TI_IP6_HLEN;
    if (payload > 0xffff) /* a GSO packet: segmentation rewrites the outer lengths */
        payload = 0xffff;
    h.ip.version = 6;
    h.ip.priority = inner->tos >> 4;
    h.ip.flow_lbl[0] = ((inner->tos & 0xf) << 4) | ((inner->hash >> 16) & 0xf);
    h.ip.flow_lbl[1] = inner->hash >> 8;
    h.ip.flow_lbl[2] = inner->hash;
    h.ip.payload_len = bpf_htons(payload);
    h.ip.nexthdr = IPPROTO_UDP;
    h.ip.hop_limit = 64;
    h.udp.source = bpf_htons(TI_SPORT_BASE | (inner->hash & 0x3fff));
    h.udp.len = h.ip.payload_len;
    gue_data(&h.gue, &h.data, inner, tunnel_id, sid, key);

    if (bpf_skb_adjust_room(skb, TI_OUTER6_LEN, BPF_ADJ_ROOM_MAC,
                            BPF_F_ADJ_ROOM_ENCAP_L3_IPV6 | BPF_F_ADJ_ROOM_ENCAP_L4_UDP))
        return count(TI_STAT_DROP_ERROR, TC_ACT_SHOT);
    if (bpf_skb_store_bytes(skb, ETH_HLEN, &h, sizeof(h), 0))
        return count(TI_STAT_DROP_ERROR, TC_ACT_SHOT);
#if TI_FIB
    struct bpf_fib_lookup fib = {.family = TI_AF_INET6, .tot_len = payload + TI_IP6_HLEN};
    __builtin_memcpy(fib.ipv6_src, &h.ip.saddr, 16);
    __builtin_memcpy(fib.ipv6_dst, &h.ip.daddr, 16);
    return sent(skb, inner->gue_proto == IPPROTO_IPIP ? bpf_htons(ETH_P_IPV6) : 0, &fib);
#else
    return sent(skb, inner->gue_proto == IPPROTO_IPIP ? bpf_htons(ETH_P_IPV6) : 0, 0);
#endif
}

/* Encapsulate the IP packet at ETH_HLEN into GUE for tunnel tunnel_id: over IPv4 (TI_TUNNEL)
 * or, for a tunnel of TI_TUNNEL6, over IPv6. */
static __always_inline int encap(struct __sk_buff *skb, const struct ti_inner *inner,
                                 __be32 tunnel_id, struct ti_sid sid, const u8 *key)
{
    u32 tid = tunnel_id;
    struct ti_tunnel *t = ti_tunnel.lookup(&tid);
    if (!t)
        return encap6(skb, inner, tunnel_id, sid, key);
    __be32 raddr = t->remote_addr;
    __be16 rport = t->remote_port;
    if (t->flags & bpf_htonl(TI_TUNNEL_LEARN)) {
        struct ti_learned *l = ti_learned.lookup(&tid);
        if (!l)
            return count(TI_STAT_DROP_NO_REMOTE, TC_ACT_SHOT);
        raddr = l->remote_addr;
        rport = l->remote_port;
    }
    if (!raddr || !rport)
        return count(TI_STAT_DROP_NO_REMOTE, TC_ACT_SHOT);

    struct ti_outer h = {};
    u32 total = inner->len + TI_OUTER_LEN;
    if (total > 0xffff) /* a GSO packet: segmentation rewrites the outer lengths */
        total = 0xffff;
    h.ip.version = 4;
    h.ip.ihl = 5;
    h.ip.tos = inner->tos;
    h.ip.tot_len = bpf_htons(total);
    h.ip.frag_off = bpf_htons(TI_IP_DF); /* fragments cannot be decapsulated: never fragment */
    h.ip.ttl = 64;
    h.ip.protocol = IPPROTO_UDP;
    h.ip.saddr = t->local_addr;
    h.ip.daddr = raddr;
    h.ip.check = fold(bpf_csum_diff(0, 0, (__be32 *)&h.ip, sizeof(h.ip), 0));
    h.udp.source = bpf_htons(TI_SPORT_BASE | (inner->hash & 0x3fff));
    h.udp.dest = rport;
    h.udp.len = bpf_htons(total - sizeof(struct iphdr));
    h.udp.check = 0; /* allowed for IPv4; the inner packet keeps its own checksum */
    gue_data(&h.gue, &h.data, inner, tunnel_id, sid, key);

    if (bpf_skb_adjust_room(skb, TI_OUTER_LEN, BPF_ADJ_ROOM_MAC,
                            BPF_F_ADJ_ROOM_ENCAP_L3_IPV4 | BPF_F_ADJ_ROOM_ENCAP_L4_UDP))
        return count(TI_STAT_DROP_ERROR, TC_ACT_SHOT);
    if (bpf_skb_store_bytes(skb, ETH_HLEN, &h, sizeof(h), 0))
        return count(TI_STAT_DROP_ERROR, TC_ACT_SHOT);
#if TI_FIB
    struct bpf_fib_lookup fib = {.family = TI_AF_INET, .tot_len = total,
                                 .ipv4_src = h.ip.saddr, .ipv4_dst = h.ip.daddr};
    return sent(skb, inner->gue_proto == IPPROTO_IPV6 ? bpf_htons(ETH_P_IP) : 0, &fib);
#else
    return sent(skb, inner->gue_proto == IPPROTO_IPV6 ? bpf_htons(ETH_P_IP) : 0, 0);
#endif
}

/* IPv6: only a TCP or UDP header right after the fixed header is looked at; a packet with
 * extension headers is not the data path's (passed, as the IPv4 path passes fragments). */
static __always_inline int egress6(struct __sk_buff *skb)
{
    struct ipv6hdr ip6;
    __be16 ports[2];
    if (bpf_skb_load_bytes(skb, ETH_HLEN, &ip6, sizeof(ip6)) || ip6.version != 6 ||
        (ip6.nexthdr != IPPROTO_TCP && ip6.nexthdr != IPPROTO_UDP) ||
        bpf_skb_load_bytes(skb, ETH_HLEN + TI_IP6_HLEN, ports, sizeof(ports)))
        return count(TI_STAT_PASS, TC_ACT_OK);
    struct ti_inner in = {.len = bpf_ntohs(ip6.payload_len) + TI_IP6_HLEN,
                          .tos = (ip6.priority << 4) | (ip6.flow_lbl[0] >> 4),
                          .gue_proto = IPPROTO_IPV6};
#if TI_ROLE_NODE
    struct ti_endpoint6 src = {.port = ports[0], .proto = ip6.nexthdr};
    __builtin_memcpy(src.addr, &ip6.saddr, 16);
    struct ti_reply6 *r = ti_reply6.lookup(&src);
    if (!r)
        return count(TI_STAT_PASS, TC_ACT_OK);
    struct ti_reply6 reply = *r;
    if (rewrite6(skb, ip6.nexthdr, 0, reply.proxy.addr, reply.proxy.port))
        return count(TI_STAT_DROP_ERROR, TC_ACT_SHOT);
    count(TI_STAT_REPLY_NAT, 0);
#if TI_REPLIES_TUNNEL
    __builtin_memcpy(&ip6.saddr, reply.proxy.addr, 16);
    ports[0] = reply.proxy.port;
    in.hash = flow_hash6(&ip6, *(u32 *)ports);
    return encap(skb, &in, reply.tunnel_id, reply.sid, reply.key);
#else
    return TC_ACT_OK;
#endif
#else
    struct ti_endpoint6 dst = {.port = ports[1], .proto = ip6.nexthdr};
    __builtin_memcpy(dst.addr, &ip6.daddr, 16);
    struct ti_service *s = ti_encap6.lookup(&dst);
    if (!s)
        return count(TI_STAT_PASS, TC_ACT_OK);
    struct ti_service svc = *s;
    in.hash = flow_hash6(&ip6, *(u32 *)ports);
    return encap(skb, &in, svc.tunnel_id, svc.sid, svc.key);
#endif
}

int ti_egress(struct __sk_buff *skb)
{
    struct iphdr ip;
    __be16 ports[2];
    if (skb->protocol == bpf_htons(ETH_P_IPV6))
        return egress6(skb);
    if (skb->protocol != bpf_htons(ETH_P_IP) || bpf_skb_load_bytes(skb, ETH_HLEN, &ip, sizeof(ip)))
        return count(TI_STAT_PASS, TC_ACT_OK);
    if (ip.version != 4 || ip.ihl < 5 || (ip.protocol != IPPROTO_TCP && ip.protocol != IPPROTO_UDP))
        return count(TI_STAT_PASS, TC_ACT_OK);
    if (ip.frag_off & bpf_htons(TI_IP_OFFSET)) /* no ports to match on */
        return count(TI_STAT_PASS, TC_ACT_OK);
    if (bpf_skb_load_bytes(skb, ETH_HLEN + ip.ihl * 4, ports, sizeof(ports)))
        return count(TI_STAT_PASS, TC_ACT_OK);
#if TI_ROLE_NODE
    struct ti_endpoint src = {.addr = ip.saddr, .port = ports[0], .proto = ip.protocol};
    struct ti_reply *r = ti_reply.lookup(&src);
    if (!r)
        return count(TI_STAT_PASS, TC_ACT_OK);
    struct ti_reply reply = *r;
    if (rewrite(skb, &ip, 0, reply.proxy.addr, reply.proxy.port))
        return count(TI_STAT_DROP_ERROR, TC_ACT_SHOT);
    count(TI_STAT_REPLY_NAT, 0);
#if TI_REPLIES_TUNNEL
    ports[0] = reply.proxy.port;
    struct ti_inner in = {.len = bpf_ntohs(ip.tot_len), .tos = ip.tos, .gue_proto = IPPROTO_IPIP,
                          .hash = flow_hash(reply.proxy.addr, ip.daddr, *(u32 *)ports,
                                            ip.protocol)};
    return encap(skb, &in, reply.tunnel_id, reply.sid, reply.key);
#else
    return TC_ACT_OK;
#endif
#else
    struct ti_endpoint dst = {.addr = ip.daddr, .port = ports[1], .proto = ip.protocol};
    struct ti_service *s = ti_encap.lookup(&dst);
    if (!s)
        return count(TI_STAT_PASS, TC_ACT_OK);
    struct ti_service svc = *s;
    struct ti_inner in = {.len = bpf_ntohs(ip.tot_len), .tos = ip.tos, .gue_proto = IPPROTO_IPIP,
                          .hash = flow_hash(ip.saddr, ip.daddr, *(u32 *)ports, ip.protocol)};
    return encap(skb, &in, svc.tunnel_id, svc.sid, svc.key);
#endif
}

/* What the ingress checks need of the outer headers, either family. */
struct ti_seen {
    u8 saddr6[16];   /* IPv6 underlay */
    u8 daddr6[16];
    __be32 saddr;    /* IPv4 underlay */
    __be32 daddr;
    __be16 sport;
    __be16 dport;
    u32 l3len;       /* bytes of outer IP headers (IPv4 with options, IPv6 with a fragment header) */
    u32 v6;
};

/* A ping (its GUE header g, Hlen hlen, private data at off + 4). */
static __always_inline int ping(struct __sk_buff *skb, const struct ti_seen *o, u32 off, u8 hlen,
                                struct ti_gue_hdr *g)
{
    struct ti_gue_ping p;
    if (g->proto != TI_GUE_CTYPE_PING || g->flags || hlen != TI_GUE_PING_HLEN)
        return count(TI_STAT_DROP_BAD_HEADER, TC_ACT_SHOT);
    if (bpf_skb_load_bytes(skb, off + sizeof(*g), &p, sizeof(p)))
        return count(TI_STAT_DROP_MALFORMED, TC_ACT_SHOT);
    u32 tid = p.tunnel_id;
    __be32 flags;
    const u8 *key;
    if (o->v6) {
        struct ti_tunnel6 *t = ti_tunnel6.lookup(&tid);
        if (!t || !key_equal(t->local_addr, o->daddr6) || t->local_port != o->dport)
            return count(TI_STAT_DROP_NO_TUNNEL, TC_ACT_SHOT);
        flags = t->flags;
        key = t->key;
    } else {
        struct ti_tunnel *t = ti_tunnel.lookup(&tid);
        if (!t || t->local_addr != o->daddr || t->local_port != o->dport)
            return count(TI_STAT_DROP_NO_TUNNEL, TC_ACT_SHOT);
        flags = t->flags;
        key = t->key;
    }
    if (!(flags & bpf_htonl(TI_TUNNEL_LEARN)))
        return count(TI_STAT_PING_FIXED, TC_ACT_SHOT);
    if (!(flags & bpf_htonl(TI_TUNNEL_KEYED)))
        return count(TI_STAT_PING_BAD_KEY, TC_ACT_SHOT);
    if (!ping_mac_ok(key, g, &p)) { /* while rotating, the second key is accepted too */
        const u8 *next = next_key(TI_NEXT_TUNNEL, tid);
        if (!next || !ping_mac_ok(next, g, &p))
            return count(TI_STAT_PING_BAD_KEY, TC_ACT_SHOT);
    }
    /* Authentic from here; fresh only inside the clock window and newer than the last. */
    u64 ts = be64(p.timestamp), now = ti_ktime_get_tai_ns();
    if (ts > now + TI_PING_WINDOW_NS || ts + TI_PING_WINDOW_NS < now)
        return count(TI_STAT_PING_STALE, TC_ACT_SHOT);
    struct ti_fresh *f = ti_fresh.lookup(&tid);
    if (f) {
        u64 last = f->last_ns;
        /* compare-and-swap: of two copies of one ping on two CPUs, one wins */
        if (ts <= last || __sync_val_compare_and_swap(&f->last_ns, last, ts) != last)
            return count(TI_STAT_PING_REPLAY, TC_ACT_SHOT);
    } else {
        struct ti_fresh nf = {.last_ns = ts};
        if (ti_fresh.insert(&tid, &nf)) /* another CPU was first */
            return count(TI_STAT_PING_REPLAY, TC_ACT_SHOT);
    }
    if (o->v6) {
        struct ti_learned6 l = {.remote_port = o->sport, .updated_ns = bpf_ktime_get_boot_ns()};
        __builtin_memcpy(l.remote_addr, o->saddr6, 16);
        ti_learned6.update(&tid, &l);
    } else {
        struct ti_learned l = {.remote_addr = o->saddr, .remote_port = o->sport,
                               .updated_ns = bpf_ktime_get_boot_ns()};
        ti_learned.update(&tid, &l);
    }
    return count(TI_STAT_PING, TC_ACT_SHOT); /* consumed: pings are for the data path only */
}

/* 0 when a data packet for tunnel_id may arrive at this endpoint from o's source, else the
 * counter of why not.  Only the tunnel's far end may send into it: its fixed or learned remote
 * address (the port is the sender's flow hash, not the remote's port). */
static __always_inline int tunnel_refuses(const struct ti_seen *o, __be32 tunnel_id)
{
    u32 tid = tunnel_id;
    if (o->v6) {
        struct ti_tunnel6 *t = ti_tunnel6.lookup(&tid);
        if (!t || !key_equal(t->local_addr, o->daddr6) || t->local_port != o->dport)
            return TI_STAT_DROP_NO_TUNNEL;
        const u8 *remote = t->remote_addr;
        if (t->flags & bpf_htonl(TI_TUNNEL_LEARN)) {
            struct ti_learned6 *l = ti_learned6.lookup(&tid);
            if (!l)
                return TI_STAT_DROP_NO_REMOTE;
            remote = l->remote_addr;
        }
        return key_equal(remote, o->saddr6) ? 0 : TI_STAT_DROP_BAD_SOURCE;
    }
    struct ti_tunnel *t = ti_tunnel.lookup(&tid);
    if (!t || t->local_addr != o->daddr || t->local_port != o->dport)
        return TI_STAT_DROP_NO_TUNNEL;
    __be32 remote = t->remote_addr;
    if (t->flags & bpf_htonl(TI_TUNNEL_LEARN)) {
        struct ti_learned *l = ti_learned.lookup(&tid);
        if (!l)
            return TI_STAT_DROP_NO_REMOTE;
        remote = l->remote_addr;
    }
    return o->saddr == remote ? 0 : TI_STAT_DROP_BAD_SOURCE;
}

/* 0 when data packet d may be decapsulated for its service, else the counter of why not, in
 * this order: the tunnel (tunnel_refuses), the service (first: its TI_VERIFY/TI_VERIFY6 key,
 * NULL when unknown), the key: the service's first slot or, while keys rotate, its TI_NEXT. */
static __always_inline int data_refuses(const struct ti_seen *o, const struct ti_gue_data *d,
                                        const u8 *first)
{
    int refused = tunnel_refuses(o, d->tunnel_id);
    if (refused)
        return refused;
    if (!first)
        return TI_STAT_DROP_NO_SERVICE;
    if (key_equal(first, d->key))
        return 0;
    __be32 sid;
    __builtin_memcpy(&sid, &d->sid, sizeof(sid));
    const u8 *next = next_key(TI_NEXT_SERVICE, sid);
    return next && key_equal(next, d->key) ? 0 : TI_STAT_DROP_BAD_KEY;
}

/* Gateway: the decapsulated packet's source endpoint is the proxy endpoint of the service
 * and tunnel its GUE header names (s: that endpoint's TI_ENCAP/TI_ENCAP6 entry or NULL). */
static __always_inline int reply_of_service(const struct ti_service *s, const struct ti_gue_data *d)
{
    return s && s->tunnel_id == d->tunnel_id && s->sid.group_id == d->sid.group_id &&
           s->sid.service_id == d->sid.service_id;
}

/* Strip the outer headers up to the inner packet at inner_off and give the frame the inner
 * family's Ethernet type (the DECAP flags set skb->protocol; kernel 6.3). */
static __always_inline int strip(struct __sk_buff *skb, const struct ti_seen *o, u32 inner_off,
                                 int inner_v6)
{
    u64 flags = inner_v6 ? (o->v6 ? 0 : TI_ADJ_ROOM_DECAP_L3_IPV6)
                         : (o->v6 ? TI_ADJ_ROOM_DECAP_L3_IPV4 : 0);
    if (bpf_skb_adjust_room(skb, -(s32)(inner_off - ETH_HLEN), BPF_ADJ_ROOM_MAC, flags))
        return -1;
    if (inner_v6 == o->v6)
        return 0;
    __be16 type = bpf_htons(inner_v6 ? ETH_P_IPV6 : ETH_P_IP);
    return bpf_skb_store_bytes(skb, offsetof(struct ethhdr, h_proto), &type, 2, 0) ? -1 : 0;
}

/* A data packet with IPv6 inside (GUE proto 41): the same checks as IPv4's, against the
 * IPv6 tables.  Only a TCP or UDP header directly after the inner fixed header is accepted
 * (no extension headers): the node rewrites its ports, the gateway checks them. */
static __always_inline int decap6(struct __sk_buff *skb, const struct ti_seen *o, u32 off,
                                  u32 udp_len)
{
    struct {
        struct ti_gue_data d;
        struct ipv6hdr inner;
        __be16 ports[2];
    } __attribute__((packed)) b;
    u32 inner_off = off + sizeof(struct ti_gue_hdr) + sizeof(b.d);
    if (bpf_skb_load_bytes(skb, off + sizeof(struct ti_gue_hdr), &b, sizeof(b)))
        return count(TI_STAT_DROP_MALFORMED, TC_ACT_SHOT);
    struct ti_gue_data d = b.d;
    if (b.inner.version != 6 || bpf_ntohs(b.inner.payload_len) + TI_IP6_HLEN +
                                    (inner_off - ETH_HLEN - o->l3len) > udp_len)
        return count(TI_STAT_DROP_MALFORMED, TC_ACT_SHOT);
    struct ti_verify6 *v = ti_verify6.lookup(&d.sid);
    int refused = data_refuses(o, &d, v ? v->key : 0);
    if (refused || !v)
        return count(refused, TC_ACT_SHOT);
#if TI_ROLE_NODE
    struct ti_endpoint6 backend = v->backend;
    if (b.inner.nexthdr != backend.proto)
        return count(TI_STAT_DROP_BAD_HEADER, TC_ACT_SHOT);
#else
    struct ti_endpoint6 src = {.port = b.ports[0], .proto = b.inner.nexthdr};
    __builtin_memcpy(src.addr, &b.inner.saddr, 16);
    if ((b.inner.nexthdr != IPPROTO_TCP && b.inner.nexthdr != IPPROTO_UDP) ||
        !reply_of_service(ti_encap6.lookup(&src), &d))
        return count(TI_STAT_DROP_BAD_INNER, TC_ACT_SHOT);
#endif
    if (strip(skb, o, inner_off, 1))
        return count(TI_STAT_DROP_ERROR, TC_ACT_SHOT);
#if TI_ROLE_NODE
    if (rewrite6(skb, backend.proto, 1, backend.addr, backend.port))
        return count(TI_STAT_DROP_ERROR, TC_ACT_SHOT);
    count(TI_STAT_DNAT, 0);
#endif
    count(TI_STAT_DECAP, 0);
    return TC_ACT_OK;
}

/* A data packet with IPv4 inside (GUE proto 4). */
static __always_inline int decap4(struct __sk_buff *skb, const struct ti_seen *o, u32 off,
                                  u32 udp_len)
{
    struct {
        struct ti_gue_data d;
        struct iphdr inner;
    } __attribute__((packed)) b; /* one load for private data and inner header */
    u32 inner_off = off + sizeof(struct ti_gue_hdr) + sizeof(b.d);
    if (bpf_skb_load_bytes(skb, off + sizeof(struct ti_gue_hdr), &b, sizeof(b)))
        return count(TI_STAT_DROP_MALFORMED, TC_ACT_SHOT);
    struct ti_gue_data d = b.d;
    struct iphdr inner = b.inner;
    if (inner.version != 4 || inner.ihl < 5 ||
        bpf_ntohs(inner.tot_len) + (inner_off - ETH_HLEN - o->l3len) > udp_len)
        return count(TI_STAT_DROP_MALFORMED, TC_ACT_SHOT);
    struct ti_verify *v = ti_verify.lookup(&d.sid);
    int refused = data_refuses(o, &d, v ? v->key : 0);
    if (refused || !v) /* (!v implies refused: the verifier needs it said) */
        return count(refused, TC_ACT_SHOT);
#if TI_ROLE_NODE
    struct ti_endpoint backend = v->backend;
    if (inner.protocol != backend.proto)
        return count(TI_STAT_DROP_BAD_HEADER, TC_ACT_SHOT);
#else
    /* A gateway forwards only replies: the inner source must be this service's proxy
     * endpoint, in this tunnel.  Anything else would make it a relay for spoofed traffic. */
    __be16 iports[2];
    if ((inner.frag_off & bpf_htons(TI_IP_OFFSET)) ||
        bpf_skb_load_bytes(skb, inner_off + inner.ihl * 4, iports, sizeof(iports)))
        return count(TI_STAT_DROP_BAD_INNER, TC_ACT_SHOT);
    struct ti_endpoint src = {.addr = inner.saddr, .port = iports[0], .proto = inner.protocol};
    if (!reply_of_service(ti_encap.lookup(&src), &d))
        return count(TI_STAT_DROP_BAD_INNER, TC_ACT_SHOT);
#endif
    if (strip(skb, o, inner_off, 0))
        return count(TI_STAT_DROP_ERROR, TC_ACT_SHOT);
#if TI_ROLE_NODE
    if (rewrite(skb, &inner, 1, backend.addr, backend.port))
        return count(TI_STAT_DROP_ERROR, TC_ACT_SHOT);
    count(TI_STAT_DNAT, 0);
#endif
    count(TI_STAT_DECAP, 0); /* once, after everything that could still drop it */
    return TC_ACT_OK;
}

/* The UDP datagram at ETH_HLEN + o->l3len is addressed to one of our decap endpoints:
 * decapsulated, consumed as a ping, or dropped.  Never passed on half-parsed.  l3_payload:
 * the bytes the outer IP header says follow it. */
static __always_inline int gue_in(struct __sk_buff *skb, const struct ti_seen *o,
                                  const struct udphdr *udp, u32 l3_payload)
{
    struct ti_gue_hdr g;
    u32 off = ETH_HLEN + o->l3len + sizeof(*udp);
    u32 udp_len = bpf_ntohs(udp->len);
    if (bpf_skb_load_bytes(skb, off, &g, sizeof(g)) || udp_len < sizeof(*udp) + sizeof(g) ||
        l3_payload < udp_len)
        return count(TI_STAT_DROP_MALFORMED, TC_ACT_SHOT);
    if (g.vch >> 6)
        return count(TI_STAT_DROP_BAD_VERSION, TC_ACT_SHOT);
    u8 hlen = g.vch & 0x1f;
    if (udp_len < sizeof(*udp) + sizeof(g) + hlen * 4)
        return count(TI_STAT_DROP_MALFORMED, TC_ACT_SHOT);
    if (g.vch & 0x20)
        return ping(skb, o, off, hlen, &g);
    if (g.flags || hlen != TI_GUE_DATA_HLEN)
        return count(TI_STAT_DROP_BAD_HEADER, TC_ACT_SHOT);
    if (g.proto == IPPROTO_IPV6)
        return decap6(skb, o, off, udp_len);
    if (g.proto != IPPROTO_IPIP)
        return count(TI_STAT_DROP_BAD_HEADER, TC_ACT_SHOT);
    return decap4(skb, o, off, udp_len);
}

/* IPv6 underlay: the fixed header, at most one fragment header, then UDP to a TI_DECAP6
 * endpoint; any other extension header is not ours (passed, as IPv4's later fragments). */
static __always_inline int ingress6(struct __sk_buff *skb)
{
    struct ipv6hdr ip6;
    struct udphdr udp;
    struct ti_seen o = {.v6 = 1, .l3len = TI_IP6_HLEN};
    if (bpf_skb_load_bytes(skb, ETH_HLEN, &ip6, sizeof(ip6)) || ip6.version != 6)
        return count(TI_STAT_PASS, TC_ACT_OK);
    u8 next = ip6.nexthdr;
    int fragment = next == 44;
    if (fragment) {
        struct {
            u8 nexthdr;
            u8 reserved;
            __be16 frag_off; /* offset (13 bits) | 2 reserved | M */
            __be32 id;
        } f;
        if (bpf_skb_load_bytes(skb, ETH_HLEN + TI_IP6_HLEN, &f, sizeof(f)) ||
            (f.frag_off & bpf_htons(0xfff8))) /* later fragment: no UDP header to look at */
            return count(TI_STAT_PASS, TC_ACT_OK);
        next = f.nexthdr;
        o.l3len += sizeof(f);
    }
    if (next != IPPROTO_UDP || bpf_skb_load_bytes(skb, ETH_HLEN + o.l3len, &udp, sizeof(udp)))
        return count(TI_STAT_PASS, TC_ACT_OK);
    struct ti_endpoint6 ep = {.port = udp.dest, .proto = IPPROTO_UDP};
    __builtin_memcpy(ep.addr, &ip6.daddr, 16);
    if (!ti_decap6.lookup(&ep))
        return count(TI_STAT_PASS, TC_ACT_OK);
    if (fragment) /* a first fragment, or an atomic one: neither is ever sent by a GUE end */
        return count(TI_STAT_DROP_FRAGMENT, TC_ACT_SHOT);
    __builtin_memcpy(o.saddr6, &ip6.saddr, 16);
    __builtin_memcpy(o.daddr6, &ip6.daddr, 16);
    o.sport = udp.source;
    o.dport = udp.dest;
    return gue_in(skb, &o, &udp, bpf_ntohs(ip6.payload_len) + TI_IP6_HLEN - o.l3len);
}

int ti_ingress(struct __sk_buff *skb)
{
    struct iphdr ip;
    struct udphdr udp;
    if (skb->protocol == bpf_htons(ETH_P_IPV6))
        return ingress6(skb);
    if (skb->protocol != bpf_htons(ETH_P_IP) || bpf_skb_load_bytes(skb, ETH_HLEN, &ip, sizeof(ip)))
        return count(TI_STAT_PASS, TC_ACT_OK);
    if (ip.version != 4 || ip.ihl < 5 || ip.protocol != IPPROTO_UDP)
        return count(TI_STAT_PASS, TC_ACT_OK);
    u32 ihl = ip.ihl * 4;
    if (ip.frag_off & bpf_htons(TI_IP_OFFSET)) /* later fragment: no UDP header to look at */
        return count(TI_STAT_PASS, TC_ACT_OK);
    if (bpf_skb_load_bytes(skb, ETH_HLEN + ihl, &udp, sizeof(udp)))
        return count(TI_STAT_PASS, TC_ACT_OK);
    struct ti_endpoint ep = {.addr = ip.daddr, .port = udp.dest, .proto = IPPROTO_UDP};
    if (!ti_decap.lookup(&ep))
        return count(TI_STAT_PASS, TC_ACT_OK);
    if (ip.frag_off & bpf_htons(TI_IP_MF))
        return count(TI_STAT_DROP_FRAGMENT, TC_ACT_SHOT);
    struct ti_seen o = {.saddr = ip.saddr, .daddr = ip.daddr, .sport = udp.source,
                        .dport = udp.dest, .l3len = ihl};
    u32 tot = bpf_ntohs(ip.tot_len);
    return gue_in(skb, &o, &udp, tot > ihl ? tot - ihl : 0);
}

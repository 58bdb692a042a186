/* TC interception (the ebpf_tproxy seed, with rule lists): traffic leaving a device is
 * classified by first-match rules; redirected TCP connections are sent to lo's ingress,
 * marked so that policy routing delivers them locally, and assigned there to the Proxy's
 * transparent listener. Compiled by BCC from reconciler/kernel/programs.py with
 * IC_PIN_DIR / PS_PIN_DIR "<pin root>/maps/", IC_MARK (the local-delivery mark),
 * IC_PROXY_MARK (the data path's own connections, never intercepted) and, for ic_egress,
 * IC_ID (the Intercept).
 *
 * ic_egress (TC egress of an intercepted device):
 *   - a packet carrying IC_PROXY_MARK is the data path's own: passed;
 *   - a TCP SYN or a UDP packet is classified: one LPM lookup (intercept, proto, exact port,
 *     longest destination prefix), then the same with any port, then at most IC_CHAIN
 *     candidates for source ports; no rule: passed. The rules' priorities were resolved when
 *     the entries were compiled, so the cost does not depend on how many rules there are;
 *   - redirect: the SYN's 4-tuple -> slot goes into ic_syn, the packet is marked and
 *     redirected to lo's ingress;
 *   - any other TCP packet follows its connection, not the rules (rule changes only affect
 *     new connections): if the kernel holds a socket for it as an incoming connection (the
 *     proxy's accepted socket, local = the original destination), it goes to lo, marked;
 *     otherwise it leaves normally.
 * IPv6 packets take the same way through their own tables (ic_rules6, ic_syn6, the Proxy's
 * IPv6 listener in ps_sockets6); their extension headers are walked (at most IC_EXT_MAX,
 * more is dropped) to find the transport header, and fragments are treated as for IPv4.
 * ic_lo (TC ingress of lo): a marked packet is made PACKET_HOST (it still carries the next
 *   hop's MAC, so lo took it for another host's); a marked SYN listed in ic_syn is assigned to the Proxy's
 *   listener (ps_sockets[slot], IP_TRANSPARENT); no live listener: dropped (the client
 *   retries its SYN, so connections wait for the data path rather than reach whatever else
 *   listens on that port). Other packets go their way.
 */
#include <uapi/linux/bpf.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/if_packet.h>
#include <uapi/linux/in.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/ipv6.h>
#include <uapi/linux/tcp.h>
#include <uapi/linux/udp.h>
#include <uapi/linux/pkt_cls.h>
#include "steer.h"
#include "intercept.h"

#ifndef IC_ID
#define IC_ID 0
#endif
#ifndef IC_MARK
#define IC_MARK 1
#endif
#ifndef IC_PROXY_MARK
#define IC_PROXY_MARK 2
#endif
#define IC_LO_IFINDEX 1  /* lo is the first device of every network namespace */
#define IC_NEXTHDR_HOP 0
#define IC_NEXTHDR_ROUTING 43
#define IC_NEXTHDR_FRAGMENT 44
#define IC_NEXTHDR_AUTH 51
#define IC_NEXTHDR_DEST 60

BPF_TABLE_PINNED("lpm_trie", struct ic_key, struct ic_rule, ic_rules, IC_MAX_ENTRIES,
                 IC_PIN_DIR "ic_rules", BPF_F_NO_PREALLOC);
BPF_TABLE_PINNED("lru_hash", struct ic_flow, struct ic_pending, ic_syn, IC_MAX_SYN,
                 IC_PIN_DIR "ic_syn");
BPF_TABLE_PINNED("lpm_trie", struct ic_key6, struct ic_rule, ic_rules6, IC_MAX_ENTRIES,
                 IC_PIN_DIR "ic_rules6", BPF_F_NO_PREALLOC);
BPF_TABLE_PINNED("lru_hash", struct ic_flow6, struct ic_pending, ic_syn6, IC_MAX_SYN,
                 IC_PIN_DIR "ic_syn6");
BPF_TABLE_PINNED("percpu_array", u32, u64, ic_stats, IC_MAX * IC_COUNTERS,
                 IC_PIN_DIR "ic_stats");
BPF_TABLE_PINNED("sockmap", u32, u64, ps_sockets, PS_MAX_PROXIES, PS_PIN_DIR "ps_sockets");
BPF_TABLE_PINNED("sockmap", u32, u64, ps_sockets6, PS_MAX_PROXIES, PS_PIN_DIR "ps_sockets6");

static __always_inline void ic_count(u32 id, u32 counter) {
    u32 idx = id * IC_COUNTERS + counter;
    u64 *v = ic_stats.lookup(&idx);
    if (v)
        *v += 1;
}

struct ic_packet {
    struct ic_flow flow;    /* IPv4 */
    struct ic_flow6 flow6;  /* IPv6 */
    u8 v6;
    u8 proto;
    u8 syn;  /* TCP SYN without ACK: a new connection */
};

#define IC_BAD_FRAGMENT -1
#define IC_TOO_MANY_HEADERS -2

#define IC_IP_MF 0x2000
#define IC_IP_OFFSET 0x1fff

/* The transport header at l4: ports (network order) and whether it opens a connection. */
static __always_inline int ic_transport(struct __sk_buff *skb, u32 l4, u8 proto, u16 *sport,
                                        u16 *dport, u8 *syn) {
    if (proto == IPPROTO_TCP) {
        struct tcphdr th;
        if (bpf_skb_load_bytes(skb, l4, &th, sizeof(th)))
            return 0;
        *sport = th.source;
        *dport = th.dest;
        *syn = th.syn && !th.ack;
    } else {
        struct udphdr uh;
        if (bpf_skb_load_bytes(skb, l4, &uh, sizeof(uh)))
            return 0;
        *sport = uh.source;
        *dport = uh.dest;
        *syn = 0;
    }
    return 1;
}

/* IPv4 TCP/UDP with ports (not a later fragment): 1, with p filled; not for the rules: 0;
 * a fragment that could smuggle a header past them (RFC 1858, dropped as RFC 3128 says):
 * IC_BAD_FRAGMENT.  That is a first fragment too short to hold the whole transport header (a
 * SYN whose ports or flags sit in the second fragment would pass any rule), or a TCP
 * fragment at offset 8 bytes (it would overwrite the flags of a first fragment that was
 * checked).  Later fragments pass: without their first fragment they never reassemble into
 * anything.  Headers are read with bpf_skb_load_bytes, so a header outside the linear area
 * is read too, never taken for a short one. */
static __always_inline int ic_parse4(struct __sk_buff *skb, struct ic_packet *p) {
    struct iphdr ip;
    if (bpf_skb_load_bytes(skb, sizeof(struct ethhdr), &ip, sizeof(ip)) || ip.ihl < 5)
        return 0;
    if (ip.protocol != IPPROTO_TCP && ip.protocol != IPPROTO_UDP)
        return 0;
    u16 frag = bpf_ntohs(ip.frag_off);
    if (frag & IC_IP_OFFSET)
        return (ip.protocol == IPPROTO_TCP && (frag & IC_IP_OFFSET) == 1) ? IC_BAD_FRAGMENT : 0;
    u32 l4 = sizeof(struct ethhdr) + ip.ihl * 4;
    u32 need = ip.protocol == IPPROTO_TCP ? sizeof(struct tcphdr) : sizeof(struct udphdr);
    if ((frag & IC_IP_MF) && bpf_ntohs(ip.tot_len) < ip.ihl * 4 + need)
        return IC_BAD_FRAGMENT;
    p->flow.saddr = ip.saddr;
    p->flow.daddr = ip.daddr;
    p->proto = ip.protocol;
    return ic_transport(skb, l4, ip.protocol, &p->flow.sport, &p->flow.dport, &p->syn);
}

struct ic_frag_hdr {
    u8 nexthdr;
    u8 reserved;
    u16 frag_off;  /* offset in 8-byte units << 3 | M */
    u32 id;
};

/* IPv6: as ic_parse4, after walking at most IC_EXT_MAX extension headers (hop-by-hop,
 * routing, fragment, destination options, AH) to the transport header; a chain longer than
 * that is IC_TOO_MANY_HEADERS (dropped: what the rules cannot see must not pass them).  A
 * fragment header with a non-zero offset is a later fragment (a TCP one at offset 8 bytes is
 * IC_BAD_FRAGMENT, as for IPv4); a first fragment (M set) must hold the whole transport
 * header (RFC 7112: the whole header chain). ESP, ICMPv6 and the rest: not for the rules. */
static __always_inline int ic_parse6(struct __sk_buff *skb, struct ic_packet *p) {
    struct ipv6hdr ip6;
    if (bpf_skb_load_bytes(skb, sizeof(struct ethhdr), &ip6, sizeof(ip6)) || ip6.version != 6)
        return 0;
    u32 off = sizeof(struct ethhdr) + sizeof(ip6);
    u32 end = off + bpf_ntohs(ip6.payload_len);
    u8 next = ip6.nexthdr;
    int first_fragment = 0;
    int found = 0;
#pragma unroll
    for (int i = 0; i < IC_EXT_MAX; i++) {
        if (next == IPPROTO_TCP || next == IPPROTO_UDP) {
            found = 1;
            break;
        }
        if (next == IC_NEXTHDR_FRAGMENT) {
            struct ic_frag_hdr fh;
            if (bpf_skb_load_bytes(skb, off, &fh, sizeof(fh)))
                return 0;
            u16 offset = bpf_ntohs(fh.frag_off) >> 3;
            if (offset)
                return (fh.nexthdr == IPPROTO_TCP && offset == 1) ? IC_BAD_FRAGMENT : 0;
            first_fragment = bpf_ntohs(fh.frag_off) & 1;
            next = fh.nexthdr;
            off += sizeof(fh);
            continue;
        }
        if (next != IC_NEXTHDR_HOP && next != IC_NEXTHDR_ROUTING && next != IC_NEXTHDR_DEST &&
            next != IC_NEXTHDR_AUTH)
            return 0;
        u8 h[2];
        if (bpf_skb_load_bytes(skb, off, h, sizeof(h)))
            return 0;
        off += next == IC_NEXTHDR_AUTH ? ((u32)h[1] + 2) * 4 : ((u32)h[1] + 1) * 8;
        next = h[0];
    }
    if (!found && next != IPPROTO_TCP && next != IPPROTO_UDP)
        return IC_TOO_MANY_HEADERS;
    u32 need = next == IPPROTO_TCP ? sizeof(struct tcphdr) : sizeof(struct udphdr);
    if (first_fragment && end < off + need)
        return IC_BAD_FRAGMENT;
    __builtin_memcpy(p->flow6.saddr, &ip6.saddr, 16);
    __builtin_memcpy(p->flow6.daddr, &ip6.daddr, 16);
    p->v6 = 1;
    p->proto = next;
    return ic_transport(skb, off, next, &p->flow6.sport, &p->flow6.dport, &p->syn);
}

static __always_inline int ic_parse(struct __sk_buff *skb, struct ic_packet *p) {
    if (skb->protocol == bpf_htons(ETH_P_IP))
        return ic_parse4(skb, p);
    if (skb->protocol == bpf_htons(ETH_P_IPV6))
        return ic_parse6(skb, p);
    return 0;
}

/* The trie entry for the packet's (intercept, proto, exact port, longest prefix), else its
 * (any port) entry, in the table of its family. */
static __always_inline struct ic_rule *ic_lookup(struct ic_packet *p, u32 id) {
    if (p->v6) {
        struct ic_key6 key6 = {};
        key6.prefixlen = 160;
        key6.ic = id;
        key6.proto = p->proto;
        key6.port = p->flow6.dport;
        __builtin_memcpy(key6.addr, p->flow6.daddr, sizeof(key6.addr));
        struct ic_rule *rule6 = ic_rules6.lookup(&key6);
        if (!rule6) {
            key6.port = IC_PORT_ANY;
            rule6 = ic_rules6.lookup(&key6);
        }
        return rule6;
    }
    struct ic_key key = {};
    key.prefixlen = 64;
    key.ic = id;
    key.proto = p->proto;
    key.port = p->flow.dport;
    key.addr = p->flow.daddr;
    struct ic_rule *rule = ic_rules.lookup(&key);
    if (!rule) {
        key.port = IC_PORT_ANY;
        rule = ic_rules.lookup(&key);
    }
    return rule;
}

/* The deciding candidate for the packet, or 0 (no rule matches). */
static __always_inline struct ic_candidate *ic_classify(struct ic_packet *p, u32 id,
                                                        struct ic_rule **holder) {
    struct ic_rule *rule = ic_lookup(p, id);
    if (!rule)
        return 0;
    *holder = rule;
    u16 sport = bpf_ntohs(p->v6 ? p->flow6.sport : p->flow.sport);
#pragma unroll
    for (int i = 0; i < IC_CHAIN; i++) {
        if (i >= rule->count)
            break;
        struct ic_candidate *c = &rule->c[i];
        if (c->sport_first == 0 || (sport >= c->sport_first && sport <= c->sport_last))
            return c;
    }
    return 0;
}

static __always_inline int ic_to_lo(struct __sk_buff *skb) {
    skb->mark |= IC_MARK;
    return bpf_redirect(IC_LO_IFINDEX, BPF_F_INGRESS);
}

/* A socket of this namespace holds the packet's connection as an incoming one. */
static __always_inline int ic_followed(struct __sk_buff *skb, struct ic_packet *p) {
    struct bpf_sock_tuple t = {};
    u32 size;
    if (p->v6) {
        __builtin_memcpy(t.ipv6.saddr, p->flow6.saddr, sizeof(t.ipv6.saddr));
        __builtin_memcpy(t.ipv6.daddr, p->flow6.daddr, sizeof(t.ipv6.daddr));
        t.ipv6.sport = p->flow6.sport;
        t.ipv6.dport = p->flow6.dport;
        size = sizeof(t.ipv6);
    } else {
        t.ipv4.saddr = p->flow.saddr;
        t.ipv4.daddr = p->flow.daddr;
        t.ipv4.sport = p->flow.sport;
        t.ipv4.dport = p->flow.dport;
        size = sizeof(t.ipv4);
    }
    struct bpf_sock *sk = bpf_skc_lookup_tcp(skb, &t, size, BPF_F_CURRENT_NETNS, 0);
    if (!sk)
        return 0;
    int incoming = sk->state != BPF_TCP_LISTEN;
    bpf_sk_release(sk);
    return incoming;
}

int ic_egress(struct __sk_buff *skb) {
    struct ic_packet p = {};
    if (IC_PROXY_MARK && (skb->mark & IC_PROXY_MARK) == IC_PROXY_MARK)
        return TC_ACT_OK;
    int parsed = ic_parse(skb, &p);
    if (parsed < 0) {
        ic_count(IC_ID, parsed == IC_TOO_MANY_HEADERS ? IC_STAT_HEADERS : IC_STAT_FRAGMENT);
        return TC_ACT_SHOT;
    }
    if (!parsed)
        return TC_ACT_OK;
    if (p.proto == IPPROTO_TCP && !p.syn) {
        if (!ic_followed(skb, &p))
            return TC_ACT_OK;
        ic_count(IC_ID, IC_STAT_FLOW);
        return ic_to_lo(skb);
    }
    ic_count(IC_ID, IC_STAT_NEW);
    struct ic_rule *holder = 0;
    struct ic_candidate *c = ic_classify(&p, IC_ID, &holder);
    if (!c) {
        ic_count(IC_ID, IC_STAT_UNMATCHED);
        return TC_ACT_OK;
    }
    if (c->action == IC_ACTION_DROP) {
        ic_count(IC_ID, IC_STAT_DROPPED);
        return TC_ACT_SHOT;
    }
    if (c->action != IC_ACTION_REDIRECT || p.proto != IPPROTO_TCP) {
        ic_count(IC_ID, IC_STAT_PASSED);
        return TC_ACT_OK;
    }
    struct ic_pending pending = {};
    pending.slot = c->slot;
    pending.ic = IC_ID;
    if (p.v6)
        ic_syn6.update(&p.flow6, &pending);
    else
        ic_syn.update(&p.flow, &pending);
    ic_count(IC_ID, IC_STAT_REDIRECTED);
    return ic_to_lo(skb);
}

int ic_lo(struct __sk_buff *skb) {
    struct ic_packet p = {};
    if ((skb->mark & IC_MARK) != IC_MARK)
        return TC_ACT_OK;
    /* eth_type_trans saw the next hop's MAC, not lo's: the packet is ours to receive */
    if (skb->pkt_type == PACKET_OTHERHOST)
        bpf_skb_change_type(skb, PACKET_HOST);
    if (ic_parse(skb, &p) != 1 || p.proto != IPPROTO_TCP || !p.syn)
        return TC_ACT_OK;
    struct ic_pending *pending = p.v6 ? ic_syn6.lookup(&p.flow6) : ic_syn.lookup(&p.flow);
    if (!pending)
        return TC_ACT_OK;
    u32 slot = pending->slot;
    u32 id = pending->ic;
    if (p.v6)
        ic_syn6.delete(&p.flow6);
    else
        ic_syn.delete(&p.flow);
    if (slot == 0 || slot >= PS_MAX_PROXIES)
        return TC_ACT_SHOT;
    struct bpf_sock *sk = p.v6 ? (struct bpf_sock *)ps_sockets6.lookup(&slot)
                               : (struct bpf_sock *)ps_sockets.lookup(&slot);
    if (!sk) {
        ic_count(id, IC_STAT_NO_LISTENER);
        return TC_ACT_SHOT;
    }
    long err = bpf_sk_assign(skb, sk, 0);
    bpf_sk_release(sk);
    if (err) {
        ic_count(id, IC_STAT_ASSIGN_ERROR);
        return TC_ACT_SHOT;
    }
    ic_count(id, IC_STAT_ASSIGNED);
    return TC_ACT_OK;
}

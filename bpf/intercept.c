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

BPF_TABLE_PINNED("lpm_trie", struct ic_key, struct ic_rule, ic_rules, IC_MAX_ENTRIES,
                 IC_PIN_DIR "ic_rules", BPF_F_NO_PREALLOC);
BPF_TABLE_PINNED("lru_hash", struct ic_flow, struct ic_pending, ic_syn, IC_MAX_SYN,
                 IC_PIN_DIR "ic_syn");
BPF_TABLE_PINNED("percpu_array", u32, u64, ic_stats, IC_MAX * IC_COUNTERS,
                 IC_PIN_DIR "ic_stats");
BPF_TABLE_PINNED("sockmap", u32, u64, ps_sockets, PS_MAX_PROXIES, PS_PIN_DIR "ps_sockets");

static __always_inline void ic_count(u32 id, u32 counter) {
    u32 idx = id * IC_COUNTERS + counter;
    u64 *v = ic_stats.lookup(&idx);
    if (v)
        *v += 1;
}

struct ic_packet {
    struct ic_flow flow;
    u8 proto;
    u8 syn;  /* TCP SYN without ACK: a new connection */
};

#define IC_IP_MF 0x2000
#define IC_IP_OFFSET 0x1fff

/* IPv4 TCP/UDP with ports (not a later fragment): 1, with p filled; not for the rules: 0;
 * a fragment that could smuggle a header past them (RFC 1858, dropped as RFC 3128 says): -1.
 * That is a first fragment too short to hold the whole transport header (a SYN whose ports
 * or flags sit in the second fragment would pass any rule), or a TCP fragment at offset 8
 * bytes (it would overwrite the flags of a first fragment that was checked).  Later
 * fragments pass: without their first fragment they never reassemble into anything.
 * Headers are read with bpf_skb_load_bytes, so a header outside the linear area is read
 * too, never taken for a short one. */
static __always_inline int ic_parse(struct __sk_buff *skb, struct ic_packet *p) {
    struct iphdr ip;
    if (skb->protocol != bpf_htons(ETH_P_IP) ||
        bpf_skb_load_bytes(skb, sizeof(struct ethhdr), &ip, sizeof(ip)) || ip.ihl < 5)
        return 0;
    if (ip.protocol != IPPROTO_TCP && ip.protocol != IPPROTO_UDP)
        return 0;
    u16 frag = bpf_ntohs(ip.frag_off);
    if (frag & IC_IP_OFFSET)
        return (ip.protocol == IPPROTO_TCP && (frag & IC_IP_OFFSET) == 1) ? -1 : 0;
    u32 l4 = sizeof(struct ethhdr) + ip.ihl * 4;
    u32 need = ip.protocol == IPPROTO_TCP ? sizeof(struct tcphdr) : sizeof(struct udphdr);
    if ((frag & IC_IP_MF) && bpf_ntohs(ip.tot_len) < ip.ihl * 4 + need)
        return -1;
    p->flow.saddr = ip.saddr;
    p->flow.daddr = ip.daddr;
    p->proto = ip.protocol;
    if (ip.protocol == IPPROTO_TCP) {
        struct tcphdr th;
        if (bpf_skb_load_bytes(skb, l4, &th, sizeof(th)))
            return 0;
        p->flow.sport = th.source;
        p->flow.dport = th.dest;
        p->syn = th.syn && !th.ack;
    } else {
        struct udphdr uh;
        if (bpf_skb_load_bytes(skb, l4, &uh, sizeof(uh)))
            return 0;
        p->flow.sport = uh.source;
        p->flow.dport = uh.dest;
        p->syn = 0;
    }
    return 1;
}

/* The deciding candidate for the packet, or 0 (no rule matches). */
static __always_inline struct ic_candidate *ic_classify(struct ic_packet *p, u32 id,
                                                        struct ic_rule **holder) {
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
    if (!rule)
        return 0;
    *holder = rule;
    u16 sport = bpf_ntohs(p->flow.sport);
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
    t.ipv4.saddr = p->flow.saddr;
    t.ipv4.daddr = p->flow.daddr;
    t.ipv4.sport = p->flow.sport;
    t.ipv4.dport = p->flow.dport;
    struct bpf_sock *sk = bpf_skc_lookup_tcp(skb, &t, sizeof(t.ipv4), BPF_F_CURRENT_NETNS, 0);
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
        ic_count(IC_ID, IC_STAT_FRAGMENT);
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
    struct ic_pending *pending = ic_syn.lookup(&p.flow);
    if (!pending)
        return TC_ACT_OK;
    u32 slot = pending->slot;
    u32 id = pending->ic;
    ic_syn.delete(&p.flow);
    if (slot == 0 || slot >= PS_MAX_PROXIES)
        return TC_ACT_SHOT;
    struct bpf_sock *sk = (struct bpf_sock *)ps_sockets.lookup(&slot);
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

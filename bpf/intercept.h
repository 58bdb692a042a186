/* TC interception rules (the ebpf_tproxy seed, with rule lists): tables shared by
 * intercept.c and reconciler/tables.py. A kernel test compiles this header with BCC and
 * compares the layouts with Python's. */
#ifndef BPFSYNC_INTERCEPT_H
#define BPFSYNC_INTERCEPT_H

#define IC_MAX 256              /* Intercepts per pin root; an id is 1..255 */
#define IC_MAX_ENTRIES 262144   /* compiled (intercept, proto, port, prefix) entries */
#define IC_CHAIN 8              /* candidates per entry: rules with sourcePorts, then one without */
#define IC_MAX_SYN 65536        /* redirected SYNs waiting for their socket assignment */
#define IC_EXT_MAX 8            /* IPv6 extension headers walked before the transport header */
#define IC_COUNTERS 16
#define IC_PORT_ANY 0
#define IC_ACTION_PASS 1
#define IC_ACTION_DROP 2
#define IC_ACTION_REDIRECT 3

/* LPM trie key, laid out like ps_dest_key: prefixlen counts the 32 bits of (ic, proto, port)
 * plus the destination prefix length. port and addr network order; prefixlen host order. */
struct ic_key {
    u32 prefixlen;
    u8 ic;
    u8 proto;
    u16 port;
    u32 addr;
};

/* The IPv6 twin of ic_key (ic_rules6): prefixlen 32 + the prefix's length.  24 bytes. */
struct ic_key6 {
    u32 prefixlen;
    u8 ic;
    u8 proto;
    u16 port;
    u32 addr[4];
};

/* One rule that may decide: it does when the source port is in [sport_first, sport_last]
 * (0, 0: any). Host order. 8 bytes. */
struct ic_candidate {
    u16 sport_first;
    u16 sport_last;
    u8 action;
    u8 slot;                    /* redirect: the Proxy's listener slot in ps_sockets */
    u16 priority;               /* the rule's priority (for status and tests) */
};

/* What every packet to one (intercept, proto, port, longest prefix) meets, first match
 * wins: the rules in priority order, cut after the first that has no source ports. */
struct ic_rule {
    u32 count;
    struct ic_candidate c[IC_CHAIN];
    u32 stamp;
};

/* A redirected SYN on its way from the device's egress to lo's ingress (LRU: a SYN lost on
 * the way leaves nothing behind). Network order. */
struct ic_flow {
    u32 saddr;
    u32 daddr;
    u16 sport;
    u16 dport;
};

/* The IPv6 twin of ic_flow (ic_syn6).  Network order.  36 bytes. */
struct ic_flow6 {
    u32 saddr[4];
    u32 daddr[4];
    u16 sport;
    u16 dport;
};

struct ic_pending {
    u8 slot;
    u8 ic;
    u16 pad;
};

/* Host plumbing bpfsync made in a network namespace, keyed by the namespace's name (zero
 * padded; "" is bpfsync's own): the namespace's cookie (a recreated namespace is another),
 * and net.ipv4.conf.lo.accept_local as it was before (IC_SYSCTL_UNTOUCHED: bpfsync did not
 * change it). 64-byte key, 16-byte value. */
#define IC_SYSCTL_UNTOUCHED 0xffffffff
struct ic_host {
    u64 netns_cookie;
    u32 accept_local_before;
    u32 pad;
};

/* ic_stats: per-CPU array of IC_MAX * IC_COUNTERS u64, id * IC_COUNTERS + counter. */
enum ic_stat {
    IC_STAT_NEW = 0,          /* first packets classified (TCP SYN, UDP) */
    IC_STAT_REDIRECTED = 1,   /* SYNs sent to a proxy */
    IC_STAT_DROPPED = 2,
    IC_STAT_PASSED = 3,       /* by a pass rule */
    IC_STAT_UNMATCHED = 4,    /* no rule: passed */
    IC_STAT_FLOW = 5,         /* later packets of redirected connections sent to lo */
    IC_STAT_ASSIGNED = 6,     /* SYNs assigned to the proxy's listener (at lo) */
    IC_STAT_NO_LISTENER = 7,  /* no live listener: the SYN is dropped (the client retries) */
    IC_STAT_ASSIGN_ERROR = 8,
    IC_STAT_FRAGMENT = 9,     /* first fragment too short for its ports, or TCP offset 8: dropped */
    IC_STAT_HEADERS = 10,     /* IPv6: more than IC_EXT_MAX extension headers: dropped */
};

#endif

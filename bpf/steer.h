/* Port steering (sk_lookup) tables, shared by steer.c and reconciler/steer_tables.py.
 * A kernel test compiles this header with BCC and compares the layouts with Python's. */
#ifndef BPFSYNC_STEER_H
#define BPFSYNC_STEER_H

#define PS_MAX_DEST 262144   /* steered (port, prefix) entries */
#define PS_MAX_PROXIES 64    /* listener slots; a Proxy's id is its slot (1..63) */
/* ps_sockets holds each slot's IPv4 listener, ps_sockets6 its IPv6 one (bound to ::1,
 * IPV6_V6ONLY): bpf_sk_assign refuses a socket of the other family. */
#define PS_PORT_ANY 0        /* port of a wildcard entry: "*" in YAML */
#define PS_COUNTERS 4        /* counters per slot in ps_stats */

/* LPM trie key: prefixlen counts bits of (proto, pad, port, addr), so a /24 destination
 * prefix on one port is prefixlen 32 + 24.  port and addr in network byte order;
 * prefixlen in host order (struct bpf_lpm_trie_key).  12 bytes. */
struct ps_dest_key {
    u32 prefixlen;
    u8 proto;
    u8 pad;
    u16 port;
    u32 addr;
};

/* The IPv6 twin of ps_dest_key (ps_dest6): prefixlen 32 + the prefix's length; addr in
 * network byte order.  24 bytes. */
struct ps_dest6_key {
    u32 prefixlen;
    u8 proto;
    u8 pad;
    u16 port;
    u32 addr[4];
};

/* Which listener slot receives the connection; stamp marks entries bpfsync wrote. 8 bytes. */
struct ps_dest {
    u32 slot;
    u32 stamp;
};

/* ps_stats is a per-CPU array of PS_MAX_PROXIES * PS_COUNTERS u64: slot * PS_COUNTERS + c.
 * Slot 0 holds totals over every lookup. */
enum ps_stat {
    PS_STAT_LOOKUP = 0,       /* slot 0: every TCP lookup (both families); slot n: matched */
    PS_STAT_STEERED = 1,      /* assigned to the proxy's listener */
    PS_STAT_NO_LISTENER = 2,  /* steered destination without a live listener: dropped */
    PS_STAT_ASSIGN_ERROR = 3, /* bpf_sk_assign refused the listener: dropped */
};

#endif

/* Transparent proxy by cgroup (the Pipy seed, fixed): tables shared by tproxy.c and
 * reconciler/tables.py. A kernel test compiles this header with BCC and compares the layouts
 * with Python's. */
#ifndef BPFSYNC_TPROXY_H
#define BPFSYNC_TPROXY_H

#define TP_MAX 64              /* TransparentProxies per pin root; an id is 1..63 */
#define TP_MAX_RULES 65536     /* intercept and exclude (port, prefix) entries */
#define TP_MAX_CONNS 65536     /* intercepted connections tracked at once */
#define TP_EXCLUDE_CGROUPS 4   /* cgroups (with their descendants) never intercepted */
#define TP_COUNTERS 8
#define TP_PORT_ANY 0
#define TP_KIND_INTERCEPT 1
#define TP_KIND_EXCLUDE 2
#define TP_FLAG_FAIL_OPEN 1    /* no live proxy listener: connect directly, not refuse */
#define TP_FLAG_REFUSE_IPV6 2  /* native IPv6 connects are refused (EPERM), not let through */
#define TP6_COUNTERS 2

/* LPM trie key, laid out like ps_dest_key: prefixlen counts the 32 bits of (kind, tp, port)
 * plus the destination prefix length. port and addr network order; prefixlen host order. */
struct tp_rule_key {
    u32 prefixlen;
    u8 kind;
    u8 tp;
    u16 port;
    u32 addr;
};

/* The IPv6 twin of tp_rule_key (tp_rules6): prefixlen 32 + the prefix's length; addr network
 * order.  24 bytes. */
struct tp_rule6_key {
    u32 prefixlen;
    u8 kind;
    u8 tp;
    u16 port;
    u32 addr[4];
};

struct tp_rule {
    u32 tp;
    u32 stamp;
};

/* One TransparentProxy, keyed by its id (host order u32). 72 bytes. */
struct tp_config {
    u32 slot;                  /* the Proxy's listener slot in ps_sockets */
    u32 flags;
    u64 netns_cookie;          /* only sockets of the Proxy's namespace are intercepted */
    u64 cgroup_id[TP_EXCLUDE_CGROUPS];  /* 0: unused */
    u32 cgroup_level[TP_EXCLUDE_CGROUPS];
    u32 pad;
    u32 stamp;
};

/* Socket-local storage of an intercepted client socket: where it wanted to go. Freed with
 * the socket, so it cannot fill up. */
struct tp_orig {
    u32 addr;                  /* network order */
    u16 port;                  /* network order */
    u16 tp;
};

/* Socket-local storage of a native IPv6 client socket (tp_orig6).  20 bytes. */
struct tp_orig6 {
    u32 addr[4];               /* network order */
    u16 port;                  /* network order */
    u16 tp;
};

/* A native IPv6 connection as the proxy sees it (tp_conns6), answered for
 * getsockopt(SOL_IPV6, IP6T_SO_ORIGINAL_DST): addresses network order, ports host order.
 * 36 bytes. */
struct tp_conn6_key {
    u32 client_ip[4];
    u32 proxy_ip[4];
    u16 client_port;
    u16 proxy_port;
};

/* The connection as the proxy sees it (peer = client, local = listener), host order, so
 * that getsockopt(SO_ORIGINAL_DST) on the accepted socket finds the client's tp_orig.
 * Inserted when the client's connection is established, deleted when its socket closes. */
struct tp_conn_key {
    u32 client_ip;
    u32 proxy_ip;
    u16 client_port;
    u16 proxy_port;
};

/* tp_stats: per-CPU array of TP_MAX * TP_COUNTERS u64, id * TP_COUNTERS + counter.
 * Id 0 counts SO_ORIGINAL_DST questions no entry answered. */
enum tp_stat {
    TP_STAT_CONNECTS = 0,      /* TCP connects seen (IPv4, mapped and native IPv6) */
    TP_STAT_INTERCEPTED = 1,
    TP_STAT_EXCLUDED = 2,      /* by an exclude rule or an excluded cgroup */
    TP_STAT_OTHER_NETNS = 3,   /* in another network namespace than the Proxy's: direct */
    TP_STAT_NO_PROXY = 4,      /* no live listener: refused (or direct with failOpen) */
    TP_STAT_TRACK_FULL = 5,    /* tp_conns full: the proxy cannot learn the destination */
    TP_STAT_ANSWERED = 6,      /* SO_ORIGINAL_DST answered */
    TP_STAT_UNANSWERED = 7,    /* (id 0) SO_ORIGINAL_DST asked, nothing tracked */
};

/* tp_stats6: per-CPU array of TP_MAX * TP6_COUNTERS u64 (a map of its own: tp_stats keeps
 * the size pins of earlier versions have).  IPv4-mapped connects are counted in tp_stats. */
enum tp6_stat {
    TP6_STAT_DIRECT = 0,       /* native IPv6 connect no rule intercepts, let through */
    TP6_STAT_REFUSED = 1,      /* native IPv6 connect no rule intercepts, refused (ipv6: refuse) */
};

#endif

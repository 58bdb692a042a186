/* TrueIngress tables: the one definition of every key and value that bpfsync's reconciler
 * writes and the TC programs read.  Mirrored in reconciler/tables.py; a kernel test compiles
 * this header with BCC and checks the Python layout against it field by field.
 *
 * Byte order: every multi-byte field in these tables is big-endian (network order), exactly
 * as it appears on the wire, including ids that are copied into the GUE header.  The data
 * path compares and copies without conversion; user space converts once when encoding.
 * Per-CPU statistics (added with the data path) are the only host-order values.
 *
 * Ownership: the reconciler owns TI_ENCAP, TI_VERIFY, TI_REPLY, TI_TUNNEL, TI_DECAP and TI_NEXT
 * whole.  The data path writes only TI_LEARNED (remote endpoints learned from GUE pings) and
 * TI_FRESH (the newest accepted ping per tunnel), which the reconciler never writes, diffs or
 * prunes, and TI_STATS (per-CPU counters).
 *
 * `stamp` marks an entry as written by bpfsync: crc32 of the entry's other bytes (key then
 * value without the stamp).  An entry whose stamp does not match was written by someone else
 * (bpftool, a script) and is reported as drift.  The data path does not read the stamp.
 */
#ifndef BPFSYNC_TRUEINGRESS_H
#define BPFSYNC_TRUEINGRESS_H

#define TI_PROTO_TCP 6
#define TI_PROTO_UDP 17
#define TI_KEY_LEN 16

#define TI_MAX_SERVICES 131072
#define TI_MAX_TUNNELS 65536
#define TI_MAX_DECAP 65536

/* Tunnel flags (ti_tunnel.flags, big-endian). */
#define TI_TUNNEL_LEARN 0x1 /* remote comes from TI_LEARNED, filled by GUE pings */
#define TI_TUNNEL_PING 0x2  /* this end sends GUE pings to the remote (bpfsync datapath) */
#define TI_TUNNEL_KEYED 0x4 /* key is set: pings must carry its MAC (or TI_NEXT's) */
#define TI_TUNNEL_SEND_NEXT 0x8 /* the pinger signs with the TI_NEXT key (read by user space) */

/* GUE (draft-ietf-intarea-gue), see bpf/README.md for the byte diagram. */
#define TI_GUE_CTYPE_PING 1  /* control type of a bpfsync tunnel ping */
#define TI_GUE_DATA_HLEN 6   /* 32-bit words of private data in a data packet */
#define TI_GUE_PING_HLEN 5   /* 32-bit words of private data in a ping */

/* A ping's timestamp (sender's CLOCK_TAI) may differ from the receiver's by at most this much
 * either way; see bpf/README.md for the clock assumption. */
#define TI_PING_WINDOW_NS (60ULL * 1000000000ULL)

/* TI_NEXT key kinds: whose second accepted key an entry holds. */
#define TI_NEXT_TUNNEL 1
#define TI_NEXT_SERVICE 2

/* An IPv4 endpoint 3-tuple: proxy endpoints (TI_ENCAP key), tunnel local endpoints
 * (TI_DECAP key) and service backends.  8 bytes, no implicit padding. */
struct ti_endpoint {
    __be32 addr;
    __be16 port;
    __u8 proto;
    __u8 pad;
};

/* An IPv6 endpoint 3-tuple: the proxy endpoints and backends of IPv6 Services (TI_ENCAP6
 * key, TI_VERIFY6 and TI_REPLY6).  20 bytes, no implicit padding. */
struct ti_endpoint6 {
    __u8 addr[16];
    __be16 port;
    __u8 proto;
    __u8 pad;
};

/* Service identifier, carried in the GUE header. */
struct ti_sid {
    __be16 group_id;
    __be16 service_id;
};

/* TI_ENCAP value: what the egress program needs to encapsulate traffic that is sent to a
 * service's proxy endpoint.  32 bytes. */
struct ti_service {
    __be32 tunnel_id;
    struct ti_sid sid;
    __u8 key[TI_KEY_LEN];
    __be32 reserved;
    __be32 stamp;
};

/* TI_VERIFY value: the key a decapsulated packet must carry for its service, and the backend
 * the service forwards to.  32 bytes. */
struct ti_verify {
    __u8 key[TI_KEY_LEN];
    struct ti_endpoint backend;
    __be32 reserved;
    __be32 stamp;
};

/* TI_REPLY value, key is a service's backend endpoint: on a node, replies sent from the
 * backend get the proxy endpoint back as source (reverse NAT) and, in standard mode, are
 * encapsulated to the service's tunnel.  36 bytes. */
struct ti_reply {
    struct ti_endpoint proxy;
    __be32 tunnel_id;
    struct ti_sid sid;
    __u8 key[TI_KEY_LEN];
    __be32 stamp;
};

/* IPv6 Services (IPv6 inside the tunnel, GUE proto 41, over the tunnel's IPv4 underlay):
 * TI_ENCAP6 is keyed by the proxy endpoint (struct ti_endpoint6) with a struct ti_service
 * value; TI_VERIFY6 by the service id with the value below (40 bytes); TI_REPLY6 by the
 * backend endpoint with the value below (48 bytes).  A service id lives in TI_VERIFY or
 * TI_VERIFY6, never both: the GUE header's proto says which one a packet is checked against. */
struct ti_verify6 {
    __u8 key[TI_KEY_LEN];
    struct ti_endpoint6 backend;
    __be32 stamp;
};

struct ti_reply6 {
    struct ti_endpoint6 proxy;
    __be32 tunnel_id;
    struct ti_sid sid;
    __u8 key[TI_KEY_LEN];
    __be32 stamp;
};

/* TI_TUNNEL value, key is a big-endian __be32 tunnel id.  The remote is the configured
 * endpoint; with TI_TUNNEL_LEARN it is zero and TI_LEARNED holds it.  `key` authenticates
 * pings (TI_TUNNEL_KEYED); ping_interval_ms is read by the pinger (TI_TUNNEL_PING).  40 bytes. */
struct ti_tunnel {
    __be32 local_addr;
    __be32 remote_addr;
    __be16 local_port;
    __be16 remote_port;
    __be32 flags;
    __be32 ping_interval_ms;
    __u8 key[TI_KEY_LEN];
    __be32 stamp;
};

/* TI_TUNNEL6 value: a tunnel whose endpoints are IPv6 (an IPv6 underlay), fields as in
 * struct ti_tunnel.  A tunnel id lives in TI_TUNNEL or TI_TUNNEL6, never both; its local
 * endpoint is in TI_DECAP6 (key struct ti_endpoint6, proto UDP, value struct ti_decap) and a
 * learned remote in TI_LEARNED6.  64 bytes. */
struct ti_tunnel6 {
    __u8 local_addr[16];
    __u8 remote_addr[16];
    __be16 local_port;
    __be16 remote_port;
    __be32 flags;
    __be32 ping_interval_ms;
    __u8 key[TI_KEY_LEN];
    __be32 stamp;
};

/* TI_LEARNED6 value, key is a big-endian __be32 tunnel id.  Written only by the data path.
 * 32 bytes. */
struct ti_learned6 {
    __u8 remote_addr[16];
    __be16 remote_port;
    __u16 pad;
    __u32 pad2;
    __u64 updated_ns; /* as in struct ti_learned */
};

/* TI_DECAP value, key is the tunnel's local endpoint (proto UDP). */
struct ti_decap {
    __be32 stamp;
};

/* TI_NEXT: the second key a Tunnel (pings) or a Service (data packets) accepts while keys
 * rotate.  The two accepted keys sit in byte order (the lower in TI_VERIFY / TI_TUNNEL), so
 * swapping which one is sent moves no accepted key; data is sent with the TI_ENCAP / TI_REPLY
 * key, pings with the TI_TUNNEL key or, with TI_TUNNEL_SEND_NEXT, this one.  Key: kind and the
 * tunnel id, or the service id (struct ti_sid) in `id`.  8-byte key, 20-byte value. */
struct ti_next_key {
    __be32 kind;
    __be32 id;
};

struct ti_next {
    __u8 key[TI_KEY_LEN];
    __be32 stamp;
};

/* TI_FRESH value, key is a big-endian __be32 tunnel id: the timestamp of the newest accepted
 * ping (host order).  A ping must be newer to be accepted.  Written only by the data path. */
struct ti_fresh {
    __u64 last_ns;
};

/* TI_LEARNED value, key is a big-endian __be32 tunnel id.  Written only by the data path. */
struct ti_learned {
    __be32 remote_addr;
    __be16 remote_port;
    __u16 pad;
    __u64 updated_ns; /* bpf_ktime_get_boot_ns() of the last accepted ping, host order */
};

/* GUE wire format: the 4-byte base header, then private data whose length Hlen counts. */
struct ti_gue_hdr {
    __u8 vch;       /* version (2 bits, 0) | C (1 bit) | Hlen (5 bits) */
    __u8 proto;     /* data: inner IP protocol (4 IPv4, 41 IPv6); control: ctype */
    __be16 flags;   /* no extension fields are used: always 0 */
};

/* Private data of a data packet (Hlen 6). */
struct ti_gue_data {
    __be32 tunnel_id;
    struct ti_sid sid;
    __u8 key[TI_KEY_LEN];
};

/* Private data of a ping (C=1, ctype TI_GUE_CTYPE_PING, Hlen 5).  The MAC is SipHash-2-4,
 * keyed with the tunnel key, of the 16 bytes from the GUE base header to the timestamp; the
 * key itself never travels.  Layout and limits: bpf/README.md. */
struct ti_gue_ping {
    __be32 tunnel_id;
    __u8 timestamp[8]; /* sender's CLOCK_TAI in ns, big-endian */
    __u8 mac[8];       /* SipHash-2-4 output, little-endian as the reference code writes it */
};

/* TI_STATS: per-CPU __u64 counters, host order, indexed by these.  Names in tables.py. */
enum ti_stat {
    TI_STAT_PASS = 0,          /* not for the data path, passed untouched */
    TI_STAT_ENCAP,             /* encapsulated and sent into a tunnel */
    TI_STAT_DECAP,             /* decapsulated after the key was verified */
    TI_STAT_PING,              /* authenticated ping: learned remote recorded */
    TI_STAT_DNAT,              /* decapsulated packet rewritten to the service backend */
    TI_STAT_REPLY_NAT,         /* backend reply given the proxy endpoint as source */
    TI_STAT_FIB_REDIRECT,      /* encapsulated packet redirected after a FIB lookup */
    TI_STAT_DROP_NO_TUNNEL,    /* tunnel id unknown */
    TI_STAT_DROP_NO_REMOTE,    /* learn tunnel without a learned remote yet */
    TI_STAT_DROP_NO_SERVICE,   /* service id unknown */
    TI_STAT_DROP_BAD_KEY,      /* data packet with a wrong key */
    TI_STAT_DROP_BAD_VERSION,  /* GUE version other than 0 */
    TI_STAT_DROP_BAD_HEADER,   /* Hlen, flags, proto or ctype not as documented */
    TI_STAT_DROP_MALFORMED,    /* truncated packet, inconsistent lengths, bad inner header */
    TI_STAT_DROP_FRAGMENT,     /* IP fragment addressed to a decap endpoint */
    TI_STAT_DROP_ERROR,        /* a helper failed (headroom, FIB) */
    TI_STAT_PING_BAD_KEY,      /* ping whose MAC matches neither tunnel key: ignored */
    TI_STAT_PING_FIXED,        /* ping for a tunnel whose remote is fixed: ignored */
    TI_STAT_PING_STALE,        /* authentic ping outside the clock window: ignored */
    TI_STAT_PING_REPLAY,       /* authentic ping not newer than the last accepted: ignored */
    TI_STAT_DROP_BAD_SOURCE,   /* data packet whose outer source is not the tunnel's remote */
    TI_STAT_DROP_BAD_INNER,    /* gateway: inner source is not the service's proxy endpoint */
    TI_STAT_MAX,
};
#define TI_STATS_SLOTS 32

#endif

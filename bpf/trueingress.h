/* TrueIngress tables: the one definition of every key and value that bpfsync's reconciler
 * writes and the TC programs read.  Mirrored in reconciler/tables.py; a kernel test compiles
 * this header with BCC and checks the Python layout against it field by field.
 *
 * Byte order: every multi-byte field in these tables is big-endian (network order), exactly
 * as it appears on the wire, including ids that are copied into the GUE header.  The data
 * path compares and copies without conversion; user space converts once when encoding.
 * Per-CPU statistics (added with the data path) are the only host-order values.
 *
 * Ownership: the reconciler owns TI_ENCAP, TI_VERIFY, TI_TUNNEL and TI_DECAP whole.  The data
 * path writes only TI_LEARNED (remote endpoints learned from GUE pings), which the reconciler
 * never writes, diffs or prunes.
 *
 * `stamp` marks an entry as written by bpfsync: crc32 of the entry's other bytes (key then
 * value without the stamp).  An entry whose stamp does not match was written by someone else
 * (bpftool, a script) and is reported as drift.  The data path ignores it.
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

/* An IPv4 endpoint 3-tuple: proxy endpoints (TI_ENCAP key), tunnel local endpoints
 * (TI_DECAP key) and service backends.  8 bytes, no implicit padding. */
struct ti_endpoint {
    __be32 addr;
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

/* TI_TUNNEL value, key is a big-endian __be32 tunnel id.  The remote is the configured
 * endpoint; with TI_TUNNEL_LEARN it is zero and TI_LEARNED holds it.  20 bytes. */
struct ti_tunnel {
    __be32 local_addr;
    __be32 remote_addr;
    __be16 local_port;
    __be16 remote_port;
    __be32 flags;
    __be32 stamp;
};

/* TI_DECAP value, key is the tunnel's local endpoint (proto UDP). */
struct ti_decap {
    __be32 stamp;
};

/* TI_LEARNED value, key is a big-endian __be32 tunnel id.  Written only by the data path. */
struct ti_learned {
    __be32 remote_addr;
    __be16 remote_port;
    __u16 pad;
    __u64 updated_ns; /* bpf_ktime_get_boot_ns() of the last accepted ping, host order */
};

#endif

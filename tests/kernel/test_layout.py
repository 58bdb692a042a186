"""bpf/trueingress.h and reconciler/tables.py must describe the same bytes: compile the header
with BCC (as the data-path programs will be) and compare sizes and field offsets."""

from __future__ import annotations

import ctypes
from pathlib import Path

from reconciler import tables as t
from reconciler.kernel.bcc_env import ensure_kernel_source

HEADER = Path(__file__).resolve().parents[2] / "bpf" / "trueingress.h"

PROGRAM = f"""
#include "{HEADER}"
BPF_HASH(ti_encap, struct ti_endpoint, struct ti_service, 4);
BPF_HASH(ti_verify, struct ti_sid, struct ti_verify, 4);
BPF_HASH(ti_tunnel, __be32, struct ti_tunnel, 4);
BPF_HASH(ti_decap, struct ti_endpoint, struct ti_decap, 4);
BPF_HASH(ti_learned, __be32, struct ti_learned, 4);
int unused(void *ctx) {{ return 0; }}
"""

# Offsets the Python encoders use (struct formats in tables.py), field by field.
EXPECTED_OFFSETS = {
    "ti_encap": {"tunnel_id": 0, "sid": 4, "key": 8, "reserved": 24, "stamp": 28},
    "ti_verify": {"key": 0, "backend": 16, "reserved": 24, "stamp": 28},
    "ti_tunnel": {"local_addr": 0, "remote_addr": 4, "local_port": 8, "remote_port": 10,
                  "flags": 12, "stamp": 16},
    "ti_decap": {"stamp": 0},
    "ti_learned": {"remote_addr": 0, "remote_port": 4, "pad": 6, "updated_ns": 8},
}


def test_header_matches_python_layout() -> None:
    ensure_kernel_source()
    from bcc import BPF

    bpf = BPF(text=PROGRAM.encode())
    try:
        for spec in t.ALL_TABLES:
            table = bpf[spec.name.encode()]
            assert ctypes.sizeof(table.Key) == spec.key_size, spec.name
            assert ctypes.sizeof(table.Leaf) == spec.value_size, spec.name
            offsets = {name: getattr(table.Leaf, name).offset for name, *_ in table.Leaf._fields_}
            assert offsets == EXPECTED_OFFSETS[spec.name], spec.name
        key_offsets = {n: getattr(bpf[b"ti_encap"].Key, n).offset
                       for n, *_ in bpf[b"ti_encap"].Key._fields_}
        assert key_offsets == {"addr": 0, "port": 4, "proto": 6, "pad": 7}
        # Same capacities in C and Python.
        text = HEADER.read_text()
        assert f"#define TI_MAX_SERVICES {t.MAX_SERVICES}" in text
        assert f"#define TI_MAX_TUNNELS {t.MAX_TUNNELS}" in text
        assert f"#define TI_TUNNEL_LEARN 0x{t.TUNNEL_FLAG_LEARN:x}" in text
    finally:
        bpf.cleanup()

"""Counting map writes in the kernel, independently of bpfsync's own bookkeeping.

A tracepoint on bpf(2) entry counts, for one process, the entries it asks the kernel to write
or delete: 1 per BPF_MAP_UPDATE_ELEM / DELETE_ELEM, attr.batch.count per UPDATE_BATCH /
DELETE_BATCH. (The htab update functions themselves are notrace.)
"""

from __future__ import annotations

import ctypes
import os
import subprocess

from reconciler.kernel.bcc_env import ensure_kernel_source

PROGRAM = r"""
#define MAP_UPDATE_ELEM 2
#define MAP_DELETE_ELEM 3
#define MAP_UPDATE_BATCH 26
#define MAP_DELETE_BATCH 27
BPF_ARRAY(counts, u64, 2);   /* 0: entries written, 1: entries deleted */
BPF_ARRAY(target, u32, 1);

TRACEPOINT_PROBE(syscalls, sys_enter_bpf) {
    int zero = 0;
    u32 *tgid = target.lookup(&zero);
    if (!tgid || *tgid != (bpf_get_current_pid_tgid() >> 32))
        return 0;
    int cmd = args->cmd;
    u64 n = 1;
    if (cmd == MAP_UPDATE_BATCH || cmd == MAP_DELETE_BATCH) {
        u32 count = 0;
        bpf_probe_read_user(&count, sizeof(count), (char *)args->uattr + 32);
        n = count;
    }
    int idx = (cmd == MAP_UPDATE_ELEM || cmd == MAP_UPDATE_BATCH) ? 0 :
              (cmd == MAP_DELETE_ELEM || cmd == MAP_DELETE_BATCH) ? 1 : -1;
    if (idx < 0)
        return 0;
    u64 *c = counts.lookup(&idx);
    if (c)
        __sync_fetch_and_add(c, n);
    return 0;
}
"""


class WriteCounter:
    def __init__(self) -> None:
        ensure_kernel_source()
        if not os.path.exists("/sys/kernel/tracing/events"):
            subprocess.run(["mount", "-t", "tracefs", "tracefs", "/sys/kernel/tracing"], check=False)
        from bcc import BPF  # imported late: only kernel tests need BCC

        self.bpf = BPF(text=PROGRAM.encode())

    def watch(self, pid: int) -> None:
        self.bpf[b"target"][ctypes.c_int(0)] = ctypes.c_uint32(pid)
        for i in (0, 1):
            self.bpf[b"counts"][ctypes.c_int(i)] = ctypes.c_uint64(0)

    def counts(self) -> tuple[int, int]:
        c = self.bpf[b"counts"]
        return c[ctypes.c_int(0)].value, c[ctypes.c_int(1)].value

    def close(self) -> None:
        self.bpf.cleanup()

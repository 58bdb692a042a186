"""The few libbpf calls bpfsync needs, through ctypes (Debian's libbpf1, API 1.x).

libbpf 1.x returns -errno from these calls; they are turned into OSError here.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
from collections.abc import Iterator
from contextlib import suppress
from functools import cache
from pathlib import Path
from typing import Any

BPF_OBJ_NAME_LEN = 16


class BpfMapInfo(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("key_size", ctypes.c_uint32),
        ("value_size", ctypes.c_uint32),
        ("max_entries", ctypes.c_uint32),
        ("map_flags", ctypes.c_uint32),
        ("name", ctypes.c_char * BPF_OBJ_NAME_LEN),
        ("ifindex", ctypes.c_uint32),
        ("btf_vmlinux_value_type_id", ctypes.c_uint32),
        ("netns_dev", ctypes.c_uint64),
        ("netns_ino", ctypes.c_uint64),
        ("btf_id", ctypes.c_uint32),
        ("btf_key_type_id", ctypes.c_uint32),
        ("btf_value_type_id", ctypes.c_uint32),
        ("_pad", ctypes.c_uint32),
        ("map_extra", ctypes.c_uint64),
    ]


class BpfProgInfo(ctypes.Structure):
    """The head of struct bpf_prog_info: the fields bpfsync reads."""

    _fields_ = [
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("tag", ctypes.c_uint8 * 8),
        ("jited_prog_len", ctypes.c_uint32),
        ("xlated_prog_len", ctypes.c_uint32),
        ("jited_prog_insns", ctypes.c_uint64),
        ("xlated_prog_insns", ctypes.c_uint64),
        ("load_time", ctypes.c_uint64),
        ("created_by_uid", ctypes.c_uint32),
        ("nr_map_ids", ctypes.c_uint32),
        ("map_ids", ctypes.c_uint64),
        ("name", ctypes.c_char * BPF_OBJ_NAME_LEN),
    ]


class BpfMapCreateOpts(ctypes.Structure):
    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("btf_fd", ctypes.c_uint32),
        ("btf_key_type_id", ctypes.c_uint32),
        ("btf_value_type_id", ctypes.c_uint32),
        ("btf_vmlinux_value_type_id", ctypes.c_uint32),
        ("inner_map_fd", ctypes.c_uint32),
        ("map_flags", ctypes.c_uint32),
        ("map_extra", ctypes.c_uint64),
        ("numa_node", ctypes.c_uint32),
        ("map_ifindex", ctypes.c_uint32),
    ]


class BpfLinkInfo(ctypes.Structure):
    """struct bpf_link_info for netns links (sk_lookup): type, id, prog_id, netns part."""

    _fields_ = [
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("prog_id", ctypes.c_uint32),
        ("_pad", ctypes.c_uint32),
        ("netns_ino", ctypes.c_uint32),
        ("attach_type", ctypes.c_uint32),
        ("_rest", ctypes.c_uint8 * 64),
    ]


class BpfCgroupLinkInfo(ctypes.Structure):
    """struct bpf_link_info for cgroup links: type, id, prog_id, cgroup part."""

    _fields_ = [
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("prog_id", ctypes.c_uint32),
        ("_pad", ctypes.c_uint32),
        ("cgroup_id", ctypes.c_uint64),
        ("attach_type", ctypes.c_uint32),
        ("_rest", ctypes.c_uint8 * 60),
    ]


@cache
def lib() -> ctypes.CDLL:
    name = ctypes.util.find_library("bpf") or "libbpf.so.1"
    so = ctypes.CDLL(name, use_errno=True)
    vp, u32, i32 = ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int
    so.bpf_map_create.argtypes = [i32, ctypes.c_char_p, u32, u32, u32, vp]
    so.bpf_obj_pin.argtypes = [i32, ctypes.c_char_p]
    so.bpf_obj_get.argtypes = [ctypes.c_char_p]
    so.bpf_obj_get_info_by_fd.argtypes = [i32, vp, ctypes.POINTER(u32)]
    so.bpf_map_lookup_elem.argtypes = [i32, vp, vp]
    so.libbpf_num_possible_cpus.argtypes = []
    so.bpf_map_lookup_batch.argtypes = [i32, vp, vp, vp, vp, ctypes.POINTER(u32), vp]
    so.bpf_map_update_batch.argtypes = [i32, vp, vp, ctypes.POINTER(u32), vp]
    so.bpf_map_delete_batch.argtypes = [i32, vp, ctypes.POINTER(u32), vp]
    so.bpf_map_update_elem.argtypes = [i32, vp, vp, ctypes.c_uint64]
    so.bpf_map_delete_elem.argtypes = [i32, vp]
    so.bpf_map_get_next_key.argtypes = [i32, vp, vp]
    so.bpf_link_create.argtypes = [i32, i32, u32, vp]
    so.bpf_link_update.argtypes = [i32, i32, vp]
    so.bpf_prog_get_fd_by_id.argtypes = [u32]
    return so


def _check(rc: int, what: str) -> int:
    if rc < 0:
        code = -rc if rc != -1 else (ctypes.get_errno() or errno.EIO)
        raise OSError(code, f"{what}: {os.strerror(code)}")
    return rc


def map_create(map_type: int, name: str, key_size: int, value_size: int, max_entries: int,
               flags: int = 0) -> int:
    opts = BpfMapCreateOpts(sz=ctypes.sizeof(BpfMapCreateOpts), map_flags=flags)
    return _check(lib().bpf_map_create(map_type, name.encode(), key_size, value_size,
                                       max_entries, ctypes.byref(opts)), f"create map {name}")


def obj_pin(fd: int, path: str) -> None:
    _check(lib().bpf_obj_pin(fd, path.encode()), f"pin {path}")


def obj_get(path: str) -> int:
    return _check(lib().bpf_obj_get(path.encode()), f"open pin {path}")


def obj_get_if_pinned(path: str) -> int | None:
    """The pinned object's fd, or None when nothing is pinned there (yet)."""
    try:
        return obj_get(path)
    except FileNotFoundError:  # OSError(ENOENT) is raised as FileNotFoundError
        return None


def pin_replacing(fd: int, path: Path) -> None:
    """Pin fd at path, replacing what is pinned there in one rename (so readers see the old
    or the new object, never nothing). bpffs refuses '.' in names, hence "~new"."""
    path.parent.mkdir(mode=0o700, exist_ok=True)
    tmp = path.with_name(path.name + "~new")
    with suppress(FileNotFoundError):
        tmp.unlink()
    obj_pin(fd, str(tmp))
    os.rename(tmp, path)


def map_info(fd: int) -> BpfMapInfo:
    info = BpfMapInfo()
    size = ctypes.c_uint32(ctypes.sizeof(info))
    _check(lib().bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(size)),
           "map info")
    return info


def prog_info(fd: int) -> BpfProgInfo:
    info = BpfProgInfo()
    size = ctypes.c_uint32(ctypes.sizeof(info))
    _check(lib().bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(size)),
           "program info")
    return info


def possible_cpus() -> int:
    return _check(lib().libbpf_num_possible_cpus(), "possible CPUs")


def percpu_array_sums(fd: int, slots: int) -> list[int]:
    """Each slot of a per-CPU array of u64, summed over CPUs."""
    cpus = possible_cpus()
    value = (ctypes.c_uint64 * cpus)()
    out = []
    for i in range(slots):
        key = ctypes.c_uint32(i)
        _check(lib().bpf_map_lookup_elem(fd, ctypes.byref(key), value), "per-CPU lookup")
        out.append(sum(value))
    return out


READ_BUFFER = 4 << 20  # bytes of keys and values a batch read asks for at once


def lookup_all(fd: int, key_size: int, value_size: int, capacity: int) -> dict[bytes, bytes]:
    """Every entry of a hash map, with as few BPF_MAP_LOOKUP_BATCH calls as possible."""
    return dict(batched_entries(fd, key_size, value_size, capacity))


def batched_entries(fd: int, key_size: int, value_size: int,
                    capacity: int) -> Iterator[tuple[bytes, bytes]]:
    """Every entry of a hash map as BPF_MAP_LOOKUP_BATCH reads it, 65,536 (and 4 MiB of keys
    and values) at most per call: a caller that looks at each entry once holds one batch,
    not the map."""
    chunk = max(1, min(capacity, 65536, READ_BUFFER // (key_size + value_size)))
    keys = ctypes.create_string_buffer(key_size * chunk)
    values = ctypes.create_string_buffer(value_size * chunk)
    token_in = ctypes.create_string_buffer(max(key_size, 8))
    token_out = ctypes.create_string_buffer(max(key_size, 8))
    first = True
    while True:
        count = ctypes.c_uint32(chunk)
        rc = lib().bpf_map_lookup_batch(fd, None if first else token_in, token_out, keys, values,
                                        ctypes.byref(count), None)
        done = _raises_enoent(rc)
        if rc < 0 and not done:
            _check(rc, "batch lookup")
        n = count.value  # (copy the n entries read, not the whole 65,536-entry buffers)
        kraw, vraw = ctypes.string_at(keys, n * key_size), ctypes.string_at(values, n * value_size)
        for i in range(n):
            yield kraw[i * key_size:(i + 1) * key_size], vraw[i * value_size:(i + 1) * value_size]
        if done:
            return
        ctypes.memmove(token_in, token_out, len(token_out))
        first = False


def update_batch(fd: int, keys: bytes, values: bytes, count: int) -> None:
    if count:
        n = ctypes.c_uint32(count)
        _check(lib().bpf_map_update_batch(fd, keys, values, ctypes.byref(n), None),
               f"batch update ({n.value} of {count} written)")


def delete_batch(fd: int, keys: bytes, count: int) -> None:
    if count:
        n = ctypes.c_uint32(count)
        _check(lib().bpf_map_delete_batch(fd, keys, ctypes.byref(n), None),
               f"batch delete ({n.value} of {count} deleted)")


def _raises_enoent(rc: int) -> bool:
    return rc == -errno.ENOENT or (rc == -1 and ctypes.get_errno() == errno.ENOENT)


def lookup_elem(fd: int, key: bytes, value_size: int) -> bytes | None:
    value = ctypes.create_string_buffer(value_size)
    rc = lib().bpf_map_lookup_elem(fd, key, value)
    if _raises_enoent(rc):
        return None
    _check(rc, "lookup")
    return value.raw


def update_elem(fd: int, key: bytes, value: bytes) -> None:
    _check(lib().bpf_map_update_elem(fd, key, value, 0), "update")


def delete_elem(fd: int, key: bytes) -> bool:
    """False when the key was not there."""
    rc = lib().bpf_map_delete_elem(fd, key)
    if _raises_enoent(rc):
        return False
    _check(rc, "delete")
    return True


def lookup_each(fd: int, key_size: int, value_size: int) -> dict[bytes, bytes]:
    """Every entry, one key at a time: for maps without batch operations (LPM tries)."""
    return dict(each_entry(fd, key_size, value_size))


def each_entry(fd: int, key_size: int, value_size: int) -> Iterator[tuple[bytes, bytes]]:
    """Every entry as lookup_each reads it, one at a time."""
    key = None
    nxt = ctypes.create_string_buffer(key_size)
    while True:
        rc = lib().bpf_map_get_next_key(fd, key, nxt)
        if _raises_enoent(rc):
            return
        _check(rc, "next key")
        key = nxt.raw
        value = lookup_elem(fd, key, value_size)
        if value is not None:  # deleted meanwhile
            yield key, value


def link_create(prog_fd: int, target_fd: int, attach_type: int) -> int:
    return _check(lib().bpf_link_create(prog_fd, target_fd, attach_type, None), "link create")


def link_update(link_fd: int, prog_fd: int) -> None:
    """Swap the link's program atomically (no moment without a program)."""
    _check(lib().bpf_link_update(link_fd, prog_fd, None), "link update")


def link_info(fd: int) -> BpfLinkInfo:
    return _link_info(fd, BpfLinkInfo())


def cgroup_link_info(fd: int) -> BpfCgroupLinkInfo:
    return _link_info(fd, BpfCgroupLinkInfo())


def _link_info(fd: int, info: Any) -> Any:
    size = ctypes.c_uint32(ctypes.sizeof(info))
    _check(lib().bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(size)),
           "link info")
    return info


def prog_fd_by_id(prog_id: int) -> int:
    return _check(lib().bpf_prog_get_fd_by_id(prog_id), f"program {prog_id}")


def prog_name_tag(prog_id: int) -> tuple[str | None, str | None]:
    """A loaded program's name and tag (hex), or Nones when it is gone."""
    try:
        fd = prog_fd_by_id(prog_id)
    except OSError:
        return None, None
    try:
        info = prog_info(fd)
        return info.name.decode(errors="replace"), bytes(info.tag).hex()
    finally:
        os.close(fd)

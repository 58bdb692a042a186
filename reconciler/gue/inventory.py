"""Tunnels and Services decoded back from the kernel into resource documents, for `get`.

Resources are named as declared, from the names table (reconciler/names), and after their
ids (tunnel-<id>, svc-<group>-<service>) when nothing names them. Keys are never printed: a
key is referenced with keyFrom, and written to a 0600 file (named after the ids, unique
across kinds) only when a keys directory is given.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from reconciler.core.document import document
from reconciler.core.tables import Observed, stamp_ok
from reconciler.gue import tables as gt
from reconciler.load.secrets import Secret
from reconciler.names.tables import Names


def _ep(text: str) -> dict[str, Any]:
    """address:port or [IPv6 address]:port as an endpoint document."""
    address, port = text.rsplit(":", 1)
    return {"address": address.strip("[]"), "port": int(port)}


def _named(names: Names, ref: str, status: dict[str, Any]) -> str:
    """The resource's declared name (its ref's if none); its source put into status."""
    source = names.source(ref)
    if source is not None:
        status["source"] = source
    return names.resolve(ref).partition("/")[2]


def tunnels(observed: Observed, keys_dir: Path | None = None,
            now_ns: int | None = None) -> list[dict[str, Any]]:
    now_ns = time.clock_gettime_ns(time.CLOCK_BOOTTIME) if now_ns is None else now_ns
    names = Names(observed)
    # a tunnel id is in one family's tables: both read as one
    learned = {**observed.get(gt.LEARNED.name, {}), **observed.get(gt.LEARNED6.name, {})}
    nexts = observed.get(gt.NEXT_KEY_TABLE.name, {})
    out = []
    every = {**observed.get(gt.TUNNEL.name, {}), **observed.get(gt.TUNNEL6.name, {})}
    for key, value in sorted(every.items()):
        tid = gt.CODECS[gt.TUNNEL.name].decode_key(key)["id"]
        v = gt.CODECS[gt.TUNNEL.name].decode_value(value)
        spec: dict[str, Any] = {"id": tid, "local": _ep(v["local"]),
                                "remote": "learn" if v["remote"] == "learn" else _ep(v["remote"])}
        if ":" in spec["local"]["address"]:
            spec["zeroChecksum"] = True
        nxt = nexts.get(gt.next_key(gt.NEXT_TUNNEL, key))
        second = gt.CODECS[gt.NEXT_KEY_TABLE.name].decode_value(nxt)["nextKey"] if nxt else None
        if "key" in v:
            sent, other = v["key"], second  # the key pings are signed with, and the other
            if second is not None and v["flags"] & gt.TUNNEL_FLAG_SEND_NEXT:
                sent, other = second, v["key"]
            spec["keyFrom"] = {"file": _export_key(keys_dir, f"tunnel-{tid}", sent)}
            if other is not None:
                spec["nextKeyFrom"] = {"file": _export_key(keys_dir, f"tunnel-{tid}-next", other)}
        status: dict[str, Any] = {"managed": stamp_ok(key, value)}
        name = _named(names, gt.tunnel_ref(tid), status)
        if "pingIntervalMs" in v:
            spec["ping"] = {"intervalSeconds": v["pingIntervalMs"] / 1000}
        if key in learned:
            lv = gt.CODECS[gt.LEARNED.name].decode_value(learned[key])
            status["learned"] = {**_ep(lv["remote"]),
                                 "ageSeconds": round(max(0, now_ns - lv["updatedNs"]) / 1e9, 1)}
        elif spec["remote"] == "learn":
            status["learned"] = None
        out.append(document("Tunnel", name, spec, status))
    return out


def services(observed: Observed, keys_dir: Path | None = None) -> list[dict[str, Any]]:
    verify = {k: gt.CODECS[spec.name].decode_value(v)  # a service id is in one of the two
              for spec in (gt.VERIFY, gt.VERIFY6) for k, v in observed.get(spec.name, {}).items()}
    out = []
    seen: set[bytes] = set()
    names = Names(observed)
    encap = {**observed.get(gt.ENCAP.name, {}), **observed.get(gt.ENCAP6.name, {})}
    for key, value in sorted(encap.items(), key=lambda kv: (kv[1][4:8], kv[0])):
        proxy = gt.decode_endpoint(key)
        e = gt.CODECS[gt.ENCAP.name].decode_value(value)
        sid = gt.sid_key(e["groupId"], e["serviceId"])
        seen.add(sid)
        ver = verify.get(sid)
        name = f"svc-{e['groupId']}-{e['serviceId']}"  # the key files' names
        status: dict[str, Any] = {"managed": stamp_ok(key, value)}
        spec: dict[str, Any] = {
            "groupId": e["groupId"], "serviceId": e["serviceId"], "protocol": proxy["protocol"],
            "proxy": {"address": proxy["address"], "port": proxy["port"]},
            "backend": _ep(ver["backend"]) if ver else None,
            "tunnel": names.resolve(gt.tunnel_ref(e["tunnelId"])).partition("/")[2],
            "keyFrom": {"file": _export_key(keys_dir, name, e["key"])},
        }
        nxt = observed.get(gt.NEXT_KEY_TABLE.name, {}).get(gt.next_key(gt.NEXT_SERVICE, sid))
        accepted = [ver["key"]] if ver else []
        if nxt is not None:
            accepted.append(gt.CODECS[gt.NEXT_KEY_TABLE.name].decode_value(nxt)["nextKey"])
        others = [k for k in accepted if k != e["key"]]
        if len(accepted) == 2 and others:  # rotating: the accepted key that is not sent
            spec["nextKeyFrom"] = {"file": _export_key(keys_dir, f"{name}-next", others[0])}
        status["verifyEntry"] = ver is not None
        status["keysAgree"] = e["key"] in accepted
        out.append(document("Service", _named(names, gt.service_ref(e["groupId"], e["serviceId"]),
                                              status), spec, status))
    for sid, ver in sorted(verify.items()):
        if sid not in seen:
            k = gt.CODECS[gt.VERIFY.name].decode_key(sid)
            status = {"verifyEntry": True, "encapEntry": False}
            name = _named(names, gt.service_ref(k["groupId"], k["serviceId"]), status)
            out.append(document("Service", name,
                                {"groupId": k["groupId"], "serviceId": k["serviceId"],
                                 "backend": _ep(ver["backend"])}, status))
    return out


def _export_key(keys_dir: Path | None, name: str, key: Secret) -> str:
    if keys_dir is None:
        return f"keys/{name}.key"
    keys_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = keys_dir / f"{name}.key"
    raw = key.value.rstrip(b"\0")
    try:
        text = raw.decode("ascii")
        if not text.isprintable() or text.startswith("hex:"):
            raise ValueError
    except ValueError:
        text = "hex:" + raw.hex()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text + "\n")
    os.chmod(path, 0o600)
    return str(path.resolve())



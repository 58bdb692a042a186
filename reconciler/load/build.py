"""Building a typed resource from a schema-valid document: the context a kind's build gets
(its fields, where problems go, keys, shared field parsers). Each kind's build lives in its
data path's package (<data path>/build.py) and is listed by the registry.

A build reports every field problem it finds (never just the first) and returns None when
there was an error; warnings do not make it fail.
"""

from __future__ import annotations

import ipaddress
from contextlib import suppress
from pathlib import Path
from typing import Any

from reconciler.core.errors import Severity
from reconciler.core.findings import Finding
from reconciler.core.interner import Interner
from reconciler.core.model import Endpoint, Origin, PortRange, unicast_problem
from reconciler.load.locate import PathItem
from reconciler.load.secrets import (
    KEY_LEN,
    KeySource,
    KeyUnavailable,
    Secret,
    decode_key,
    read_key_env,
    read_key_file,
)
from reconciler.load.source import Document

DEFAULT_PRIORITY = 49152  # tc filter priority when a kind's spec names none
UNREAD_KEY = Secret(bytes(KEY_LEN))  # stands for a key not read (validate --no-secrets)


class KeyCache(dict[tuple[str, str], Secret]):
    """Keys read once per load, however many Services use them; remembers which key files
    were consulted, so that a cached file is re-checked when one of its key files changes.
    share: the load's Interner, through which builds pass fields that repeat (core/interner.py)."""

    def __init__(self, read: bool = True) -> None:
        super().__init__()
        self.read = read
        self.touched: set[tuple[str, str]] = set()
        self.share = Interner()

    def __contains__(self, key: object) -> bool:
        self.touched.add(key)  # type: ignore[arg-type]
        return super().__contains__(key)


def _resolve_key(spec: dict[str, Any], doc: Document, cache: KeyCache,
                 field: str = "key") -> tuple[Secret | None, KeySource, str | None]:
    """A key (field "key" or "nextKey", with its "...From"); file and env keys are read once
    per load, however many use them."""
    if field in spec:
        source = KeySource("inline")
        try:
            return decode_key(spec[field]), source, None
        except KeyUnavailable as exc:
            return None, source, str(exc)
    ref = spec[f"{field}From"]
    kind = "file" if "file" in ref else "env"
    source = KeySource(kind, ref[kind])
    if kind == "file":
        path = Path(ref["file"])
        cache_key = ("file", str(path if path.is_absolute() else Path(doc.file).parent / path))
    else:
        cache_key = ("env", ref["env"])
    if not cache.read:
        return UNREAD_KEY, source, None
    try:
        if cache_key not in cache:
            cache[cache_key] = (read_key_file(Path(cache_key[1])) if kind == "file"
                                else read_key_env(cache_key[1]))
        return cache[cache_key], source, None
    except KeyUnavailable as exc:
        return None, source, str(exc)


def ms(seconds: float) -> int:
    """Seconds as whole milliseconds, at least 1."""
    return max(1, round(seconds * 1000))


class Spec:
    """One schema-valid document being built: name, fields (the `spec` mapping), and the
    reporting of problems at paths inside `spec`; `bad` once an error was reported."""

    def __init__(self, doc: Document, origin: Origin, findings: list[Finding],
                 keys: KeyCache) -> None:
        data = doc.data
        self.doc, self.origin, self.findings, self.keys = doc, origin, findings, keys
        self.name: str = data["metadata"]["name"]
        self.kind: str = data["kind"]
        self.fields: dict[str, Any] = data["spec"]
        self.ref = f"{self.kind}/{self.name}"
        self.bad = False
        self.share = keys.share  # one object per distinct repeated value (core/interner.py)

    def get(self, field: str, default: Any = None) -> Any:
        return self.fields.get(field, default)

    def __getitem__(self, field: str) -> Any:
        return self.fields[field]

    def __contains__(self, field: str) -> bool:
        return field in self.fields

    def problem(self, path: tuple[PathItem, ...], message: str) -> None:
        """An error at spec.<path>: the resource is not built."""
        self.bad = True
        self.findings.append(Finding(self.origin, ("spec", *path), message, self.ref))

    def warn(self, path: tuple[PathItem, ...], message: str) -> None:
        self.findings.append(Finding(self.origin, ("spec", *path), message, self.ref,
                                     Severity.WARNING))

    def unicast(self, path: tuple[PathItem, ...], address: str, ipv6: bool = False) -> bool:
        """An error unless address is a unicast IPv4 address (or IPv6, where ipv6); whether
        it is one."""
        why = unicast_problem(address, ipv6)
        if why:
            self.problem(path, why)
        return why is None

    def endpoint(self, data: dict[str, Any], default_port: int | None = None) -> Endpoint:
        return Endpoint(data["address"], data.get("port", default_port))

    def key(self, field: str = "key") -> tuple[Secret | None, KeySource]:
        """The key of field (or field+"From"); an inline key is allowed with a warning."""
        key, source, key_problem = _resolve_key(self.fields, self.doc, self.keys, field)
        path: tuple[PathItem, ...] = ((field,) if source.kind == "inline"
                                      else (f"{field}From", source.kind))
        if key_problem:
            self.problem(path, key_problem)
        elif source.kind == "inline":
            self.warn(path, "a secret sits inline in the repository; use keyFrom (file or "
                            "env) instead")
        return key, source

    def next_key(self, key: Secret | None) -> Secret | None:
        """The second accepted key while keys rotate, if given; the same key twice is a
        mistake worth a word."""
        if "nextKey" not in self.fields and "nextKeyFrom" not in self.fields:
            return None
        if key is None:
            self.problem((), "nextKey needs a key: it is accepted beside the key while keys "
                             "rotate")
            return None
        nxt, source = self.key("nextKey")
        if nxt is not None and nxt == key and nxt is not UNREAD_KEY:
            self.warn(("nextKey" if source.kind == "inline" else "nextKeyFrom",),
                      "nextKey is the same key as key: nothing rotates")
        return nxt

    def port_ranges(self, items: list[int | str], path: tuple[PathItem, ...]) -> list[PortRange]:
        ports = []
        for i, p in enumerate(items):
            if isinstance(p, int):
                ports.append(PortRange(p, p))
            elif p == "*":
                ports.append(PortRange(0, 0))
            else:
                first, last = map(int, p.split("-"))
                if not 1 <= first <= last <= 65535:
                    self.problem((*path, i), f"port range {p!r} must be FIRST-LAST with "
                                             f"1 <= FIRST <= LAST <= 65535")
                else:
                    ports.append(PortRange(first, last))
        return ports

    def prefixes(self, items: list[str], path: tuple[PathItem, ...],
                 ipv6: bool = False) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        """items as networks (host bits refused, with the network meant as a hint); IPv6 ones
        only where ipv6 (the kind's data path handles them), never v4-mapped (such a
        connection travels as IPv4: the IPv4 prefix is the one that matches)."""
        out: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        parse = ipaddress.ip_network if ipv6 else ipaddress.IPv4Network
        what = "an IPv4 or IPv6 prefix" if ipv6 else "an IPv4 prefix"
        for i, d in enumerate(items):
            try:
                net = parse(d, strict=True)
            except ValueError as exc:
                hint = ""
                with suppress(ValueError):
                    hint = f"; did you mean {parse(d, strict=False)}?"
                self.problem((*path, i), f"{d[:60]!r} is not {what} ({exc}){hint}")
                continue
            mapped = getattr(net.network_address, "ipv4_mapped", None)
            if mapped is not None and net.prefixlen >= 96:
                self.problem((*path, i), f"{d!r} is IPv4-mapped: such connections travel as "
                                         f"IPv4; write {mapped}/{net.prefixlen - 96}")
                continue
            out.append(net)
        return out

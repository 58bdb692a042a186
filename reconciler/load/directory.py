"""Desired state from a directory: every file parsed, validated, cross-checked, keys resolved.

All problems of all files are collected; any error makes the whole directory invalid (all or
nothing). Line numbers are looked up only for the problems that are reported.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reconciler.core import checks
from reconciler.core.drift import POLICIES
from reconciler.core.errors import InvalidDesiredState, Location, Problem, Severity, shown
from reconciler.core.findings import Finding
from reconciler.core.model import PROTOCOLS, Endpoint, Origin, PortRange, Resource, unicast_problem
from reconciler.core.state import DesiredState
from reconciler.gue.model import DEFAULT_GUE_PORT, Interface, KeySource, Service, Tunnel
from reconciler.intercept.model import Intercept, InterceptRule, Routing
from reconciler.load import parallel
from reconciler.load.filecache import FileCache
from reconciler.load.locate import PathItem, locate
from reconciler.load.schema import MAX_EXPLAINED, Schemas
from reconciler.load.secrets import (
    KEY_LEN,
    KeyUnavailable,
    Secret,
    decode_key,
    read_key_env,
    read_key_file,
)
from reconciler.load.source import Document, parse, read, scan
from reconciler.steering.model import HealthCheck, Proxy
from reconciler.tproxy.model import TrafficMatch, TransparentProxy

MAX_WARNINGS_LOCATED = 20
MAX_LOCATED = 100  # errors given a line and column; the rest are counted
DEFAULT_PRIORITY = 49152
DRIFT_ANNOTATION = "bpfsync.dev/drift"
UNREAD_KEY = Secret(bytes(KEY_LEN))  # stands for a key not read (validate --no-secrets)


class _Locator:
    def __init__(self) -> None:
        self.texts: dict[str, str] = {}

    def location(self, origin: Origin | None, path: tuple[PathItem, ...], at_key: bool) -> Location:
        if origin is None:
            return Location("<desired state>")
        text = self.texts.get(origin.file)
        if text is None:  # loaded in a worker process: read it again, only to locate
            try:
                text = self.texts[origin.file] = Path(origin.file).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError):
                return Location(origin.file)
        return locate(origin.file, text, origin.index, path, key=at_key)

    def problem(self, f: Finding) -> Problem:
        return Problem(
            self.location(f.origin, f.path, f.at_key), f.message, f.resource,
            ".".join(map(str, f.path)) or None, f.severity,
            tuple(self.location(o, p, False) for o, p in f.related))


def _endpoint(data: dict[str, Any], default_port: int | None = None) -> Endpoint:
    return Endpoint(data["address"], data.get("port", default_port))


class KeyCache(dict[tuple[str, str], Secret]):
    """Keys read once per load, however many Services use them; remembers which key files
    were consulted, so that a cached file is re-checked when one of its key files changes."""

    def __init__(self, read: bool = True) -> None:
        super().__init__()
        self.read = read
        self.touched: set[tuple[str, str]] = set()

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


def _interface(name: str, spec: dict[str, Any], origin: Origin) -> Interface:
    return Interface(name, spec["device"], spec.get("netns"), spec["role"],
                     spec.get("replies", "tunnel") == "tunnel", spec.get("ingress", True),
                     spec.get("egress", True), spec.get("fibLookup", False),
                     spec.get("priority", DEFAULT_PRIORITY), origin)


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


Report = Callable[[tuple[PathItem, ...], str], None]  # a field problem: (path, message)


class _SpecProblems:
    """Reports problems of a document's spec fields; bad once one was reported."""

    def __init__(self, origin: Origin, ref: str, findings: list[Finding]) -> None:
        self.origin, self.ref, self.findings = origin, ref, findings
        self.bad = False

    def __call__(self, path: tuple[PathItem, ...], message: str) -> None:
        self.bad = True
        self.findings.append(Finding(self.origin, ("spec", *path), message, self.ref))


def _port_ranges(items: list[int | str], problem: Report,
                 path: tuple[PathItem, ...]) -> list[PortRange]:
    ports = []
    for i, p in enumerate(items):
        if isinstance(p, int):
            ports.append(PortRange(p, p))
        elif p == "*":
            ports.append(PortRange(0, 0))
        else:
            first, last = map(int, p.split("-"))
            if not 1 <= first <= last <= 65535:
                problem((*path, i), f"port range {p!r} must be FIRST-LAST with "
                                    f"1 <= FIRST <= LAST <= 65535")
            else:
                ports.append(PortRange(first, last))
    return ports


def _prefixes(items: list[str], problem: Report,
              path: tuple[PathItem, ...]) -> list[ipaddress.IPv4Network]:
    out = []
    for i, d in enumerate(items):
        try:
            out.append(ipaddress.IPv4Network(d, strict=True))
        except ValueError as exc:
            hint = ""
            with suppress(ValueError):
                hint = f"; did you mean {ipaddress.IPv4Network(d, strict=False)}?"
            problem((*path, i), f"{d!r} is not an IPv4 prefix ({exc}){hint}")
    return out


def _proxy(name: str, spec: dict[str, Any], origin: Origin,
           findings: list[Finding]) -> Proxy | None:
    problem = _SpecProblems(origin, f"Proxy/{name}", findings)
    ports = _port_ranges(spec.get("ports", []), problem, ("ports",))
    destinations = _prefixes(spec.get("destinations", ["0.0.0.0/0"]), problem,
                             ("destinations",))
    if ports and not spec.get("backends"):
        problem(("ports",), "a Proxy that steers ports needs backends: without them it would "
                            "connect to the steered destination itself and be steered back")
    for i, b in enumerate(spec.get("backends", [])):
        host, _, port = b.rpartition(":")
        if not 1 <= int(port) <= 65535:
            problem(("backends", i), f"backend {b!r}: port must be 1-65535")
        elif host.replace(".", "").isdigit() and unicast_problem(host):
            problem(("backends", i), f"backend {b!r}: {unicast_problem(host)}")
    hc = spec.get("healthCheck", {})
    health = HealthCheck(hc.get("enabled", True), _ms(hc.get("intervalSeconds", 2)),
                         _ms(hc.get("timeoutSeconds", 1)), hc.get("rise", 2), hc.get("fall", 3))
    if health.timeout_ms > health.interval_ms:
        problem(("healthCheck", "timeoutSeconds"), "the check timeout must not exceed its "
                                                   "interval")
    if problem.bad:
        return None
    drain = spec.get("drainTimeoutSeconds")
    return Proxy(name, spec["id"], spec.get("netns"), tuple(sorted(set(ports))),
                 tuple(sorted(set(destinations))), tuple(spec.get("backends", [])),
                 spec.get("balance", "round-robin"), health,
                 _ms(spec.get("connectTimeoutSeconds", 5)), _ms(spec.get("idleTimeoutSeconds", 300)),
                 None if drain is None else round(drain * 1000), spec.get("maxConnections", 10000),
                 _ms(spec.get("resolveSeconds", 30)), origin)


def _transparent(name: str, spec: dict[str, Any], origin: Origin,
                 findings: list[Finding]) -> TransparentProxy | None:
    problem = _SpecProblems(origin, f"TransparentProxy/{name}", findings)
    def matches(field: str) -> tuple[TrafficMatch, ...]:
        out = []
        for i, m in enumerate(spec.get(field, [])):
            out.append(TrafficMatch(
                tuple(sorted(set(_prefixes(m.get("destinations", ["0.0.0.0/0"]), problem,
                                           (field, i, "destinations"))))),
                tuple(sorted(set(_port_ranges(m.get("ports", ["*"]), problem,
                                              (field, i, "ports")))))))
        return tuple(out)

    intercept, exclude = matches("intercept"), matches("exclude")
    for path, cgroup in (("cgroup",), spec["cgroup"]), *(
            (("excludeCgroups", i), c) for i, c in enumerate(spec.get("excludeCgroups", []))):
        if {".", ".."} & set(cgroup.split("/")):
            problem(path, f"{cgroup!r}: '.' and '..' are not cgroup names; write the path "
                          f"as /proc/PID/cgroup shows it")
    if problem.bad:
        return None
    return TransparentProxy(name, spec["id"], spec["cgroup"], spec["proxy"], intercept, exclude,
                            tuple(spec.get("excludeCgroups", [])),
                            spec.get("whenProxyDown", "refuse") == "direct", origin,
                            spec.get("ipv6", "direct") == "refuse")


def _intercept(name: str, spec: dict[str, Any], origin: Origin,
               findings: list[Finding]) -> Intercept | None:
    problem = _SpecProblems(origin, f"Intercept/{name}", findings)
    rules = []
    for i, r in enumerate(spec["rules"]):
        path = ("rules", i)
        proto = r.get("protocol", "tcp")
        if r["action"] == "redirect" and proto != "tcp":
            problem((*path, "protocol"), "redirect takes TCP connections only (protocol: tcp)")
        rules.append(InterceptRule(
            r["priority"], r["action"],
            tuple(sorted(set(_prefixes(r.get("destinations", ["0.0.0.0/0"]), problem,
                                       (*path, "destinations"))))),
            tuple(sorted(set(_port_ranges(r.get("ports", ["*"]), problem, (*path, "ports"))))),
            tuple(PROTOCOLS.values()) if proto == "any" else (PROTOCOLS[proto],),
            tuple(sorted(set(_port_ranges(r.get("sourcePorts", []), problem,
                                          (*path, "sourcePorts"))))),
            r.get("proxy")))
        if any(p.wildcard for p in rules[-1].source_ports):
            problem((*path, "sourcePorts"), "\"*\" is the default of sourcePorts; leave it out")
    seen: dict[int, int] = {}
    for i, r in enumerate(spec["rules"]):
        if r["priority"] in seen:
            problem(("rules", i, "priority"), f"priority {r['priority']} is also rule "
                                              f"{seen[r['priority']]}'s: the order would be "
                                              f"ambiguous")
        seen.setdefault(r["priority"], i)
    if spec["device"] == "lo":
        problem(("device",), "lo cannot be intercepted: redirected connections are delivered "
                             "through it")
    rt = spec.get("routing", {})
    routing = Routing(rt.get("mark", 1), rt.get("proxyMark", 2), rt.get("table", 100),
                      rt.get("rulePriority", 100))
    if routing.mark & routing.proxy_mark:
        problem(("routing", "proxyMark"), f"proxyMark {routing.proxy_mark:#x} shares bits with "
                                          f"mark {routing.mark:#x}: the data path's own "
                                          f"connections would be routed to lo")
    if 253 <= routing.table <= 255:
        problem(("routing", "table"), f"table {routing.table} is one of the kernel's "
                                      f"(default 253, main 254, local 255)")
    if problem.bad:
        return None
    return Intercept(name, spec["id"], spec["device"], spec.get("netns"),
                     spec.get("priority", DEFAULT_PRIORITY),
                     tuple(sorted(rules, key=lambda r: r.priority)), routing, origin)


def _build(doc: Document, origin: Origin, findings: list[Finding],
           keys: KeyCache) -> Resource | None:
    """Typed resource from a schema-valid document; field problems go to findings."""
    data = doc.data
    name = data["metadata"]["name"]
    kind = data["kind"]
    spec = data["spec"]
    ref = f"{kind}/{name}"
    bad = False

    def check_address(path: tuple[PathItem, ...], address: str) -> None:
        nonlocal bad
        why = unicast_problem(address)
        if why:
            bad = True
            findings.append(Finding(origin, path, why, ref))

    def resolve_key(field: str = "key") -> tuple[Secret | None, KeySource]:
        nonlocal bad
        key, source, key_problem = _resolve_key(spec, doc, keys, field)
        key_path: tuple[PathItem, ...] = ("spec", field) if source.kind == "inline" else (
            "spec", f"{field}From", source.kind)
        if key_problem:
            findings.append(Finding(origin, key_path, key_problem, ref))
            bad = True
        elif source.kind == "inline":
            findings.append(Finding(
                origin, key_path, "a secret sits inline in the repository; use keyFrom "
                "(file or env) instead", ref, Severity.WARNING))
        return key, source

    def resolve_next(key: Secret | None) -> Secret | None:
        """The second accepted key, if given; the same key twice is a mistake worth a word."""
        nonlocal bad
        if "nextKey" not in spec and "nextKeyFrom" not in spec:
            return None
        if key is None:
            bad = True
            findings.append(Finding(origin, ("spec",), "nextKey needs a key: it is accepted "
                                    "beside the key while keys rotate", ref))
            return None
        nxt, source = resolve_key("nextKey")
        if nxt is not None and nxt == key and nxt is not UNREAD_KEY:
            findings.append(Finding(origin, ("spec", "nextKey" if source.kind == "inline" else
                                             "nextKeyFrom"),
                                    "nextKey is the same key as key: nothing rotates",
                                    ref, Severity.WARNING))
        return nxt

    if kind == "Interface":
        return _interface(name, spec, origin)
    if kind == "Proxy":
        return _proxy(name, spec, origin, findings)
    if kind == "TransparentProxy":
        return _transparent(name, spec, origin, findings)
    if kind == "Intercept":
        return _intercept(name, spec, origin, findings)
    if kind == "Tunnel":
        local = _endpoint(spec["local"], DEFAULT_GUE_PORT)
        check_address(("spec", "local", "address"), local.address)
        remote = None
        if spec["remote"] != "learn":
            remote = _endpoint(spec["remote"], DEFAULT_GUE_PORT)
            check_address(("spec", "remote", "address"), remote.address)
        ping_ms = None
        if "ping" in spec:
            ping_ms = round(1000 * spec["ping"].get("intervalSeconds", 10))
            if remote is None:
                bad = True
                findings.append(Finding(origin, ("spec", "ping"), "a tunnel that learns its "
                                        "remote cannot send pings; ping needs a fixed remote",
                                        ref))
        tkey, tsource = (None, None)
        if "key" in spec or "keyFrom" in spec:
            tkey, tsource = resolve_key()
        elif remote is None or ping_ms is not None:
            bad = True
            why = "learn its remote" if remote is None else "send pings"
            findings.append(Finding(origin, ("spec",), f"a tunnel must have a key (keyFrom) to "
                                    f"{why}: pings are authenticated with it", ref))
        tnext = resolve_next(tkey)
        if bad:
            return None
        return Tunnel(name, spec["id"], local, remote, origin, tkey, tsource, ping_ms, tnext)

    proxy, backend = _endpoint(spec["proxy"]), _endpoint(spec["backend"])
    check_address(("spec", "proxy", "address"), proxy.address)
    check_address(("spec", "backend", "address"), backend.address)
    key, source = resolve_key()
    nxt = resolve_next(key)
    if bad or key is None:
        return None
    return Service(name, spec["groupId"], spec["serviceId"], spec.get("protocol", "tcp"), proxy,
                   backend, spec["tunnel"], key, source, origin, nxt)


@dataclass(slots=True)
class DocResult:
    origin: Origin
    ref: str | None  # "Kind/name" when the document has a readable kind and name
    resource: Resource | None  # None: invalid
    findings: list[Finding]
    drift: str | None = None  # the resource's drift policy annotation, if any


@dataclass(slots=True)
class FileResult:
    file: str
    problems: list[Problem]  # read and parse problems, already located
    docs: list[DocResult]
    text: str | None = None  # kept when loading in this process, for locating findings
    key_files: tuple[str, ...] = ()  # key files its Services read (the cache watches them)


def check_document(doc: Document, schemas: Schemas, keys: KeyCache,
                   explain: bool = True) -> DocResult:
    """Schema-check and build one document; cross-document checks come later.
    explain=False: an invalid document is reported as one error, not field by field."""
    origin = Origin(doc.file, doc.index)
    data = doc.data
    name = None
    if isinstance(data, dict) and isinstance(data.get("metadata"), dict):
        name = data["metadata"].get("name")
    ref = (f"{data['kind']}/{name}" if isinstance(data, dict) and isinstance(name, str)
           and isinstance(data.get("kind"), str) else None)
    errors = schemas.validate(data, explain)
    if errors:
        return DocResult(origin, ref, None, [
            Finding(origin, e.path, e.message, ref, at_key=e.at_key) for e in errors])
    findings: list[Finding] = []
    drift = data["metadata"].get("annotations", {}).get(DRIFT_ANNOTATION)
    if drift is not None and drift not in POLICIES:
        findings.append(Finding(origin, ("metadata", "annotations", DRIFT_ANNOTATION),
                                f"{shown(drift)} is not a drift policy; use one of "
                                f"{', '.join(POLICIES)}", ref))
    return DocResult(origin, ref, _build(doc, origin, findings, keys), findings, drift)


def load_files(paths: Sequence[Path], schemas: Schemas, keep_text: bool = True,
               shown_as: str | None = None, read_keys: bool = True) -> list[FileResult]:
    """shown_as: the name problems and relative key files use instead of the path (a
    candidate file checked in place of the file it will become). read_keys=False: keyFrom
    files and variables are not read (validation where the hosts' secrets are not)."""
    keys = KeyCache(read_keys)
    out = []
    explained = 0  # invalid documents explained so far (schema.MAX_EXPLAINED at most)
    for path in paths:
        source, problem = read(path, shown_as)
        if problem:
            out.append(FileResult(shown_as or str(path), [problem], []))
            continue
        assert source is not None
        docs, problems = parse(source)
        keys.touched = set()
        checked = []
        for d in docs:
            result = check_document(d, schemas, keys, explained < MAX_EXPLAINED)
            explained += result.resource is None
            checked.append(result)
        out.append(FileResult(source.display, problems, checked,
                              source.text if keep_text else None,
                              tuple(sorted(p for kind, p in keys.touched if kind == "file"))))
    return out


def assemble(results: Iterable[FileResult]) -> tuple[DesiredState, set[str], list[Finding]]:
    """The desired state from per-file results, in file order: a resource defined twice is
    reported at its second place. Names of invalid resources are returned so that
    cross-checks do not pile consequential errors (a dangling reference) on top."""
    state = DesiredState()
    invalid: set[str] = set()
    first_seen: dict[str, Origin] = {}
    findings: list[Finding] = []
    for file in results:
        for doc in file.docs:
            findings.extend(doc.findings)
            ref = doc.ref
            if ref is not None:
                if ref in first_seen:
                    findings.append(Finding(
                        doc.origin, ("metadata", "name"), f"{ref} is defined twice", ref,
                        related=((first_seen[ref], ("metadata", "name")),)))
                    continue
                first_seen[ref] = doc.origin
            if doc.resource is None:
                if ref:
                    invalid.add(ref)
                continue
            if doc.drift is not None and ref is not None:
                state.drift[ref] = doc.drift
            if isinstance(doc.resource, Tunnel):
                state.tunnels[doc.resource.name] = doc.resource
            elif isinstance(doc.resource, Interface):
                state.interfaces[doc.resource.name] = doc.resource
            elif isinstance(doc.resource, Proxy):
                state.proxies[doc.resource.name] = doc.resource
            elif isinstance(doc.resource, TransparentProxy):
                state.transparent[doc.resource.name] = doc.resource
            elif isinstance(doc.resource, Intercept):
                state.intercepts[doc.resource.name] = doc.resource
            else:
                state.services[doc.resource.name] = doc.resource
    return state, invalid, findings


def load_paths(files: list[Path], schemas: Schemas, read_keys: bool = True) -> list[FileResult]:
    return (parallel.load_files(files, schemas, read_keys) if parallel.worth_it(files)
            else load_files(files, schemas, read_keys=read_keys))


def load_directory(root: Path, schemas: Schemas | None = None,
                   cache: FileCache | None = None, read_keys: bool = True) -> DesiredState:
    """Load and check a whole directory; raises InvalidDesiredState listing every error.
    With a cache (the daemon's), only files whose content changed are parsed again;
    cross-checks always run over the whole directory."""
    schemas = schemas or Schemas()
    files, scan_problems = scan(root)
    results = (cache.load(files, lambda todo: load_paths(todo, schemas, read_keys)) if cache
               else load_paths(files, schemas, read_keys))
    return check_results(root, results, scan_problems)


def check_results(root: Path, results: list[FileResult],
                  problems: Sequence[Problem] = ()) -> DesiredState:
    """The desired state of a directory's per-file results (in file order): cross-checks,
    problems located; raises InvalidDesiredState listing every error."""
    locator = _Locator()
    problems = list(problems)
    for r in results:
        problems.extend(r.problems)
        if r.text is not None:
            locator.texts[r.file] = r.text
    state, invalid, findings = assemble(results)
    state.files = len(results)
    findings.extend(checks.cross_check(state, invalid))
    error_findings = [f for f in findings if f.severity is Severity.ERROR]
    errors = problems + [locator.problem(f) for f in error_findings[:MAX_LOCATED]]
    if len(error_findings) > MAX_LOCATED:  # locating costs a second parse of each file
        errors.append(Problem(Location(str(root)), f"... and {len(error_findings) - MAX_LOCATED:,}"
                              " more errors, not located (fix the ones above first)"))
    warnings = [f for f in findings if f.severity is Severity.WARNING]
    state.warnings = [locator.problem(f) for f in warnings[:MAX_WARNINGS_LOCATED]]
    if len(warnings) > MAX_WARNINGS_LOCATED:
        state.warnings.append(Problem(
            Location(str(root)), f"... and {len(warnings) - MAX_WARNINGS_LOCATED} more warnings",
            severity=Severity.WARNING))
    if errors:
        raise InvalidDesiredState(errors + state.warnings)
    return state

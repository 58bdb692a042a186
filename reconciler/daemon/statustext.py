"""The daemon's status document as text (`bpfsync status`); the document itself is made by
daemon/service.py and served by daemon/status.py."""

from __future__ import annotations

import time
from typing import Any

from reconciler.render import columns


def ago(when: float | None) -> str:
    if not when:
        return "never"
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(when))
    return f"{stamp} ({max(0, round(time.time() - when))}s ago)"


def status_text(doc: dict[str, Any]) -> str:
    d, last, applied = doc["daemon"], doc["lastReconcile"], doc["lastApplied"]
    verb = "following the git clone at" if doc.get("git") else "watching"
    lines = [f"daemon:          pid {d['pid']}, {verb} {d['directory']} "
             f"(pin root {d['pinRoot']}; resync {d['resyncSeconds']:g}s, drift {d['drift']})"]
    if last:
        lines.append(f"last reconcile:  {ago(last['time'])}: {last['result']} "
                     f"({last['trigger']}, {last['durationMs']} ms)")
    if applied:
        rev = applied.get("revision")
        at = (f"commit {rev['commit'][:12]}{' + uncommitted changes' if rev['dirty'] else ''}"
              if rev else "not a git work tree")
        lines.append(f"last applied:    {ago(applied['time'])}, {at}")
    else:
        lines.append("last applied:    never")
    git = doc.get("git")
    if git:
        head, applied = git["head"] or "", git["applied"] or ""
        line = (f"git:             {git['upstream']} -> {git['clone']} ({git['directory']}): "
                f"head {head[:12] or '-'}")
        line += (", applied" if head and head == applied else
                 f", applied {applied[:12] or 'nothing yet'}")
        lines.append(line + f"; fetched {ago(git['lastFetch'])}")
        if git["error"]:
            lines.append(f"  git: {git['error']}")
    lines.append(f"errors:          {doc.get('errorCount', len(doc['errors'])) or 'none'}"
                 + (" (nothing is applied until they are fixed; the last good state stays)"
                    if doc["errors"] else ""))
    lines += [f"  {e}" for e in doc["errors"]]
    if doc["resources"]:
        rows = [("  KIND", "SYNCED", "OUT OF SYNC", "ERROR")]
        rows += [(f"  {kind}", str(c["Synced"]), str(c["OutOfSync"]), str(c["Error"]))
                 for kind, c in doc["resources"].items()]
        lines += ["resources:", columns(rows)]
    for o in doc["outOfSync"]:
        lines.append(f"  out of sync: {o['resource']}: {'; '.join(o['reasons'])}")
    dr = doc["drift"]
    n = dr["correctedOperations"]
    lines.append(f"drift corrected: {n} operation{'' if n == 1 else 's'}"
                 + (f", last {ago(dr['recentCorrections'][-1]['time'])}"
                    if dr["recentCorrections"] else ""))
    dp = doc["dataPath"]
    line = f"data path:       {dp['state']}"
    if dp.get("workerPid"):
        line += f" (worker pid {dp['workerPid']}"
        line += f", netns {dp['netns']}" if dp.get("netns") else ""
        line += ")"
    if dp.get("restarts"):
        line += f", {dp['restarts']} restarts, last {dp.get('lastExit')}"
    if dp.get("error"):
        line += f": {dp['error']}"
    lines.append(line)
    for tun in doc["tunnels"]:
        learned = tun["learned"]
        how = ("fixed remote" if tun["remote"] != "learn" else
               f"learned {learned['address']}:{learned['port']} {learned['ageSeconds']}s ago"
               if learned else "remote not learned yet")
        lines.append(f"  tunnel {tun['name']}: {how}"
                     + ("" if tun["healthy"] else " (not fresh)"))
    for p in doc["proxies"]:
        to = ("to original destinations" if p.get("originalDestinations") else
              f"{p['healthy']}/{len(p['backends'])} backends healthy")
        lines.append(f"  proxy {p['name']}: {to}, {p['active']} connections")
    tps = doc.get("transparentProxies") or {}
    for tp in tps.get("resources", []):
        c = tp["counters"]
        lines.append(f"  transparent proxy {tp['name']} (cgroup {tp['cgroup']} -> proxy "
                     f"{tp['proxy']}): {c['intercepted']} intercepted, {c['excluded']} excluded, "
                     f"{c['no_proxy']} with no proxy, {c['track_full']} untracked")
    if tps:
        tr = tps["tracking"]
        lines.append(f"  intercepted connections tracked: {tr['entries']}/{tr['capacity']}")
    for ic in doc.get("intercepts") or []:
        c = ic["counters"]
        lines.append(f"  intercept {ic['name']} ({ic['device']}, {ic['rules']} rules): "
                     f"{c['redirected']} redirected, {c['dropped']} dropped, {c['passed']} "
                     f"passed, {c['unmatched']} unmatched; {c['assigned']} assigned, "
                     f"{c['no_listener']} with no listener")
    lines += [f"warning: {w}" for w in doc["warnings"]]
    return "\n".join(lines)


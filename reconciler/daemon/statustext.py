"""The daemon's status document as text (`bpfsync status`); the document itself is made by
daemon/service.py and served by daemon/status.py."""

from __future__ import annotations

import time
from typing import Any

from reconciler.core import registry
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
    if doc.get("heldOff"):
        lines.append(f"held:            {doc['heldOff']}")
    if doc.get("suspendedSince"):
        until = " or a change of the files (after a rollback)" if doc.get(
            "suspendedUntilChange") else ""
        lines.append(f"suspended:       since {ago(doc['suspendedSince'])}: changes and drift "
                     f"are reported, not applied (until `bpfsync resume`{until})")
    c = doc.get("confirmation")
    if c:
        rule = (f"changes revert unless confirmed within {c['withinSeconds']:g} s"
                if c["withinSeconds"] is not None else "as resources ask (annotations)")
        lines.append(f"confirmation:    {rule}" + (f"; {c['pending']}" if c["pending"] else ""))
        if c["rejected"]:
            lines.append(f"  rejected: {c['rejected']}")
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
    pids = [p for p in dp.get("workerPids", [dp.get("workerPid")]) if p]
    if pids:
        total = len(dp.get("workerPids", pids))
        line += (f" (worker pid {pids[0]}" if total == 1 else
                 f" ({len(pids)} of {total} workers, pids {', '.join(map(str, pids))}")
        if total > 1 and isinstance(dp.get("workersAccepting"), int):  # the rest stand by
            line += f", {dp['workersAccepting']} accepting"
        line += f", netns {dp['netns']}" if dp.get("netns") else ""
        line += ")"
    if dp.get("restarts"):
        line += f", {dp['restarts']} restarts, last {dp.get('lastExit')}"
    if dp.get("error"):
        line += f": {dp['error']}"
    lines.append(line)
    for capability in registry.CAPABILITIES:
        if capability.status_lines is not None:
            lines += capability.status_lines(doc)
    lines += [f"warning: {w}" for w in doc["warnings"]]
    return "\n".join(lines)


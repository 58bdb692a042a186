"""Metrics, alert rules, dashboard and journald logs, checked with the ecosystem's own tools:
promtool (installed into the virtualenv by packaging/install.sh for the tests) and
prometheus_client's parser. The kernel test in test_daemon.py scrapes a running daemon."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from reconciler.daemon import logs, metrics

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "packaging" / "monitoring"

# A report with every section filled, as status_document builds it.
REPORT: dict[str, Any] = {
    "metrics": {"reconciles": {"applied": 2, "in-sync": 5, "failed": 1},
                "operations": {"create": 11, "attach": 1}, "lastReconcileSeconds": 0.04},
    "errors": [], "errorCount": 0, "lastApplied": {"time": 1.8e9},
    "resources": {"Service": {"Synced": 2, "OutOfSync": 0, "Error": 0}},
    "drift": {"pending": 1, "correctedByKind": {"Service": 3}},
    "maps": {"ti_verify": {"entries": 2, "capacity": 131072}},
    "dataPath": {"state": "running", "restarts": 1, "pingsSent": 7, "workersAccepting": 1,
                 "descriptors": {"limit": 1024, "open": 12, "needed": 30, "exhausted": 0}},
    "tunnels": [{"name": "t2", "remote": "learn", "healthy": True,
                 "learned": {"address": "198.51.100.2", "port": 6080, "ageSeconds": 3.5}},
                {"name": "t3", "remote": "learn", "healthy": False, "learned": None}],
    "proxies": [{"name": "web", "active": 1, "accepted": 9, "bytesIn": 100, "bytesOut": 2000,
                 "backends": [{"address": "192.0.2.10:8080", "backend": "192.0.2.10:8080",
                               "healthy": True}]}],
    "transparentProxies": {"tracking": {"entries": 3, "capacity": 65536},
                           "resources": [{"name": "app", "counters": {"redirected": 4}}]},
    "intercepts": [{"name": "mail", "counters": {"redirected": 2}}],
}


def exposition() -> str:
    histogram = metrics.reconcile_histogram()
    histogram.labels("files").observe(0.03)
    registry = metrics.registry_for(lambda: REPORT, lambda: {"ti_rx_packets": 5}, histogram)
    return generate_latest(registry).decode()


def promtool() -> str:
    """promtool beside this Python (install.sh puts it into the virtualenv) or on PATH;
    required where the kernel tests are (CI), else the test is skipped."""
    for candidate in (Path(sys.executable).parent / "promtool", shutil.which("promtool")):
        if candidate and os.access(candidate, os.X_OK):
            return str(candidate)
    if os.environ.get("BPFSYNC_REQUIRE_KERNEL") == "1":
        pytest.fail("promtool is missing: run packaging/install.sh (test extras)")
    pytest.skip("promtool not installed")


def exposed_types(text: str) -> dict[str, str]:
    return {f.name + ("_total" if f.type == "counter" else ""): f.type
            for f in text_string_to_metric_families(text)}


def test_every_catalog_family_is_exposed_with_its_type_and_labels() -> None:
    text = exposition()
    types = exposed_types(text)
    for doc in metrics.CATALOG:
        assert types.get(doc.name) == doc.type, doc.name
    for family in text_string_to_metric_families(text):
        name = family.name + ("_total" if family.type == "counter" else "")
        if name in metrics.BY_NAME:
            for sample in family.samples:
                labels = set(sample.labels) - {"le"}
                assert labels == set(metrics.BY_NAME[name].labels), (name, sample)
    # the standard collectors of the daemon's own registry
    assert {"process_resident_memory_bytes", "process_cpu_seconds_total", "python_info",
            "python_gc_collections_total"} <= {s.name for f in text_string_to_metric_families(
                text) for s in f.samples}


def test_the_exposition_is_promtool_clean() -> None:
    r = subprocess.run([promtool(), "check", "metrics"], input=exposition(), text=True,
                       capture_output=True, check=False)
    assert r.returncode == 0 and not r.stdout.strip() and not r.stderr.strip(), r


def test_the_readme_table_is_the_catalog() -> None:
    readme = (ROOT / "README.md").read_text()
    rows = re.findall(r"^\| `(bpfsync_\w+)` \| (\w+) \| ([^|]*) \|", readme, re.M)
    documented = {name: (kind, tuple(re.findall(r"`(\w+)`", labels)))
                  for name, kind, labels in rows}
    assert documented == {m.name: (m.type, m.labels) for m in metrics.CATALOG}


def test_alert_rules_check_and_pass_their_unit_tests() -> None:
    tool = promtool()
    for args in (["check", "rules", "alerts.yml"], ["test", "rules", "alerts.test.yml"]):
        r = subprocess.run([tool, *args], cwd=MONITORING, capture_output=True, text=True,
                           check=False)
        assert r.returncode == 0, r.stdout + r.stderr
    tested = {t["alertname"] for case in yaml.safe_load(
        (MONITORING / "alerts.test.yml").read_text())["tests"]
        for t in case["alert_rule_test"] if t.get("exp_alerts")}
    rules = {r["alert"] for g in yaml.safe_load((MONITORING / "alerts.yml").read_text())[
        "groups"] for r in g["rules"]}
    assert tested == rules  # every alert is seen firing by a test


def _metric_names(expr: str) -> set[str]:
    names = set(re.findall(r"\b((?:bpfsync|process|python)_[a-z_]+)\b", expr))
    return {re.sub(r"_(bucket|count|sum)$", "", n) if n.startswith(
        "bpfsync_reconcile_duration") else n for n in names}


def used_metrics() -> set[str]:
    """Every metric the dashboard's queries and the alert rules name."""
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    exprs.append(dashboard["templating"]["list"][1]["query"]["query"])
    rules = yaml.safe_load((MONITORING / "alerts.yml").read_text())
    exprs += [r["expr"] for g in rules["groups"] for r in g["rules"]]
    return set().union(*map(_metric_names, exprs))


def exposed_names(text: str) -> set[str]:
    return ({s.name for f in text_string_to_metric_families(text) for s in f.samples}
            | set(exposed_types(text)))


def test_dashboard_and_alerts_use_only_exposed_metrics() -> None:
    exposed = exposed_names(exposition())
    used = used_metrics()
    assert used and used <= exposed, sorted(used - exposed)
    # the dashboard shows every bpfsync family but the build info (it picks instances)
    assert {m.name for m in metrics.CATALOG} - used <= {"bpfsync_build_info"} | {
        m.name for m in metrics.CATALOG if m.name in (
            "bpfsync_map_entries", "bpfsync_map_capacity", "bpfsync_proxy_backend_healthy",
            "bpfsync_tunnels_learned", "bpfsync_last_reconcile_duration_seconds")}


def _log_lines(tmp_path: Path, fmt: str, journal: bool) -> list[str]:
    """What the daemon's log set-up writes to a stderr that is (or is not) the journal."""
    out = tmp_path / f"stderr-{fmt}-{journal}"
    with out.open("w") as f:
        st = os.fstat(f.fileno())
        inode = st.st_ino + (0 if journal else 1)
        env = {**os.environ, "JOURNAL_STREAM": f"{st.st_dev}:{inode}", "LOG_FORMAT": fmt}
        code = ("import logging, os; from reconciler.daemon import logs;"
                "logs.setup(os.environ['LOG_FORMAT'], 'debug');"
                "log = logging.getLogger('bpfsync.daemon'); log.debug('d'); log.info('i');"
                "log.warning('w'); log.error('e', extra={'fields': {'trigger': 'files'}})")
        subprocess.run([sys.executable, "-c", code], stderr=f, env=env, check=True, cwd=ROOT)
    return out.read_text().splitlines()


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_journald_gets_priorities_and_a_terminal_does_not(tmp_path: Path, fmt: str) -> None:
    lines = _log_lines(tmp_path, fmt, journal=True)
    assert [line[:3] for line in lines] == ["<7>", "<6>", "<4>", "<3>"]
    if fmt == "json":
        docs = [json.loads(line[3:]) for line in lines]
        assert [d["level"] for d in docs] == ["debug", "info", "warning", "error"]
        assert docs[3]["trigger"] == "files" and set(docs[0]) == {"time", "level", "logger",
                                                                   "message"}
    plain = _log_lines(tmp_path, fmt, journal=False)  # inherited, but stderr is elsewhere
    assert len(plain) == 4 and not any(line.startswith("<") for line in plain)


def test_journal_prefix_is_on_every_line_of_a_traceback() -> None:
    formatter = logs.JournalFormatter(logs.TextFormatter())
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord("bpfsync", logging.ERROR, __file__, 1, "failed", None,
                                   sys.exc_info())
    lines = formatter.format(record).splitlines()
    assert len(lines) > 2 and all(line.startswith("<3>") for line in lines)

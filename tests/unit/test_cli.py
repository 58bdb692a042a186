"""The command line's edges: exit codes of usage errors, global options anywhere, pin roots
that do not exist, --version. Run in-process (main(argv)), with the output captured."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.cli.common import EXIT_CHANGES
from reconciler.cli.main import SUBCOMMANDS, main, parse
from reconciler.core import registry

USAGE_ERRORS = [
    ["--bogus", "validate", "x"],
    ["validate"],  # a required argument missing
    ["validate", "x", "--bogus"],
    ["diff", "x", "-o", "yaml"],  # an unknown -o value
    ["diff", "x", "--keep", "Nope"],
    ["apply"],
    ["apply", "x", "--bogus"],
    ["apply", "x", "--confirm-within", "0.5"],  # below a second
    ["apply", "x", "--confirm-within", "soon"],
    ["confirm", "--revert", "--show"],
    ["reconcile", "--timeout", "soon"],
    ["suspend", "now"],
    ["resume", "now"],
    ["history", "-o", "wide"],
    ["rollback", "three"],
    ["get", "nothing"],
    ["get", "all", "-o", "wide-ish"],
    ["status", "-o", "yaml"],
    ["run", "x", "--drift", "sometimes"],
    ["run", "x", "--resync", "soon"],
    ["datapath", "--netns"],
    ["datapath", "--workers", "0"],  # 1 to 64
    ["run", "x", "--datapath-workers", "many"],
    ["destroy", "--yes", "now"],
    ["explain"],
    ["completion", "fish"],
    ["--log-format", "xml", "validate", "x"],
    [],  # no subcommand
    ["frobnicate"],
]


def _exit(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    return int(exc.value.code or 0)


@pytest.mark.parametrize("argv", USAGE_ERRORS, ids=lambda a: " ".join(a) or "(none)")
def test_a_usage_error_exits_1_never_the_2_of_changes_pending(argv: list[str], capsys) -> None:
    assert _exit(argv) == 1 != EXIT_CHANGES
    err = capsys.readouterr().err
    assert "usage: bpfsync" in err and "error:" in err


def test_every_subcommand_is_in_the_table() -> None:
    named = {argv[0] for argv in USAGE_ERRORS if argv and not argv[0].startswith("-")}
    assert {m.__name__.rsplit(".", 1)[1] for m in SUBCOMMANDS if m.__name__ != "reconciler.cli.control"
            } | {"datapath", "reconcile", "suspend", "resume"} <= named


@pytest.mark.parametrize("argv", [
    ["--pin-root", "/sys/fs/bpf/a", "-q", "-v", "--log-format", "json", "diff", "d"],
    ["diff", "d", "--pin-root", "/sys/fs/bpf/a", "-q", "-v", "--log-format", "json"],
    ["-q", "--log-format", "json", "diff", "--pin-root", "/sys/fs/bpf/a", "-v", "d"],
])
def test_global_options_work_before_or_after_the_subcommand(argv: list[str]) -> None:
    args = parse(argv)
    assert (args.pin_root, args.quiet, args.verbose, args.log_format) == (
        "/sys/fs/bpf/a", True, True, "json")


def test_global_options_given_nowhere_take_their_defaults() -> None:
    args = parse(["status"])
    assert (args.pin_root, args.quiet, args.verbose, args.log_format) == (
        None, False, False, "text")
    # a value before the subcommand is not overwritten by the subcommand's default
    assert parse(["--pin-root", "/sys/fs/bpf/b", "status"]).pin_root == "/sys/fs/bpf/b"


def test_version(capsys) -> None:
    assert _exit(["--version"]) == 0
    assert capsys.readouterr().out.startswith("bpfsync ")


def test_a_named_pin_root_that_does_not_exist_is_an_error(tmp_path: Path, capsys,
                                                          monkeypatch) -> None:
    monkeypatch.delenv("BPFSYNC_PIN_ROOT", raising=False)
    missing = tmp_path / "typo"
    for argv in (["get", "all"], ["get", "tunnels", "-o", "json"], ["status"]):
        assert _exit(["--pin-root", str(missing), *argv]) == 1
        assert f"pin root {missing} does not exist" in capsys.readouterr().err
    monkeypatch.setenv("BPFSYNC_PIN_ROOT", str(missing))
    assert _exit(["get", "all"]) == 1


def test_the_default_pin_root_missing_means_nothing_applied_yet(tmp_path: Path, capsys,
                                                               monkeypatch) -> None:
    from reconciler.cli import common

    monkeypatch.delenv("BPFSYNC_PIN_ROOT", raising=False)
    monkeypatch.setattr(common, "DEFAULT_PIN_ROOT", str(tmp_path / "never"))
    assert _exit(["get", "all"]) == 0
    assert "Nothing applied on this host yet" in capsys.readouterr().out
    assert _exit(["status"]) == 1  # no daemon either: said so
    assert "nothing applied on this host yet" in capsys.readouterr().err


def test_validate_json_gives_every_problem_as_an_object(tmp_path: Path, capsys) -> None:
    import json

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "p.yaml").write_text("apiVersion: bpfsync/v1\nkind: Proxy\nmetadata: {name: web}\n"
                                "spec: {id: 5, ports: [99999]}\n")
    good = tmp_path / "good"
    good.mkdir()
    (good / "p.yaml").write_text("apiVersion: bpfsync/v1\nkind: Proxy\nmetadata: {name: web}\n"
                                 "spec: {id: 5}\n")
    assert _exit(["validate", "-o", "json", "--no-secrets", str(good), str(bad)]) == 1
    captured = capsys.readouterr()
    doc = json.loads(captured.out)
    assert captured.err == ""  # everything is in the document
    assert doc["valid"] is False and [r["valid"] for r in doc["results"]] == [True, False]
    assert doc["results"][0]["resources"] == {"Proxy": 1}
    [problem] = doc["results"][1]["problems"]
    assert {k: problem[k] for k in ("file", "line", "kind", "name", "severity")} == {
        "file": str(bad / "p.yaml"), "line": 4, "kind": "Proxy", "name": "web",
        "severity": "error"}
    assert problem["column"] > 1 and problem["path"].startswith("spec.ports")
    assert _exit(["validate", "-o", "json", "--no-secrets", str(good)]) == 0


def test_a_mistyped_bpfsync_annotation_is_refused_with_a_suggestion(tmp_path: Path,
                                                                    capsys) -> None:
    (tmp_path / "p.yaml").write_text(
        "apiVersion: bpfsync/v1\nkind: Proxy\nmetadata:\n  name: web\n  annotations:\n"
        "    bpfsync.dev/drfit: warn\n    example.com/owner: team-a\nspec: {id: 5}\n")
    assert _exit(["validate", "--no-secrets", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert (f"{tmp_path / 'p.yaml'}:6:5: error: Proxy/web: metadata.annotations.bpfsync.dev/drfit:"
            f" unknown annotation 'bpfsync.dev/drfit'; did you mean bpfsync.dev/drift?") in err


def test_an_unreadable_key_file_says_permission_denied(tmp_path: Path, monkeypatch) -> None:
    from reconciler.load import secrets

    key = tmp_path / "k"
    key.write_text("hex:00112233445566778899aabbccddeeff\n")
    key.chmod(0o600)

    def denied(*_args, **_kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(secrets, "open", denied, raising=False)
    with pytest.raises(secrets.KeyUnavailable) as exc:
        secrets.read_key_file(key)
    assert str(exc.value) == f"key file {key}: Permission denied"


def test_plans_print_values_as_yaml_never_as_python_reprs() -> None:
    from reconciler import render
    from reconciler.core.compile import compile_tables
    from reconciler.core.planning import compute_plan
    from reconciler.load.directory import load_directory

    root = Path(__file__).resolve().parents[2] / "examples" / "proxy"
    state = load_directory(root)
    text = render.plan_text(compute_plan(compile_tables(state), {}), str(root), state)
    line = next(x for x in text.splitlines() if "ps_proxy" in x)
    assert "drainTimeoutMs=null" in line and "health={enabled: true, fall: 2" in line
    assert "backends=['192.0.2.11:8080'" in line  # quoted as YAML quotes it
    assert not any(word in line for word in ("None", "True", "False", "{'"))
    assert [render.yaml_text(v) for v in ("null", "123", "eth0.100", [1, None])] == [
        "'null'", "'123'", "eth0.100", "[1, null]"]


def test_apply_without_bcc_creates_nothing(tmp_path: Path, monkeypatch, capsys) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "bcc", None)  # `import bcc` raises ImportError
    d = tmp_path / "d"
    d.mkdir()
    (d / "i.yaml").write_text("apiVersion: bpfsync/v1\nkind: Interface\nmetadata: {name: up}\n"
                              "spec: {device: eth9, role: gateway}\n")
    root = tmp_path / "pins"
    assert _exit(["--pin-root", str(root), "apply", str(d)]) == 1
    assert "BCC is not importable" in capsys.readouterr().err
    assert not root.exists()


def test_explain_a_kind_and_a_nested_field(capsys) -> None:
    assert _exit(["explain", "proxy"]) == 0
    out = capsys.readouterr().out
    assert "KIND:     Proxy" in out and "spec        object (required)" in out
    assert _exit(["explain", "Proxy.spec.healthCheck.intervalSeconds"]) == 0
    out = capsys.readouterr().out
    assert "TYPE:     number" in out and "DEFAULT:  2" in out and "maximum 3600" in out
    assert _exit(["explain", "intercept.spec.rules.ports"]) == 0  # into a list of objects
    assert "list of integer or string" in capsys.readouterr().out
    assert _exit(["explain", "tunnel.spec.keyFrom"]) == 0
    out = capsys.readouterr().out
    assert "FIELDS:" in out and "file" in out and "env" in out
    assert _exit(["explain", "tunnel.spec.nope"]) == 1
    assert "Tunnel.spec has no field 'nope'; its fields: id," in capsys.readouterr().err
    assert _exit(["explain", "proxy.healthCheck"]) == 1  # spec left out, as people do
    assert "(did you mean Proxy.spec.healthCheck?)" in capsys.readouterr().err
    assert _exit(["explain", "gadget"]) == 1


def test_the_editor_schema_is_generated_and_every_example_points_at_it() -> None:
    import json
    import os

    import jsonschema
    import yaml

    from reconciler.load import combined

    repo = Path(__file__).resolve().parents[2]
    assert (repo / "schema" / "bpfsync.json").read_text() == combined.text(), (
        "regenerate: python -m reconciler.load.combined > schema/bpfsync.json")
    schema = json.loads((repo / "schema" / "bpfsync.json").read_text())
    validator = jsonschema.Draft202012Validator(schema)
    for f in sorted((repo / "examples").rglob("*.yaml")):
        first = f.read_text().splitlines()[0]
        rel = os.path.relpath(repo / "schema" / "bpfsync.json", f.parent)
        assert first == f"# yaml-language-server: $schema={rel}", f
        for doc in yaml.safe_load_all(f.read_text()):
            assert not list(validator.iter_errors(doc)), (f, doc["metadata"])
    bad = {"apiVersion": "bpfsync/v1", "kind": "Proxy", "metadata": {"name": "web"},
           "spec": {"id": 99}}
    assert any("99" in e.message for e in validator.iter_errors(bad))  # dispatched by kind


def _completion(shell: str, capsys) -> str:
    assert _exit(["completion", shell]) == 0
    return capsys.readouterr().out


def test_bash_completion_loads_and_completes_commands_kinds_and_flags(tmp_path: Path,
                                                                      capsys) -> None:
    import subprocess

    script = tmp_path / "bpfsync.bash"
    script.write_text(_completion("bash", capsys))

    def complete(*words: str) -> list[str]:
        line = " ".join(words)
        cmd = (f"source {script}; COMP_WORDS=({line}); COMP_CWORD={len(words) - 1}; "
               f"COMP_LINE='{line}'; COMP_POINT={len(line)}; _shtab_bpfsync; "
               f'printf "%s\\n" "${{COMPREPLY[@]}}"')
        out = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, check=True)
        return out.stdout.split()

    assert complete("bpfsync", "de") == ["destroy"]
    assert complete("bpfsync", "get", "inter") == ["interface", "interfaces", "intercept",
                                                   "intercepts"]
    assert complete("bpfsync", "diff", "--o") == ["--output"]
    assert "#compdef bpfsync" in _completion("zsh", capsys)


def test_the_man_page_documents_every_command_and_the_exit_codes(capsys) -> None:
    import shutil
    import subprocess

    page = _completion("man", capsys)
    assert page.startswith(".TH BPFSYNC 1")
    for command in ("validate", "diff", "apply", "get", "status", "run", "destroy", "explain"):
        assert f".SS {command}\n" in page, command
    assert "\\-\\-pin\\-root" in page and ".SH EXIT STATUS" in page
    if shutil.which("man"):
        out = subprocess.run(["man", "-l", "-"], input=page, capture_output=True, text=True,
                             env={"MANWIDTH": "100", "PATH": "/usr/bin:/bin"})
        assert "Never a usage error" in out.stdout, out.stderr


def test_a_long_plan_is_summarised_per_kind_unless_full() -> None:
    from reconciler import render
    from reconciler.core.compile import compile_tables
    from reconciler.core.planning import compute_plan
    from tests.unit.test_plan import state

    s = state(120)
    plan = compute_plan(compile_tables(s), {})
    short = render.plan_text(plan, "d", s)
    assert short.count("\nService/") + short.startswith("Service/") <= render.SHOWN_SUMMARISED
    # 120 services and 2 tunnels: 20 shown, the other 102 counted (3 entries per service:
    # its name, verify and encap entries)
    assert "... and 102 more resources (--full prints every one" in short
    assert "\n  Service: 102 resources; 306 entries to create\n" in short
    # in the order of their data-path entries (tunnels first), not of the names table's keys
    assert short.startswith("Tunnel/t1  (a.yaml)\n")
    assert short.rstrip().endswith(render._summary(plan))
    full = render.plan_text(plan, "d", s, full=True)
    assert "more resources" not in full
    owners = {op.owner for op in plan.operations}
    assert all(f"{o}  (" in full or f"{o}\n" in full for o in owners)


def test_progress_shows_on_a_terminal_only_and_is_erased(monkeypatch) -> None:
    import io
    import time

    from reconciler.cli import progress as p
    from reconciler.core.progress import QUIET

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert p.progress_for(io.StringIO()) is QUIET  # piped: nothing, ever
    monkeypatch.setattr(p, "SHOW_AFTER", 0.0)
    monkeypatch.setattr(p, "EVERY", 0.01)
    tty = Tty()
    shown = p.progress_for(tty)
    shown.phase("writing 300,000 entries", 300_000)
    shown.advance(120_000)
    deadline = time.monotonic() + 30
    while "120,000 (40%)" not in tty.getvalue() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert "writing 300,000 entries: 120,000 (40%)" in tty.getvalue()
    p.close(shown)
    assert tty.getvalue().endswith("\r\x1b[K")  # the line is gone when the phase ends


def test_apply_shows_the_plan_before_it_writes_anything(monkeypatch) -> None:
    from contextlib import nullcontext

    from reconciler import engine
    from reconciler.core.attachments import AttachPlan
    from tests.unit.test_plan import state

    events: list[str] = []

    class Tables:  # holds what is written: the apply reads it back
        capacities = registry.default_capacities()

        def __init__(self) -> None:
            self.content: dict[str, dict[bytes, bytes]] = {}

        def read(self, specs):
            return {s.name: dict(self.content.get(s.name, {})) for s in specs}

        def entries(self, spec):
            return list(self.content.get(spec.name, {}).items())

        def read_keys(self, spec, keys):
            return {k: v for k in keys if (v := self.content.get(spec.name, {}).get(k))}

        def write(self, table, ops, delete):
            events.append("write")
            entries = self.content.setdefault(table, {})
            for op in ops:
                if delete:
                    entries.pop(op.key, None)
                else:
                    entries[op.key] = op.value

        def close(self):
            pass

    tables = Tables()
    monkeypatch.setattr(engine, "open_pinned", lambda root, create, capacity=None: tables)
    monkeypatch.setattr(engine, "host_facts", lambda state, root, create: {})
    monkeypatch.setattr(engine, "locked", lambda root: nullcontext())
    monkeypatch.setattr(engine.attach, "plan_attachments", lambda context: AttachPlan())
    result = engine.apply_state(state(3), Path("/nonexistent"), show=lambda plan: events.append(
        f"show {len(plan.operations)}"))
    assert events[0] == f"show {len(result.plan.operations)}" and set(events[1:]) == {"write"}

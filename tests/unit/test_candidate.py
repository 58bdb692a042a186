"""`bpfsync validate --in DIR FILE`: one file checked as part of a directory before it lands."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.cli import main
from reconciler.gue.model import Service
from reconciler.load.candidate import check_candidate
from tests.unit.helpers import service, tunnel, write_tree


@pytest.fixture
def directory(tmp_path: Path) -> Path:
    return write_tree(tmp_path / "desired.d", {"tunnels.yaml": tunnel(),
                                               "services.yaml": service()})


def candidate(tmp_path: Path, text: str) -> Path:
    """Like Ansible's: a random name, elsewhere, no .yaml suffix."""
    path = tmp_path / "ansible-tmp-1234" / "source"
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)
    return path


def test_new_file_with_relative_key_resolved_where_it_will_live(directory: Path,
                                                                 tmp_path: Path) -> None:
    file = candidate(tmp_path, service("api", sid=2, port=81))
    result = check_candidate(directory, file, "api.yaml")
    assert result.errors == [] and result.existing == []
    assert result.destination == directory / "api.yaml" and not result.replaces
    assert result.state is not None and set(result.state.of(Service)) == {"web", "api"}


def test_update_of_an_existing_file_is_not_a_duplicate(directory: Path, tmp_path: Path) -> None:
    file = candidate(tmp_path, service(port=8080))
    result = check_candidate(directory, file, "services.yaml")
    assert result.errors == [] and result.replaces
    assert result.state is not None and result.state.of(Service)["web"].proxy.port == 8080


def test_without_as_the_file_declaring_the_same_resources_is_replaced(directory: Path,
                                                                      tmp_path: Path) -> None:
    result = check_candidate(directory, candidate(tmp_path, service(port=8080)))
    assert result.guessed and result.destination == directory / "services.yaml"
    assert result.errors == []


def test_duplicate_name_and_id_in_a_new_file_are_errors_with_both_places(
        directory: Path, tmp_path: Path) -> None:
    file = candidate(tmp_path, service(port=8080) + "---\n" + tunnel("t2", id=100))
    result = check_candidate(directory, file, "more.yaml")
    text = "\n".join(map(str, result.errors))
    assert "Service/web is defined twice" in text
    assert "id 100" in text
    assert str(directory / "more.yaml") in text and str(directory / "services.yaml") in text
    assert result.state is None


def test_removing_a_referenced_tunnel_is_caught_in_the_other_file(directory: Path,
                                                                  tmp_path: Path) -> None:
    result = check_candidate(directory, candidate(tmp_path, tunnel("t9", id=9)), "tunnels.yaml")
    assert len(result.errors) == 1
    assert result.errors[0].location.file == str(directory / "services.yaml")
    assert "t1" in result.errors[0].message


def test_errors_elsewhere_do_not_block_a_good_file_but_are_reported(directory: Path,
                                                                    tmp_path: Path) -> None:
    (directory / "broken.yaml").write_text("kind: [\n")
    good = check_candidate(directory, candidate(tmp_path, service(port=8080)), "services.yaml")
    assert good.errors == [] and len(good.existing) == 1
    assert good.existing[0].location.file == str(directory / "broken.yaml")
    bad = check_candidate(directory, candidate(tmp_path, "kind: [\n"), "services.yaml")
    assert [p.location.file for p in bad.errors] == [str(directory / "services.yaml")]
    fixed = check_candidate(directory, candidate(tmp_path, service("api", sid=2, port=81)),
                            "broken.yaml")
    assert fixed.errors == [] and fixed.existing == [] and fixed.state is not None


@pytest.mark.parametrize("name, why", [
    (".hidden.yaml", "would not read"), ("notes.txt", "would not read"),
    ("sub/x.yaml~", "would not read"), ("../x.yaml", "not inside"),
    ("tunnels.yml", "tunnels.yaml exists beside it")])
def test_names_the_daemon_would_not_read_are_refused(directory: Path, tmp_path: Path,
                                                      name: str, why: str) -> None:
    result = check_candidate(directory, candidate(tmp_path, service("api", sid=2, port=81)),
                             name)
    assert len(result.errors) == 1 and why in result.errors[0].message


def run(*argv: str) -> int:
    with pytest.raises(SystemExit) as exit_:
        main(list(argv))
    return int(exit_.value.code or 0)


def test_cli_exit_codes_and_messages(directory: Path, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    good = candidate(tmp_path, service(port=8080))
    assert run("validate", "--in", str(directory), "--as", "services.yaml", str(good)) == 0
    assert "valid in" in capsys.readouterr().out
    bad = candidate(tmp_path, service(port=70000))
    assert run("validate", "--in", str(directory), "--as", "services.yaml", str(bad)) == 1
    err = capsys.readouterr().err
    assert f"{directory / 'services.yaml'}:9:" in err and "must not be put there" in err
    assert run("validate", "--in", str(directory), str(good), str(bad)) == 1
    assert "exactly one FILE" in capsys.readouterr().err


def test_cli_validates_several_directories_and_glob_patterns(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_tree(tmp_path / "hosts" / "gw1", {"t.yaml": tunnel()})
    write_tree(tmp_path / "hosts" / "gw2", {"t.yaml": tunnel(id=0)})
    assert run("validate", str(tmp_path / "hosts" / "*")) == 1
    captured = capsys.readouterr()
    assert "gw1: valid" in captured.out and "gw2: invalid (1 error)" in captured.err
    assert run("validate", str(tmp_path / "nothing-*")) == 1
    assert "no directory matches" in capsys.readouterr().err


def test_no_secrets_checks_key_references_without_reading_them(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = write_tree(tmp_path / "d", {"t.yaml": tunnel(), "s.yaml": service()})
    (root / "web.key").unlink()
    assert run("validate", str(root)) == 1
    assert "web.key" in capsys.readouterr().err
    assert run("validate", "--no-secrets", str(root)) == 0
    file = candidate(tmp_path, service(port=8080))
    assert run("validate", "--no-secrets", "--in", str(root), "--as", "s.yaml", str(file)) == 0

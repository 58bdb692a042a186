"""History and rollback without a kernel: revisions recorded by the engine (over in-memory
tables), their files kept once, never a key, pruned to the last N, and loaded again as the
desired state they were — with keyFrom files read again where they are."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler import engine
from reconciler.cli.rollback import _target
from reconciler.core.errors import BpfsyncError
from reconciler.history import snapshot, store
from reconciler.history.record import decode, encode
from reconciler.load.directory import load_directory
from tests.unit.helpers import service, tunnel, write_tree
from tests.unit.test_confirm import fake  # noqa: F401 - the engine over in-memory tables

ROOT = Path("/nonexistent")


@pytest.fixture
def state_dir(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.setenv("BPFSYNC_STATE_DIR", str(tmp_path / "state"))
    return tmp_path / "state"


def test_each_apply_that_changes_something_is_a_revision_and_rolls_back(
        fake, state_dir: Path, tmp_path: Path) -> None:  # noqa: F811
    d = write_tree(tmp_path / "desired", {"t.yaml": tunnel(), "s.yaml": service()})
    engine.apply_state(load_directory(d), ROOT)
    engine.apply_state(load_directory(d), ROOT)  # in sync: no revision
    (d / "s.yaml").write_text(service(port=8080))
    engine.apply_state(load_directory(d), ROOT)
    first, second = store.revisions(ROOT)
    assert (first.number, second.number, first.by) == (1, 2, "apply")
    assert first.directory == str(d.resolve()) and first.restorable
    assert first.summary["create"] > 0 and second.changes() == "1 create, 1 delete"
    assert first.files["t.yaml"] == second.files["t.yaml"]  # one blob for both
    assert len(list((store.directory(ROOT) / "blobs").iterdir())) == 3
    assert decode(encode(second)) == second
    # the revision before the last, loaded again: the port it had, its key read again
    target = _target(store.revisions(ROOT), None)
    assert target == first
    old = snapshot.load(ROOT, target, tmp_path / "scratch")
    assert old.of(type(next(iter(old.resources["Service"].values()))))["web"].proxy.port == 80
    assert old.sources == {"t.yaml": tunnel(), "s.yaml": service()}
    result = engine.apply_state(old, ROOT, by="rollback to 1")
    assert not result.plan.in_sync
    third = store.revisions(ROOT)[-1]
    assert (third.by, third.files) == ("rollback to 1", first.files)
    assert not list((tmp_path / "scratch").iterdir())  # the files were taken away again


def test_a_file_with_an_inline_key_is_never_kept(fake, state_dir: Path, tmp_path: Path  # noqa: F811
                                                  ) -> None:
    inline = service().replace("keyFrom: {file: web.key}", "key: inline-secret-1")
    d = write_tree(tmp_path / "desired", {"t.yaml": tunnel(), "s.yaml": inline})
    engine.apply_state(load_directory(d), ROOT)
    (revision,) = store.revisions(ROOT)
    assert set(revision.files) == {"t.yaml"} and not revision.restorable
    assert revision.unrestorable == ("s.yaml declares a key inline, and history never "
                                     "stores keys",)
    for path in state_dir.rglob("*"):
        assert not path.is_file() or b"inline-secret-1" not in path.read_bytes()
    with pytest.raises(BpfsyncError, match=r"cannot be restored: s\.yaml declares a key inline"):
        snapshot.load(ROOT, revision, tmp_path / "scratch")


def test_a_key_gone_since_refuses_the_rollback_with_its_place(
        fake, state_dir: Path, tmp_path: Path) -> None:  # noqa: F811
    d = write_tree(tmp_path / "desired", {"t.yaml": tunnel(), "s.yaml": service()})
    engine.apply_state(load_directory(d), ROOT)
    (d / "web.key").unlink()
    with pytest.raises(Exception) as exc:
        snapshot.load(ROOT, store.revisions(ROOT)[0], tmp_path / "scratch")
    assert "web.key" in str(getattr(exc.value, "problems", exc.value))


def test_only_the_last_n_are_kept_with_their_blobs(fake, state_dir: Path, tmp_path: Path,  # noqa: F811
                                                   monkeypatch) -> None:
    monkeypatch.setenv("BPFSYNC_HISTORY_KEEP", "2")
    d = write_tree(tmp_path / "desired", {"t.yaml": tunnel(), "s.yaml": service()})
    for port in (80, 81, 82, 83):
        (d / "s.yaml").write_text(service(port=port))
        engine.apply_state(load_directory(d), ROOT)
    kept = store.revisions(ROOT)
    assert [r.number for r in kept] == [3, 4]
    used = {sha for r in kept for sha in r.files.values()}
    assert {p.name for p in (store.directory(ROOT) / "blobs").iterdir()} == used
    with pytest.raises(BpfsyncError, match=r"revision 1 is not kept \(kept: 3, 4\)"):
        _target(kept, 1)
    monkeypatch.setenv("BPFSYNC_HISTORY_KEEP", "0")
    (d / "s.yaml").write_text(service(port=84))
    engine.apply_state(load_directory(d), ROOT)
    assert [r.number for r in store.revisions(ROOT)] == [3, 4]  # off: nothing recorded


def test_a_reverted_change_is_marked_and_skipped_by_rollback(
        fake, state_dir: Path, tmp_path: Path) -> None:  # noqa: F811
    d = write_tree(tmp_path / "desired", {"t.yaml": tunnel(), "s.yaml": service()})
    engine.apply_state(load_directory(d), ROOT)
    (d / "s.yaml").write_text(service(port=8080))
    engine.apply_state(load_directory(d), ROOT)
    (d / "s.yaml").write_text(service(port=9090))
    engine.apply_state(load_directory(d), ROOT, confirm=engine.Confirm(30, lambda r: None))
    engine.revert_pending(ROOT, "by hand")
    revisions = store.revisions(ROOT)
    assert [r.reverted for r in revisions] == [False, False, True]
    assert _target(revisions, None).number == 1  # 2 is what the kernel holds again

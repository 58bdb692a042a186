"""The program tag cache: tags remembered per source, flags and function, on disk under a
fingerprint of the sources, BCC and the kernel; anything else (a changed source, a broken or
oversized file) is no cache, never an error; a remembered program is not compiled."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from reconciler.kernel import tagcache
from reconciler.kernel.programs import Compilation, Compiler
from reconciler.kernel.tagcache import TagCache

TAGS = frozenset({"0123456789abcdef", "fedcba9876543210"})


@pytest.fixture
def bpf_dir(tmp_path: Path) -> Path:
    d = tmp_path / "bpf"
    d.mkdir()
    (d / "prog.c").write_text("int f(void) { return 0; }\n")
    (d / "prog.h").write_text("#define X 1\n")
    return d


def test_tags_are_remembered_on_disk_root_only(tmp_path: Path, bpf_dir: Path) -> None:
    path = tmp_path / "state" / "program-tags.json"
    cache = TagCache(path, bpf_dir)
    assert cache.get("prog.c", ["-DA=1"], "f") is None
    cache.put("prog.c", ["-DA=1"], "f", TAGS)
    cache.save()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = TagCache(path, bpf_dir)
    assert again.get("prog.c", ["-DA=1"], "f") == TAGS
    assert again.get("prog.c", ["-DA=2"], "f") is None  # other flags: another program
    assert again.get("prog.c", ["-DA=1"], "g") is None


@pytest.mark.parametrize("change", ["prog.c", "prog.h"])
def test_a_changed_source_or_header_forgets_everything(tmp_path: Path, bpf_dir: Path,
                                                       change: str) -> None:
    path = tmp_path / "program-tags.json"
    cache = TagCache(path, bpf_dir)
    cache.put("prog.c", [], "f", TAGS)
    cache.save()
    (bpf_dir / change).write_text((bpf_dir / change).read_text() + "/* changed */\n")
    assert TagCache(path, bpf_dir).get("prog.c", [], "f") is None


@pytest.mark.parametrize("content", [b"{not json", b'{"fingerprint": 1, "entries": []}',
                                     b"[]", b'{"entries": {"k": "not a list"}}',
                                     b" " * (tagcache.MAX_FILE_BYTES + 1)])
def test_a_broken_or_oversized_file_is_no_cache(tmp_path: Path, bpf_dir: Path,
                                                content: bytes) -> None:
    path = tmp_path / "program-tags.json"
    path.write_bytes(content)
    cache = TagCache(path, bpf_dir)
    assert cache.get("prog.c", [], "f") is None
    cache.put("prog.c", [], "f", TAGS)
    cache.save()  # replaced by a good one
    assert TagCache(path, bpf_dir).get("prog.c", [], "f") == TAGS


def test_the_oldest_entries_go_first(tmp_path: Path, bpf_dir: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tagcache, "MAX_ENTRIES", 3)
    path = tmp_path / "program-tags.json"
    cache = TagCache(path, bpf_dir)
    for i in range(4):
        cache.put("prog.c", [f"-DI={i}"], "f", TAGS)
    cache.put("prog.c", ["-DI=1"], "f", TAGS)  # used again: the newest
    cache.put("prog.c", ["-DI=4"], "f", TAGS)
    cache.save()
    kept = json.loads(path.read_text())["entries"]
    assert [json.loads(k)[1] for k in kept] == [["-DI=3"], ["-DI=1"], ["-DI=4"]]


def test_a_remembered_program_is_not_compiled(tmp_path: Path, bpf_dir: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    def no_bcc(self: Compilation) -> None:
        raise AssertionError("compiled")

    monkeypatch.setattr(Compilation, "bpf", no_bcc)
    cache = TagCache(None, bpf_dir)
    cache.put("prog.c", ["-DA=1"], "f", TAGS)
    compiler = Compiler(cache)
    assert compiler.tags(compiler.compile("k", "prog.c", ["-DA=1"], "a test"), "f") == TAGS
    with pytest.raises(AssertionError, match="compiled"):  # not remembered: compiled
        compiler.tags(compiler.compile("k2", "prog.c", ["-DA=2"], "a test"), "f")
    compiler.close()
    assert (cache.hits, cache.misses) == (1, 1)

"""The private runtime folder: created 0700, refused when it is a link, another user's, or open to others."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from types import ModuleType

import pytest

from generator.triton_models import recgen_runtime as runtime


def test_the_folders_are_created_private_per_user_and_per_server(tmp_path: Path) -> None:
    folder = runtime.server_folder(tmp_path, "load")
    assert folder == tmp_path / f"recgen-{os.geteuid()}" / "load" / str(os.getppid())
    for part in (folder, folder.parent, folder.parent.parent):
        assert part.stat().st_mode & 0o777 == 0o700
    assert runtime.server_folder(tmp_path, "load") == folder  # again: the same folder, accepted


def test_an_open_folder_or_a_link_is_refused_and_named(tmp_path: Path) -> None:
    user = tmp_path / f"recgen-{os.geteuid()}"
    user.mkdir(mode=0o755)
    user.chmod(0o755)
    with pytest.raises(runtime.UnsafeFolderError, match=r"open to other users \(mode 0755, must be 0700\).*chmod 700"):
        runtime.user_folder(tmp_path)
    user.rmdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    user.symlink_to(elsewhere)
    with pytest.raises(runtime.UnsafeFolderError, match="is not a folder"):
        runtime.user_folder(tmp_path)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a folder to another user")
def test_a_folder_another_user_owns_is_refused(tmp_path: Path) -> None:
    user = tmp_path / f"recgen-{os.geteuid()}"
    user.mkdir(mode=0o700)
    os.chown(user, 4242, 4242)
    with pytest.raises(runtime.UnsafeFolderError, match="belongs to uid 4242"):
        runtime.user_folder(tmp_path)


def test_folders_of_gone_servers_are_removed_only_when_they_hold_only_ours(tmp_path: Path) -> None:
    kind = runtime.private_folder(runtime.user_folder(tmp_path) / "load")
    gone, kept = kind / "5000001", kind / "5000002"  # above Linux's largest pid: no process has them
    gone.mkdir()
    (gone / "dlrm_router.estimate").write_bytes(b"")
    kept.mkdir()
    (kept / "notes.txt").write_text("not ours")
    runtime.server_folder(tmp_path, "load", (".estimate", ".lock"))
    assert not gone.exists() and (kept / "notes.txt").exists()


def test_every_copy_of_the_same_source_imports_one_content_addressed_module(tmp_path: Path) -> None:
    first, second = tmp_path / "repo_a" / "recgen_sample.py", tmp_path / "repo_b" / "recgen_sample.py"
    for path in (first, second):
        path.parent.mkdir()
        path.write_text("VALUE = 42\n")
    cache = tmp_path / "cache"
    one = runtime.content_addressed_module(first, cache)
    two = runtime.content_addressed_module(second, cache)
    assert one is two and one.VALUE == 42
    copy = Path(one.__file__ or "")
    assert copy.parent.parent == cache / "recgen-sources" and copy.parent.stat().st_mode & 0o777 == 0o700
    stamp = copy.stat().st_mtime_ns
    runtime.content_addressed_module(second, cache)
    assert copy.stat().st_mtime_ns == stamp  # numba's cache is keyed by it: never rewritten while it holds the text
    copy.write_text("VALUE = 'planted'\n")  # a copy that does not hold its name's text is written again
    _forget(one)
    assert runtime.content_addressed_module(first, cache).VALUE == 42
    _forget(one)


def _forget(module: ModuleType) -> None:
    """Drop a content-addressed module and its package from the import cache (the next import reads the files)."""
    sys.modules.pop(module.__name__)
    sys.modules.pop(module.__name__.rpartition(".")[0])


def test_the_compiled_kernels_come_from_the_content_addressed_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("numba")
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "numba"))
    from generator.triton_models import recgen_compiled

    source = recgen_compiled._cached_source()
    filename = source["_route_loop"].__code__.co_filename
    assert Path(filename).parent.parent == tmp_path / "numba" / "recgen-sources"
    assert Path(filename).read_text() == Path(recgen_compiled.__file__).read_text()
    assert source["kernels"].__name__ == source["__name__"].replace("recgen_compiled", "recgen_kernels")
    _forget(sys.modules[source["__name__"]])

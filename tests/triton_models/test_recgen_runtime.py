"""The private runtime folder: created 0700, refused when it is a link, another user's, or open to others."""

from __future__ import annotations

import os
from pathlib import Path

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

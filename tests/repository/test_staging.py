"""The one staging mechanism: outputs appear all together or not at all, and old outputs survive a failure."""

import os
from pathlib import Path

import pytest

from generator.repository import staging


def _tree(root: Path) -> dict[str, str]:
    """Every file under root but the marker staging adds (its own test checks it)."""
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.name != staging.OUTPUT_MARKER)
    return {str(p.relative_to(root)): p.read_text() for p in files}


def test_new_outputs_replace_old_ones_together(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "old.txt").write_text("old")
    with staging.staged([tmp_path / "a", tmp_path / "b"]) as (a, b):
        (a / "new.txt").write_text("new a")
        (b / "new.txt").write_text("new b")
        assert not (tmp_path / "b").exists()  # nothing is published before the block ends
    assert _tree(tmp_path) == {"a/new.txt": "new a", "b/new.txt": "new b"}


def test_a_failing_block_leaves_every_output_as_it_was(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "old.txt").write_text("old")
    with pytest.raises(RuntimeError, match="half way"), staging.staged([tmp_path / "a", tmp_path / "b"]) as (a, _):
        (a / "new.txt").write_text("new")
        raise RuntimeError("half way")
    assert _tree(tmp_path) == {"a/old.txt": "old"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]  # no temporary directory left behind


def test_a_failed_rename_restores_the_outputs_already_replaced(tmp_path: Path, monkeypatch) -> None:
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "old.txt").write_text(f"old {name}")
    real_rename = os.rename

    def rename(source, target):
        if Path(source).name.startswith(".b.recgen-"):  # publishing b fails; restoring old ones works
            raise OSError("disk full")
        real_rename(source, target)

    monkeypatch.setattr(staging.os, "rename", rename)
    with pytest.raises(OSError, match="disk full"), staging.staged([tmp_path / "a", tmp_path / "b"]) as (a, b):
        (a / "new.txt").write_text("new a")
        (b / "new.txt").write_text("new b")
    monkeypatch.undo()
    assert _tree(tmp_path) == {"a/old.txt": "old a", "b/old.txt": "old b"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]


def test_keep_existing_keeps_what_another_process_published_first(tmp_path: Path) -> None:
    with staging.staged([tmp_path / "cache"], keep_existing=True) as (staged,):
        (staged / "mine.txt").write_text("mine")
        (tmp_path / "cache").mkdir()  # another process wins the race
        (tmp_path / "cache" / "theirs.txt").write_text("theirs")
    assert _tree(tmp_path) == {"cache/theirs.txt": "theirs"}


def test_outputs_carry_the_marker_that_lets_force_replace_them(tmp_path: Path) -> None:
    with staging.staged([tmp_path / "out"]) as (out,):
        (out / "x.txt").write_text("x")
    assert staging.written_by_recgen(tmp_path / "out")
    staging.check_output(tmp_path / "out", "--out", force=True)
    (tmp_path / "empty").mkdir()
    staging.check_output(tmp_path / "empty", "--out", force=True)  # nothing to lose


def test_force_never_replaces_what_recgen_did_not_write(tmp_path: Path) -> None:
    precious = tmp_path / "photos"
    precious.mkdir()
    (precious / "cat.jpg").write_text("meow")
    with pytest.raises(staging.OutputExistsError, match="--force"):
        staging.check_output(precious, "--out", force=False)
    with pytest.raises(staging.UserInputError, match=r"`--out` .*photos was not written by recgen .*\.recgen-output"):
        staging.check_output(precious, "--out", force=True)
    assert _tree(precious) == {"cat.jpg": "meow"}
    (tmp_path / "file").write_text("f")
    with pytest.raises(staging.UserInputError, match="not a directory"):
        staging.check_output(tmp_path / "file", "--out", force=True)


def test_an_output_may_not_hold_an_input_nor_be_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with staging.staged([tmp_path / "out"]) as (out,):
        (out / "model.pt").write_text("weights")
    model = tmp_path / "out" / "model.pt"
    with pytest.raises(staging.UserInputError, match=r"`--out` .*out holds the input .*model\.pt"):
        staging.check_output(tmp_path / "out", "--out", force=True, inputs=[tmp_path / "plan.json", model])
    monkeypatch.chdir(tmp_path / "out")
    for path in (Path("."), Path(".."), tmp_path, Path("/")):
        with pytest.raises(staging.UserInputError, match="working directory or one of its parents"):
            staging.check_output(path, "--out", force=True)
    assert model.read_text() == "weights"

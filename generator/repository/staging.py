"""The one way recgen writes an output directory: stage beside it, then rename into place, all or nothing.

`staged(outputs)` hands out one temporary directory beside each output (same filesystem, so the rename is atomic).
When the block succeeds, existing outputs are moved aside, the staged ones renamed onto their paths and the old
ones removed; if any step fails, the new outputs are removed and the old ones restored, and the error goes on. A
failed block leaves every output as it was and no temporary directory behind.

Every output gets `OUTPUT_MARKER`, and `check_output` lets `--force` replace only a directory that has it (or an
empty one): recgen never deletes what it did not write, never the working directory or one of its parents, and
never a directory that holds one of the command's inputs.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from generator import naming
from generator.errors import OutputExistsError, UserInputError

#: File in every output directory recgen writes; `--force` replaces only directories that have it.
OUTPUT_MARKER = ".recgen-output"
_MARKER_TEXT = "written by recgen; `recgen ... --force` may replace this directory\n"


def remove_tree(path: Path) -> None:
    """Remove a directory recgen created (a staged or set-aside output)."""
    shutil.rmtree(path, ignore_errors=True)


def _parent(path: Path) -> Path:
    parent = path.resolve().parent
    parent.mkdir(parents=True, exist_ok=True)
    return parent


@contextlib.contextmanager
def staged(outputs: Sequence[Path], *, keep_existing: bool = False) -> Iterator[list[Path]]:
    """Temporary directories for `outputs`, published together when the block ends without an error.

    `keep_existing`: an output that exists when the block ends is kept and its staged copy dropped (a cache that
    another process may fill at the same time); otherwise it is replaced.
    """
    finals = [Path(path) for path in outputs]
    temporaries = [Path(tempfile.mkdtemp(prefix=f".{path.name}.recgen-", dir=_parent(path))) for path in finals]
    try:
        for temporary in temporaries:
            (temporary / OUTPUT_MARKER).write_text(_MARKER_TEXT)
        yield temporaries
        publish(list(zip(temporaries, finals, strict=True)), keep_existing=keep_existing)
    finally:
        for path in temporaries:
            remove_tree(path)


def publish(pairs: list[tuple[Path, Path]], *, keep_existing: bool = False) -> None:
    """Rename every staged directory onto its final path, all or nothing.

    Existing outputs are moved aside first and removed only once every rename succeeded; on failure the new
    outputs are removed and the old ones restored.
    """
    moved: list[tuple[Path, Path | None]] = []
    try:
        for staged_path, final in pairs:
            if keep_existing and final.exists():
                continue
            aside = None
            if final.exists():
                aside = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=final.resolve().parent)) / final.name
                os.rename(final, aside)
            try:
                os.rename(staged_path, final)
            except OSError:
                if aside is not None:
                    os.rename(aside, final)
                    remove_tree(aside.parent)
                if keep_existing and final.exists():  # another process published first
                    continue
                raise
            moved.append((final, aside))
    except BaseException:
        for final, aside in reversed(moved):
            remove_tree(final)
            if aside is not None:
                os.rename(aside, final)
                remove_tree(aside.parent)
        raise
    for _, aside in moved:
        if aside is not None:
            remove_tree(aside.parent)


def written_by_recgen(path: Path) -> bool:
    """Whether a directory is one recgen wrote, or empty (nothing in it to lose).

    recgen's outputs carry the marker; model repositories built before it existed carry the build manifest.
    """
    markers = (OUTPUT_MARKER, naming.MANIFEST_FILE)
    return any((path / marker).is_file() for marker in markers) or not any(path.iterdir())


def _inside(path: Path, directory: Path) -> bool:
    return path == directory or directory in path.parents


def check_output(path: Path, flag: str, force: bool, inputs: Sequence[Path] = ()) -> None:
    """Refuse an output that recgen may not replace, before any work is done.

    An existing output needs `force`, must be a directory recgen wrote, and must not hold any of `inputs` (the
    model, plan or profile the command reads). The working directory and its parents are never outputs.
    """
    resolved = Path(path).resolve()
    if _inside(Path.cwd().resolve(), resolved):
        raise UserInputError(
            f"`{flag}` {path} is the working directory or one of its parents; name a new directory for the output"
        )
    for source in inputs:
        if _inside(Path(source).resolve(), resolved):
            raise UserInputError(
                f"`{flag}` {path} holds the input {source}, which replacing it would delete; write the output "
                "somewhere else"
            )
    if not resolved.exists():
        return
    if not force:
        raise OutputExistsError(f"`{flag}` {path} already exists; pass --force to replace it")
    if not resolved.is_dir():
        raise UserInputError(f"`{flag}` {path} exists and is not a directory")
    if not written_by_recgen(resolved):
        raise UserInputError(
            f"`{flag}` {path} was not written by recgen (it has no {OUTPUT_MARKER} file), so --force will not "
            "replace it; remove it yourself or name another directory"
        )

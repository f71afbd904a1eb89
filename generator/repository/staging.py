"""The one way recgen writes an output directory: stage beside it, then rename into place, all or nothing.

`staged(outputs)` hands out one temporary directory beside each output (same filesystem, so the rename is atomic).
When the block succeeds, existing outputs are moved aside, the staged ones renamed onto their paths and the old
ones removed; if any step fails, the new outputs are removed and the old ones restored, and the error goes on. A
failed block leaves every output as it was and no temporary directory behind.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path


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

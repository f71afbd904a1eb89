"""The private folder every recgen process of one user keeps its runtime files in, checked before it is trusted.

Stubs keep memory-mapped files beside their server (the routers' access counters, the load they shed by): under
`<base>/recgen-<uid>/<kind>/<server pid>/`, with `<base>` normally `/dev/shm`. Each user gets a folder of its own,
so one user's server never collides with another's, and nobody can choose where another user's files go: a folder
that exists already is used only if it is a real folder (not a link) owned by this user and closed to others
(mode 0700); anything else is refused with a message that says what to remove. The kernels numba compiles are
imported from a content-addressed copy in the same way (`content_addressed_module`). Copied next to every
model.py; the standard library only.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import os
import shutil
import stat
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType


class UnsafeFolderError(RuntimeError):
    """A runtime folder that another user owns, can enter, or that is not a plain folder."""


def check_private(folder: Path) -> Path:
    """`folder` itself if it is a folder (not a link) that only this user owns and can enter; else UnsafeFolderError."""
    info = os.lstat(folder)
    uid = os.geteuid()
    problem = ""
    if not stat.S_ISDIR(info.st_mode):
        problem = "is not a folder (a link or a file)"
    elif info.st_uid != uid:
        problem = f"belongs to uid {info.st_uid}, not to this user (uid {uid})"
    elif info.st_mode & 0o077:
        problem = f"is open to other users (mode {stat.S_IMODE(info.st_mode):04o}, must be 0700)"
    if problem:
        raise UnsafeFolderError(
            f"recgen's runtime folder {folder} {problem}; recgen will not use it. Remove it (or, if it is yours, "
            f"`chmod 700 {folder}`) and start again"
        )
    return folder


def private_folder(path: Path) -> Path:
    """Create `path` (mode 0700) if it is missing, then check it is private (see check_private)."""
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o700)
    return check_private(path)


def user_folder(base: str | Path) -> Path:
    """`<base>/recgen-<uid>`: this user's own folder under a shared place such as /dev/shm (created 0700)."""
    os.makedirs(base, mode=0o700, exist_ok=True)
    return private_folder(Path(base) / f"recgen-{os.geteuid()}")


def server_folder(base: str | Path, kind: str, ours: Sequence[str] = ()) -> Path:
    """`<base>/recgen-<uid>/<kind>/<server pid>`: where the stubs of this process's server keep `kind` files.

    A stub's parent is its server, so the stubs of one server agree on the folder without being told. The folders
    of servers that are gone are removed first when they hold only files whose names end with one of `ours`.
    """
    kind_folder = private_folder(user_folder(base) / kind)
    if ours:
        remove_gone_servers(kind_folder, ours)
    return private_folder(kind_folder / str(os.getppid()))


def remove_gone_servers(kind_folder: Path, ours: Sequence[str]) -> None:
    """Remove the folders of servers whose process is gone (named by pid) if they hold only files named `ours`.

    Folder `1` is what stubs whose server died wrote into (their parent became init): always gone.
    """
    for folder in kind_folder.iterdir():
        gone = folder.name == "1" or not Path(f"/proc/{folder.name}").exists()
        gone = gone and folder.is_dir() and folder.name.isdigit() and folder.name != str(os.getppid())
        if gone and all(path.name.endswith(tuple(ours)) for path in folder.iterdir()):
            shutil.rmtree(folder, ignore_errors=True)


def content_addressed_module(source: Path, cache_folder: Path, imports: Sequence[Path] = ()) -> ModuleType:
    """`source` imported from a private copy named after its text: `<cache_folder>/recgen-sources/<sha256>/`.

    numba keys its disk cache by a function's file path and modification time, and every generated repository has a
    copy of the kernels at a path of its own, so each new model directory compiled afresh (about 10 s of CPU per
    stub). The copy's path and time are the same for every repository with the same kernels, so the cache serves
    them all. The copy is a package with the sibling modules `source` imports relatively (`imports`), named after
    the text of them all; each file is checked against that text before it is imported.
    """
    texts = {path.name: path.read_bytes() for path in (source, *imports)}
    digest = hashlib.sha256(b"".join(name.encode() + b"\0" + text + b"\0" for name, text in sorted(texts.items())))
    name = digest.hexdigest()
    os.makedirs(cache_folder, mode=0o700, exist_ok=True)
    folder = private_folder(private_folder(Path(cache_folder) / "recgen-sources") / name[:32])
    for file_name, text in {"__init__.py": b"", **texts}.items():
        copy = folder / file_name
        if not copy.is_file() or copy.read_bytes() != text:
            staged = folder / f".{file_name}.{os.getpid()}"
            staged.write_bytes(text)
            os.replace(staged, copy)
    package = f"recgen_sources_{name[:16]}"
    if package not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            package, folder / "__init__.py", submodule_search_locations=[str(folder)]
        )
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot import {folder}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[package] = module  # numba's cache finds the functions' module by name when it loads them
        spec.loader.exec_module(module)
    return importlib.import_module(f"{package}.{source.stem}")

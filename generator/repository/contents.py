"""recgen_files.json: the SHA-256 of every file a build put in a repository, checked before a server starts on it.

A rows file changed by a byte, a config.pbtxt edited by hand, a model.py replaced, a model directory added: each
would serve something other than what was built and checked, silently. `record` writes the list as the last step
of a build (and of an update's switch); `verify` compares the repository with it and refuses, naming every file
that differs, before `recgen serve` starts tritonserver. Left out of the list: the list itself, the READMEs and
the output marker (for people and for `--force`), and the byte code Python writes beside `model.py`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

from generator import naming
from generator.errors import UserInputError
from generator.repository import staging

CONTENTS_FORMAT_VERSION = 1
_UNRECORDED_NAMES = {naming.CONTENTS_FILE, "README.md", staging.OUTPUT_MARKER}
_CHUNK_BYTES = 1 << 20


def _files(repository: Path) -> Iterator[Path]:
    for path in sorted(repository.rglob("*")):
        relative = path.relative_to(repository)
        if "__pycache__" in relative.parts or path.suffix == ".pyc":
            continue
        if path.is_file() and not (len(relative.parts) == 1 and path.name in _UNRECORDED_NAMES):
            yield path


def sha256_of(path: Path) -> str:
    """The file's SHA-256, read in 1 MiB chunks (rows files can be many GB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def file_hashes(repository: Path) -> dict[str, str]:
    """Every recorded file of `repository`, by path relative to it."""
    repository = Path(repository)
    return {path.relative_to(repository).as_posix(): sha256_of(path) for path in _files(repository)}


def record(repository: Path) -> Path:
    """Write `repository`/recgen_files.json for what the repository holds now."""
    path = Path(repository) / naming.CONTENTS_FILE
    document = {"format_version": CONTENTS_FORMAT_VERSION, "files": file_hashes(repository)}
    path.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
    return path


def verify(repository: Path) -> int:
    """Refuse a repository recgen wrote whose files are not the ones it recorded; returns the files checked.

    A repository with neither the list nor recgen's output marker is not recgen's and is not checked (0).
    """
    repository = Path(repository)
    listing = repository / naming.CONTENTS_FILE
    if not listing.exists() and not (repository / staging.OUTPUT_MARKER).is_file():
        return 0
    try:
        document = json.loads(listing.read_text())
        if document.get("format_version") != CONTENTS_FORMAT_VERSION:
            raise ValueError(f"format_version is not {CONTENTS_FORMAT_VERSION}")
        recorded = {str(name): str(digest) for name, digest in document["files"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise UserInputError(
            f"{listing} is missing or unreadable ({error}): recgen cannot tell whether {repository} is what it built; "
            "build it again (recgen build --force)"
        ) from error
    found = file_hashes(repository)
    problems = [f"{name} was changed" for name in sorted(recorded) if name in found and found[name] != recorded[name]]
    problems += [f"{name} is missing" for name in sorted(set(recorded) - set(found))]
    recorded_dirs = {name.split("/")[0] for name in recorded}
    added = {name if name.split("/")[0] in recorded_dirs else name.split("/")[0] + "/" for name in found}
    problems += [f"{name} was not written by the build" for name in sorted(added - set(recorded))]
    if problems:
        shown = "; ".join(problems[:10]) + (f"; and {len(problems) - 10} more" if len(problems) > 10 else "")
        raise UserInputError(
            f"{repository} is not what recgen built ({listing.name} disagrees): {shown}. Serve what was built: "
            "build it again, or put back the files named"
        )
    return len(found)

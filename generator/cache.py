"""recgen's cache folder: prepared server files, compiled libraries, run-time files of the embedded server."""

from __future__ import annotations

import os
from pathlib import Path

from generator.errors import ServerError


def cache_dir() -> Path:
    """Where recgen keeps prepared server files (RECGEN_CACHE_DIR, else ~/.cache/recgen)."""
    configured = os.environ.get("RECGEN_CACHE_DIR")
    return Path(configured) if configured else Path.home() / ".cache" / "recgen"


def private_cache_dir() -> Path:
    """`cache_dir()`, made if missing; ServerError unless this user owns it and no one else may write to it.

    tritonserver loads libraries from it (the admin-key preload, the native backend): a folder another user can
    write to would let that user run code as the server.
    """
    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True, mode=0o700)
    info = cache.stat()
    if info.st_uid != os.geteuid() or info.st_mode & 0o022:
        raise ServerError(
            f"recgen's cache folder {cache} must belong to this user and be writable by it alone (tritonserver "
            "loads libraries from it); fix its owner and mode, or set RECGEN_CACHE_DIR to another folder"
        )
    return cache

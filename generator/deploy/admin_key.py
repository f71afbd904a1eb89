"""Keeping the admin key of an embedded server off its command line, where every local user could read it.

tritonserver 2.51 takes the key of its restricted APIs (model control, shared memory, logging, trace) only as an
argument, and `/proc/<pid>/cmdline` is world-readable: a local user who read it could load a model of its own and
run code as the serving user. So the argument carries `PLACEHOLDER`, the key travels in the server's environment
(`/proc/<pid>/environ` is readable by its own user only), and a small preloaded library
(`native/admin_key_preload.c`) swaps the key in before tritonserver's `main()` and removes it from the environment
its stubs inherit. The library is compiled from source with the system's C compiler the first time it is needed
(and by `scripts/setup.sh`), into recgen's cache folder.

Without a C compiler the server does not start, unless RECGEN_ALLOW_VISIBLE_ADMIN_KEY=1 says to put the key on the
command line as it is, readable by every local user; `recgen serve` then warns at every start.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from importlib import resources
from pathlib import Path

from generator.errors import ServerError

#: What the restricted-API flags carry instead of the key; the preloaded library puts the key in its place.
PLACEHOLDER = "@RECGEN_ADMIN_KEY@"
#: The server's environment variable that carries the key to the preloaded library (which removes it).
KEY_VARIABLE = "RECGEN_ADMIN_KEY"
#: Set to 1 to start servers with the key on their command line when the library cannot be built.
ALLOW_VISIBLE_VARIABLE = "RECGEN_ALLOW_VISIBLE_ADMIN_KEY"
_SOURCE = "admin_key_preload.c"


def _source_text() -> bytes:
    return resources.files("generator.deploy").joinpath("native", _SOURCE).read_bytes()


def preload_library(cache: Path) -> Path:
    """The compiled library in `cache` (built once per source version); ServerError naming the fix if it cannot be.

    `cache` is `generator.cache.private_cache_dir()`: owned by this user, writable by no one else.
    """
    source = _source_text()
    target = cache / f"admin-key-preload-{hashlib.sha256(source).hexdigest()[:16]}.so"
    if target.is_file():
        return target
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise ServerError(
            "recgen needs a C compiler (`apt-get install gcc`) to keep the admin key off tritonserver's command "
            f"line; or set {ALLOW_VISIBLE_VARIABLE}=1 to serve with the key readable by every local user"
        )
    workdir = Path(tempfile.mkdtemp(prefix=".admin-key-", dir=cache))
    try:
        (workdir / _SOURCE).write_bytes(source)
        built = workdir / target.name
        flags = ["-shared", "-fPIC", "-O2", "-Wall", "-Werror"]
        command = [compiler, *flags, "-o", str(built), str(workdir / _SOURCE), "-ldl"]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise ServerError(
                f"building {_SOURCE} failed ({' '.join(command)}):\n{done.stderr.strip()}\n"
                f"set {ALLOW_VISIBLE_VARIABLE}=1 to serve with the key readable by every local user"
            )
        os.replace(built, target)  # atomic: another process may build it at the same time
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return target


def hidden_key_environment(key: str, cache: Path) -> tuple[str, dict[str, str]]:
    """(what the flags carry, the server's extra environment) for `key`; the key itself only if allowed to show."""
    try:
        library = preload_library(cache)
    except ServerError:
        if os.environ.get(ALLOW_VISIBLE_VARIABLE) != "1":
            raise
        sys.stderr.write(
            f"warning: {ALLOW_VISIBLE_VARIABLE}=1: tritonserver's admin key is on its command line, readable by "
            "every local user (docs/faults.md)\n"
        )
        return key, {}
    preload = os.pathsep.join(filter(None, [str(library), os.environ.get("LD_PRELOAD", "")]))
    return PLACEHOLDER, {KEY_VARIABLE: key, "LD_PRELOAD": preload}


def main() -> None:
    """`python -m generator.deploy.admin_key`: build the library now and say where (what scripts/setup.sh runs)."""
    from generator.cache import private_cache_dir

    try:
        print(f"admin-key library: {preload_library(private_cache_dir())}")
    except ServerError as error:
        print(f"warning: {error}", file=sys.stderr)


if __name__ == "__main__":
    main()

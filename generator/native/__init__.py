"""recgen's native Triton backend, `libtriton_recgen.so`: built from the C++ sources beside this file, found here.

The sources (`backend/`: CMake, C++17, Triton's API declared by recgen in `include/triton_api.h`) are compiled with
CMake from PyPI and the system's C++ compiler, and RapidJSON (Debian's `rapidjson-dev`, header-only). A build is
kept in recgen's cache folder under a name made of the sources' SHA-256, so any change of the sources builds anew
and every checkout with the same sources shares one library. `python -m generator.native` builds it (the README's
set-up commands run it); `library()` returns it, or raises NativeUnavailableError saying why and what to do.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from generator.cache import private_cache_dir
from generator.errors import NativeUnavailableError

#: The file name Triton looks for when a model's config says `backend: "recgen"`.
LIBRARY_NAME = "libtriton_recgen.so"
#: The `backend` value of a native model's config.
BACKEND_NAME = "recgen"
#: The config parameter naming the version a native model was written for; a library of another refuses it.
VERSION_PARAMETER = "recgen_native_version"
SOURCE_DIR = Path(__file__).with_name("backend")
BUILD_TIMEOUT_S = 600.0


@functools.cache  # the sources do not change under a running process; every build and server start asks
def source_digest() -> str:
    """SHA-256 over the backend's sources (relative paths and contents): the name of a build."""
    digest = hashlib.sha256()
    for name, text in source_files().items():
        digest.update(name.encode() + b"\0" + text + b"\0")
    return digest.hexdigest()


def version() -> str:
    """The build's version: what a native model's config names (`VERSION_PARAMETER`) and the library must be."""
    return source_digest()[:16]


def _cache_dir() -> Path:
    return private_cache_dir()


def library_dir(sanitize: bool = False, cache: Path | None = None) -> Path:
    """Where the build of the current sources lives (it may not exist yet)."""
    suffix = "-sanitize" if sanitize else ""
    return (cache or _cache_dir()) / f"native-{version()}{suffix}"


def library(sanitize: bool = False, cache: Path | None = None) -> Path:
    """The built library of the current sources; NativeUnavailableError when it was not built (or its build failed)."""
    target = library_dir(sanitize, cache) / LIBRARY_NAME
    if target.is_file():
        return target
    failure = target.with_name("build-failed.txt")
    why = failure.read_text().strip() if failure.is_file() else "it has not been built"
    raise NativeUnavailableError(
        f"recgen's native backend is not available: {why}\nbuild it: python -m generator.native"
    )


def _tool(name: str) -> str | None:
    """`name` from the running interpreter's bin/ (pip's cmake), else from PATH."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.is_file() else shutil.which(name)


def _run(command: list[str], what: str) -> None:
    done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=BUILD_TIMEOUT_S)
    if done.returncode != 0:
        output = (done.stdout + done.stderr).strip()[-4000:]
        hint = ""
        if "RAPIDJSON_INCLUDE_DIR" in output:
            hint = "\nRapidJSON is missing: apt-get install rapidjson-dev (or set CPLUS_INCLUDE_PATH to its headers)"
        raise NativeUnavailableError(f"{what} failed ({' '.join(command)}):\n{output}{hint}")


def cmake_commands(
    cmake: str, source_dir: str, build_dir: str, *, sanitize: bool = False, warnings_are_errors: bool = True
) -> tuple[list[str], list[str]]:
    """The configure and compile commands of a build of this version (here, and in the images `recgen k8s` writes).

    An image's compiler is not the one these sources were checked with, so images build with
    `warnings_are_errors=False`: a new warning there must not stop a deployment.
    """
    configure = [cmake, "-S", source_dir, "-B", build_dir, "-DCMAKE_BUILD_TYPE=Release"]
    configure += [f"-DRECGEN_NATIVE_VERSION={version()}", f"-DRECGEN_WERROR={'ON' if warnings_are_errors else 'OFF'}"]
    if sanitize:
        configure.append("-DRECGEN_SANITIZE=ON")
    return configure, [cmake, "--build", build_dir, "--parallel", "2"]


def source_files() -> dict[str, bytes]:
    """The backend's sources by path relative to `SOURCE_DIR` (what an image copies to build it)."""
    return {
        str(path.relative_to(SOURCE_DIR)): path.read_bytes()
        for path in sorted(SOURCE_DIR.rglob("*"))
        if path.is_file() and "__pycache__" not in path.parts
    }


def build(sanitize: bool = False, cache: Path | None = None) -> Path:
    """Build the library of the current sources (once) and return it; NativeUnavailableError saying why it cannot."""
    out = library_dir(sanitize, cache)
    target = out / LIBRARY_NAME
    if target.is_file():
        return target
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    failure = out / "build-failed.txt"
    try:
        cmake = _tool("cmake")
        if cmake is None:
            raise NativeUnavailableError("cmake is not installed (pip install cmake)")
        if shutil.which(os.environ.get("CXX", "c++")) is None:
            raise NativeUnavailableError("no C++ compiler (apt-get install g++, or set CXX)")
        with tempfile.TemporaryDirectory(prefix=".build-", dir=out) as workdir:
            configure, compile_ = cmake_commands(cmake, str(SOURCE_DIR), workdir, sanitize=sanitize)
            _run(configure, "configuring the native backend")
            _run(compile_, "compiling the native backend")
            os.replace(Path(workdir) / LIBRARY_NAME, target)  # atomic: another process may build at the same time
    except NativeUnavailableError as error:
        failure.write_text(str(error) + "\n")
        raise
    failure.unlink(missing_ok=True)
    return target

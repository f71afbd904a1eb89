"""Where the embedded tritonserver 2.51 lives (the nvidia-pytriton wheel) and the environment it runs with.

The wheel ships the server binary and the Python backend but the backend's stub only per Python version, so a
backend directory with the stub for the running interpreter is prepared once in recgen's cache directory. The
server runs with the running interpreter's `bin/` first on PATH (the stub resolves its Python through PATH, so it
then sees this environment's packages) and libpython's directory on LD_LIBRARY_PATH.
"""

from __future__ import annotations

import os
import shutil
import sys
import sysconfig
from pathlib import Path

from generator import native, triton_runtime
from generator.cache import cache_dir
from generator.errors import NativeUnavailableError, ServerError
from generator.repository import staging


def pytriton_server_dir() -> Path:
    """`pytriton/tritonserver` inside the installed nvidia-pytriton wheel."""
    try:
        import pytriton
    except ImportError as error:  # pragma: no cover - a dependency of recgen
        raise ServerError("the embedded server needs `pip install nvidia-pytriton==0.7.0`") from error
    return Path(pytriton.__file__).parent / "tritonserver"


def tritonserver_binary() -> Path:
    """Path of the embedded `tritonserver` executable."""
    binary = pytriton_server_dir() / "bin" / "tritonserver"
    if not binary.is_file():
        raise ServerError(f"the nvidia-pytriton wheel has no tritonserver binary at {binary}")
    return binary


def prepare_backend_dir() -> Path:
    """A backend directory holding the wheel's Python backend plus the stub for this interpreter (made once)."""
    source = pytriton_server_dir()
    python_version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = source / "python_backend_stubs" / python_version / "triton_python_backend_stub"
    if not stub.is_file():
        raise ServerError(f"the nvidia-pytriton wheel has no Python-backend stub for Python {python_version}")
    key = f"backends-{stub.stat().st_size}-{int(stub.stat().st_mtime)}-py{python_version}"
    target = cache_dir() / key
    if not (target / "python" / "triton_python_backend_stub").is_file():
        with staging.staged([target], keep_existing=True) as (staged,):  # another process may prepare it too
            shutil.copytree(
                source / "backends", staged, ignore=shutil.ignore_patterns("__pycache__"), dirs_exist_ok=True
            )
            shutil.copy2(stub, staged / "python" / "triton_python_backend_stub")
    install_native_backend(target)
    return target


def install_native_backend(backend_dir: Path) -> Path | None:
    """Put recgen's native backend, when it is built here, in `<backend_dir>/recgen/`; returns where.

    Triton looks there for a native model whose own directory does not carry the library. None when it is not built
    (such a model then fails to load, Triton naming the library it could not find).
    """
    try:
        library = native.library()
    except NativeUnavailableError:
        return None
    placed = backend_dir / native.BACKEND_NAME / native.LIBRARY_NAME
    if placed.is_file() and placed.read_bytes() == library.read_bytes():
        return placed
    placed.parent.mkdir(mode=0o700, exist_ok=True)
    staged = placed.with_name(f".{placed.name}.{os.getpid()}")
    shutil.copy(library, staged)
    os.replace(staged, placed)  # atomic: a running server keeps the file it mapped
    return placed


def server_environment() -> dict[str, str]:
    """Environment for the server: this interpreter first on PATH, libpython and the wheel's libs findable."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    # The user's own folder: numba's cache index is a pickle, so a folder another user made could run code here.
    env.setdefault("NUMBA_CACHE_DIR", str(cache_dir() / "numba"))
    for variable, value in triton_runtime.SERVING_ENV.items():
        env.setdefault(variable, value)
    library_dirs = [str(pytriton_server_dir().parent.parent / "nvidia_pytriton.libs")]
    if sysconfig.get_config_var("Py_ENABLE_SHARED"):
        library_dirs.insert(0, str(sysconfig.get_config_var("LIBDIR")))
    if env.get("LD_LIBRARY_PATH"):
        library_dirs.append(env["LD_LIBRARY_PATH"])
    env["LD_LIBRARY_PATH"] = os.pathsep.join(library_dirs)
    return env

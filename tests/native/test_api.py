"""recgen's own declarations of Triton's API against the shipped 2.51 server: every function it calls exists there."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from generator import native
from generator.deploy import installation
from generator.errors import NativeUnavailableError

HEADER = native.SOURCE_DIR / "include" / "triton_api.h"


def _dynamic_symbols(library: Path, which: str) -> set[str]:
    listed = subprocess.run(["nm", "-D", which, str(library)], capture_output=True, text=True, check=True).stdout
    return {line.split()[-1].split("@")[0] for line in listed.splitlines() if line.strip()}


def _server_library() -> Path:
    libraries = sorted(
        (installation.pytriton_server_dir().parent.parent / "nvidia_pytriton.libs").glob("libtritonserver*.so*")
    )
    assert libraries, "the nvidia-pytriton wheel ships no libtritonserver"
    return libraries[0]


def _declared() -> tuple[set[str], set[str]]:
    """(functions the backend calls, functions it exports), from the header."""
    text = HEADER.read_text()
    exported = set(re.findall(r"RECGEN_BACKEND_EXPORT TRITONSERVER_Error\* (TRITONBACKEND_\w+)\(", text))
    called = set(re.findall(r"^(?:[\w*]+ )+\**(TRITON(?:SERVER|BACKEND)_\w+)\(", text, re.M)) - exported
    return called, exported


def test_every_declared_function_is_exported_by_the_shipped_server() -> None:
    called, exported = _declared()
    assert len(called) >= 30 and {"TRITONBACKEND_ModelInstanceExecute"} <= exported
    missing = called - _dynamic_symbols(_server_library(), "--defined-only")
    assert not missing, f"declared in {HEADER.name} but not exported by tritonserver 2.51: {sorted(missing)}"


def test_the_library_leaves_only_declared_triton_symbols_to_the_server() -> None:
    try:
        library = native.build()
    except NativeUnavailableError as error:
        pytest.fail(str(error))
    called, exported = _declared()
    undefined = {name for name in _dynamic_symbols(library, "--undefined-only") if name.startswith("TRITON")}
    assert undefined and undefined <= called, f"undeclared: {sorted(undefined - called)}"
    defined = {name for name in _dynamic_symbols(library, "--defined-only") if not name.startswith("_")}
    assert exported <= defined and not {n for n in defined if n.startswith("TRITONSERVER")}

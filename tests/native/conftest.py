"""The native tier's library: the plain build, or with RECGEN_NATIVE_SANITIZE=1 the AddressSanitizer and UBSan
build, served by tritonserver with the sanitizers' runtime preloaded (what CI runs: scripts/test.sh)."""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import pytest

from generator import native
from generator.deploy import server as serve
from generator.errors import NativeUnavailableError
from tests.conftest import SERVER_READY_TIMEOUT_S

SANITIZE = os.environ.get("RECGEN_NATIVE_SANITIZE") == "1"
#: How long a native-tier server may take to stop. tritonserver 2.51 with ASan's runtime preloaded never exits
#: after it has unloaded its models (seen with the plain library too, so not the backend's doing): a sanitized
#: server is killed after a few seconds rather than the usual 30.
STOP_GRACE_S = 5.0 if SANITIZE else 30.0


def _sanitizer_environment() -> dict[str, str]:
    """What a server needs to run the sanitized library: ASan's runtime preloaded, and every finding fatal.

    recgen's admin-key library is preloaded first (the server's own), so ASan is told not to insist on coming
    first; tritonserver itself is not instrumented, so leaks at its exit are not reported.
    """
    runtime = subprocess.run(["g++", "-print-file-name=libasan.so"], capture_output=True, text=True, check=True)
    return {
        "LD_PRELOAD": runtime.stdout.strip(),
        "ASAN_OPTIONS": "verify_asan_link_order=0:detect_leaks=0:abort_on_error=1:halt_on_error=1",
        "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1",
    }


@pytest.fixture(scope="module")
def native_library() -> Iterator[Path]:
    """The library the native tier serves, built now if needed (a failed build fails the tier, saying why)."""
    try:
        library = native.build(sanitize=SANITIZE)
    except NativeUnavailableError as error:
        pytest.fail(str(error))
    if not SANITIZE:
        yield library
        return
    with mock.patch.dict(os.environ, _sanitizer_environment()):
        yield library


def assert_refused(repository: Path, refused: re.Pattern[str], log: Path) -> None:
    """Serve `repository` and wait for `refused` in the server's log (a model the backend refused to load).

    The log, not the server's exit: with ASan's runtime preloaded, tritonserver does not exit after a failed load.
    """
    server = serve.TritonServer(serve.ServerConfig((repository,)), log)
    server.start()
    try:
        deadline = time.monotonic() + SERVER_READY_TIMEOUT_S
        while time.monotonic() < deadline and not refused.search(server.logs()) and not server.exited:
            time.sleep(0.2)
        assert refused.search(server.logs()), server.logs()[-3000:]
    finally:
        server.stop(grace_s=STOP_GRACE_S)

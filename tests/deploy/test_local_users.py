"""A second local user against a running server: no key to read, no admin API, no request data, no folder to take.

Runs only as root (it creates the user and removes it afterwards); skipped otherwise.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from generator.check.client import RankingClient
from generator.planning.plan import uniform_plan
from generator.repository import build
from generator.traffic.requests import random_request, reference_scores
from tests.conftest import requires_server, tiny_model

SYSTEM_PYTHON = Path("/usr/bin/python3")
needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("useradd") is None or not SYSTEM_PYTHON.exists(),
    reason="needs root, useradd and /usr/bin/python3 to act as a second local user",
)

#: What the other user tries, with the standard library only; prints one JSON object of outcomes.
INTRUDER = r"""
import json, os, sys, urllib.request, urllib.error
server_pid, http_url, key_hint, shm_files, runtime_folder = sys.argv[1:6]
out = {}
out["cmdline"] = open(f"/proc/{server_pid}/cmdline").read().replace("\0", " ")
def attempt(name, action):
    try:
        out[name] = action()
    except Exception as error:
        out[name] = type(error).__name__ + ": " + str(error)[:200]
attempt("environ", lambda: open(f"/proc/{server_pid}/environ", "rb").read().decode(errors="replace"))
attempt("shm", lambda: [len(open(path, "rb").read(16)) for path in json.loads(shm_files)])
attempt("runtime_folder", lambda: os.listdir(runtime_folder))
def admin(path, headers):
    request = urllib.request.Request(f"http://{http_url}{path}", data=b"{}", method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
out["index"] = admin("/v2/repository/index", {})
out["unload"] = admin("/v2/repository/models/dlrm/unload", {})
out["unload_with_guess"] = admin("/v2/repository/models/dlrm/unload", {"recgen-admin-key": key_hint})
out["log_settings"] = admin("/v2/logging", {})
print(json.dumps(out))
"""


@contextlib.contextmanager
def local_user() -> Iterator[pwd.struct_passwd]:
    """A throwaway account (no home, no login), removed afterwards."""
    name = f"recgen-other-{os.getpid()}"
    subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", name], check=True)
    try:
        yield pwd.getpwnam(name)
    finally:
        subprocess.run(["userdel", name], check=False)


@needs_root
@requires_server
@pytest.mark.server
def test_another_local_user_cannot_reach_the_admin_surface_or_the_requests(tmp_path: Path, server_factory) -> None:
    model = tiny_model()
    server = server_factory(build.build(model, uniform_plan(model), tmp_path / "r", tmp_path / "e"))
    request = random_request(model, 16, np.random.default_rng(0))
    with RankingClient(server.grpc_url, "grpc") as client:
        client.score(request)  # every stub has its shared memory by now
    maps = Path(f"/proc/{server.pid}/maps").read_text().splitlines()  # this server's regions, not leftovers
    regions = sorted({line.split()[-1] for line in maps if "/dev/shm/triton_python_backend_shm_region_" in line})
    assert regions
    runtime_folder = Path("/dev/shm") / f"recgen-{os.geteuid()}"
    with local_user() as other:
        done = subprocess.run(
            [str(SYSTEM_PYTHON), "-c", INTRUDER, str(server.pid), server.http_url, "guess", json.dumps(regions),
             str(runtime_folder)],
            user=other.pw_uid, group=other.pw_gid, extra_groups=[], capture_output=True, text=True, timeout=60,
            cwd="/", env={"PATH": "/usr/bin:/bin"},
        )  # fmt: skip
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert server.admin_key not in seen["cmdline"] and "@RECGEN_ADMIN_KEY@" in seen["cmdline"]
    assert seen["environ"].startswith("PermissionError"), seen["environ"]
    assert str(seen["shm"]).startswith("PermissionError"), seen["shm"]
    assert str(seen["runtime_folder"]).startswith("PermissionError"), seen["runtime_folder"]
    assert (seen["index"], seen["unload"], seen["unload_with_guess"], seen["log_settings"]) == (403, 403, 403, 403)
    with RankingClient(server.grpc_url, "grpc") as client:  # serving is unaffected
        np.testing.assert_allclose(client.score(request), reference_scores(model, request), atol=1e-5)

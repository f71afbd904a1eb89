"""Reading stubs from /proc and deciding which models are broken, on a /proc written by the test."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from generator.deploy import stub_health
from generator.deploy.stub_health import StubProcess

STUB = "/opt/tritonserver/backends/python/triton_python_backend_stub"


def _process(proc: Path, pid: int, argv: list[str], state: str, ppid: int, name: str = "x") -> None:
    entry = proc / str(pid)
    entry.mkdir()
    (entry / "cmdline").write_bytes(b"\0".join(arg.encode() for arg in argv) + b"\0")
    (entry / "stat").write_text(f"{pid} ({name}) {state} {ppid} 1 1 0 -1\n")


def test_stubs_are_found_per_server_with_their_model_and_state(tmp_path: Path) -> None:
    _process(tmp_path, 10, ["tritonserver", "--model-repository=/m"], "S", 1)
    _process(tmp_path, 11, [STUB, "/m/dlrm_router/1/model.py", "r11", "4", "1", "10", "DEFAULT"], "S", 10, "(stub) x")
    _process(tmp_path, 12, [STUB, "/m/dlrm_shards_0/1/model.py", "region"], "T", 10)
    _process(tmp_path, 13, [STUB, "/other/dlrm_router/1/model.py", "region"], "S", 99)  # another server's
    _process(tmp_path, 14, ["python", "/m/dlrm_router/1/model.py"], "S", 10)  # not a stub
    (tmp_path / "self").mkdir()
    mine = stub_health.stub_processes(10, proc=tmp_path)
    assert sorted(mine, key=lambda stub: stub.pid) == [
        StubProcess(11, "dlrm_router", "S", parent=10, server=10, region="r11"),
        StubProcess(12, "dlrm_shards_0", "T", parent=10, region="region"),
    ]
    assert len(stub_health.stub_processes(proc=tmp_path)) == 3


def test_broken_models_are_dead_paused_or_missing_stubs() -> None:
    expected = {"router": 2, "shards": 1, "dense": 1, "idle": 1}
    stubs = [
        StubProcess(1, "router", "S"),
        StubProcess(2, "router", "R"),
        StubProcess(3, "shards", "T"),
        StubProcess(4, "dense", "Z"),
        StubProcess(5, "idle", "S"),
        StubProcess(6, "unloaded", "T"),  # a model the server no longer serves
    ]
    assert stub_health.broken_models(expected, stubs) == {
        "shards": "stub pid 3 is paused",
        "dense": "stub pid 4 is dead",
    }
    assert stub_health.broken_models({"router": 3}, stubs) == {"router": "2 of its 3 stub(s) alive"}
    assert stub_health.broken_models(expected, [*stubs[:2], stubs[4]]) == {
        "shards": "0 of its 1 stub(s) alive",
        "dense": "0 of its 1 stub(s) alive",
    }


def test_a_stub_whose_server_died_is_killed_and_its_region_removed(tmp_path: Path) -> None:
    """A real process with a stub's name and arguments, started by a 'server' that exits: orphaned, then removed."""
    stub = tmp_path / stub_health.STUB_EXECUTABLE
    stub.symlink_to(Path(sys.executable).resolve())  # argv[0] keeps the stub's name
    model_py = tmp_path / "repo" / "dlrm_router" / "1" / "model.py"
    model_py.parent.mkdir(parents=True)
    model_py.write_text("import time\ntime.sleep(30)\n")
    shm = tmp_path / "shm"
    shm.mkdir()
    (shm / "triton_python_backend_shm_region_test").write_bytes(b"\0" * 16)
    (shm / "someone_elses_region").write_bytes(b"")
    # A stub's arguments: model.py, its region, sizes, then its server's pid; the "server" exits at once.
    script = f'"{stub}" "{model_py}" triton_python_backend_shm_region_test 4194304 1048576 $$ >/dev/null 2>&1 & echo $!'
    server = subprocess.run(["/bin/sh", "-c", script], capture_output=True, text=True, timeout=10, check=True)
    orphan_pid = int(server.stdout.split()[-1])
    try:
        deadline = time.monotonic() + 10
        found: list[StubProcess] = []
        while not found and time.monotonic() < deadline:
            found = [s for s in stub_health.stub_processes() if s.pid == orphan_pid]
            time.sleep(0.05)
        (orphan,) = found
        assert orphan.model == "dlrm_router" and orphan.region == "triton_python_backend_shm_region_test"
        assert orphan.orphaned
        assert orphan_pid in {s.pid for s in stub_health.remove_orphans(shm=shm)}
        assert not (shm / "triton_python_backend_shm_region_test").exists()
        assert (shm / "someone_elses_region").exists()
        while time.monotonic() < deadline:
            stat = Path(f"/proc/{orphan_pid}/stat")
            if not stat.exists() or stub_health.stat_fields(stat.read_text())[0] in "ZX":
                break
            time.sleep(0.05)
        else:
            raise AssertionError("the orphaned stub is still running")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(orphan_pid, signal.SIGKILL)


def test_a_stub_of_a_live_server_is_no_orphan() -> None:
    assert not StubProcess(10, "m", "S", parent=7, server=7).orphaned
    assert StubProcess(10, "m", "S", parent=1, server=7).orphaned
    assert not StubProcess(10, "m", "S", parent=1, server=0).orphaned  # unknown server: left alone


def test_the_probe_finds_the_server_by_the_port_it_listens_on(tmp_path: Path) -> None:
    """Two servers on a host may run stubs of the same models: the probe looks at the one on its port only."""
    listener = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import socket,sys,time; s=socket.socket(); s.bind(('127.0.0.1',0)); s.listen();"
            "print(s.getsockname()[1], flush=True); time.sleep(30)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert listener.stdout is not None
        port = int(listener.stdout.readline())
        assert stub_health.listening_pid(port) == listener.pid
    finally:
        listener.kill()
        listener.wait()
    assert stub_health.listening_pid(port) is None

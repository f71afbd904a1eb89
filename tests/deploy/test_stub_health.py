"""Reading stubs from /proc and deciding which models are broken, on a /proc written by the test."""

from __future__ import annotations

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
    _process(tmp_path, 11, [STUB, "/m/dlrm_router/1/model.py", "region", "DEFAULT"], "S", 10, "triton (stub) x")
    _process(tmp_path, 12, [STUB, "/m/dlrm_shards_0/1/model.py", "region"], "T", 10)
    _process(tmp_path, 13, [STUB, "/other/dlrm_router/1/model.py", "region"], "S", 99)  # another server's
    _process(tmp_path, 14, ["python", "/m/dlrm_router/1/model.py"], "S", 10)  # not a stub
    (tmp_path / "self").mkdir()
    mine = stub_health.stub_processes(10, proc=tmp_path)
    assert sorted(mine, key=lambda stub: stub.pid) == [
        StubProcess(11, "dlrm_router", "S"),
        StubProcess(12, "dlrm_shards_0", "T"),
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

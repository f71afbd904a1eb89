"""The control channel between `recgen serve` and `recgen update`: its protocol, its socket, aborts on a lost session.

The deployment behind the channel here records what it is asked to do; the real ones (one server, the local
topology) are driven through this same channel by tests/deploy/test_update.py.
"""

from __future__ import annotations

import contextlib
import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from generator.deploy import control
from generator.errors import ServerUnreachableError, UpdateError, UserInputError
from generator.planning.plan import uniform_plan
from generator.repository import build
from generator.repository.configs import LeafOptions
from generator.repository.generation import PendingGeneration, write_generation
from tests.conftest import tiny_model


class RecordingDeployment:
    """A deployment that records each call (and fails prepare when told)."""

    def __init__(self, fail_prepare: bool = False):
        self.calls: list[str] = []
        self.fail_prepare = fail_prepare

    def describe(self) -> dict[str, Any]:
        self.calls.append("describe")
        return {"layout": "single", "generation": 1}

    def prepare(self, pending: PendingGeneration, echo: control.Echo) -> list[str]:
        self.calls.append(f"prepare {pending.generation}")
        echo("loading")
        if self.fail_prepare:
            raise UpdateError("model 'dlrm__g2_dense' of the new generation failed to load")
        return [pending.candidate("dlrm")]

    def commit(self, pending: PendingGeneration, echo: control.Echo) -> dict[str, Any]:
        self.calls.append(f"commit {pending.generation}")
        return {"switch_s": 0.01}

    def abort(self, pending: PendingGeneration, echo: control.Echo) -> None:
        self.calls.append(f"abort {pending.generation}")


@pytest.fixture
def pending(tmp_path: Path) -> PendingGeneration:
    model = tiny_model()
    built = build.build(model, uniform_plan(model), tmp_path / "repo", tmp_path / "ens")
    return write_generation(model, uniform_plan(model), built.repository, built.ensembles, LeafOptions())  # type: ignore[arg-type]


@pytest.fixture
def runtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "run"
    directory.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(directory))
    return directory


@contextlib.contextmanager
def _serving(deployment: RecordingDeployment, sessions: int) -> Iterator[control.ControlServer]:
    server = control.ControlServer(control.socket_path(18000), deployment, echo=lambda _: None)
    server.start()

    def loop() -> None:
        for _ in range(sessions):
            while not server.serve_pending(0.05):
                pass

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        thread.join(timeout=30)
        server.close()


def test_a_session_describes_prepares_and_commits(runtime: Path, pending: PendingGeneration) -> None:
    deployment = RecordingDeployment()
    progress: list[str] = []
    with _serving(deployment, sessions=1) as server:
        assert stat.S_IMODE(server.path.stat().st_mode) == 0o600
        assert stat.S_IMODE(server.path.parent.stat().st_mode) == 0o700
        with control.ControlClient(control.socket_path(18000), progress.append) as client:
            assert client.request("describe")["deployment"]["generation"] == 1
            answer = client.request("prepare", pending=str(Path(pending.staging) / "pending.json"))
            assert answer["candidates"] == ["dlrm__g2"]
            assert client.request("commit")["times"] == {"switch_s": 0.01}
            with pytest.raises(UpdateError, match="unexpected command 'commit'"):
                client.request("commit")  # nothing prepared any more
    assert deployment.calls == ["describe", "prepare 2", "commit 2"]
    assert progress == ["loading"]
    assert not control.socket_path(18000).exists()  # closed with the server


def test_a_session_lost_before_the_switch_is_aborted(runtime: Path, pending: PendingGeneration) -> None:
    deployment = RecordingDeployment()
    with (
        _serving(deployment, sessions=1),
        control.ControlClient(control.socket_path(18000), lambda _: None) as client,
    ):
        client.request("prepare", pending=str(Path(pending.staging) / "pending.json"))  # then goes away
    assert deployment.calls == ["prepare 2", "abort 2"]


def test_a_failed_prepare_undoes_itself_and_says_why(runtime: Path, pending: PendingGeneration) -> None:
    deployment = RecordingDeployment(fail_prepare=True)
    with (
        _serving(deployment, sessions=1),
        control.ControlClient(control.socket_path(18000), lambda _: None) as client,
    ):
        with pytest.raises(UpdateError, match=r"dlrm__g2_dense.*failed to load"):
            client.request("prepare", pending=str(Path(pending.staging) / "pending.json"))
        with pytest.raises(UpdateError, match="unexpected command 'commit'"):
            client.request("commit")
    assert deployment.calls == ["prepare 2", "abort 2"]


def test_no_serve_no_second_serve_and_no_shared_directory(runtime: Path, tmp_path: Path) -> None:
    with pytest.raises(ServerUnreachableError, match=r"no `recgen serve` listens on .*serve-18000\.sock"):
        control.ControlClient(control.socket_path(18000))
    first = control.ControlServer(control.socket_path(18000), RecordingDeployment())
    first.start()
    try:
        with pytest.raises(UserInputError, match="another `recgen serve` already listens"):
            control.ControlServer(control.socket_path(18000), RecordingDeployment()).start()
    finally:
        first.close()
    stale = control.ControlServer(control.socket_path(18000), RecordingDeployment())
    control.socket_path(18000).touch()  # a socket file left by a serve that is gone
    stale.start()
    stale.close()
    (runtime / "recgen").chmod(0o755)
    with pytest.raises(UserInputError, match="open to other users"):
        control.socket_path(18000)
    os.chmod(runtime / "recgen", 0o700)

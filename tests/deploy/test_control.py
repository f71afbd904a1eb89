"""The control channel between `recgen serve` and `recgen update`: its protocol, its socket, aborts on a lost session.

The deployment behind the channel here records what it is asked to do; the real ones (one server, the local
topology) are driven through this same channel by tests/deploy/test_update.py.
"""

from __future__ import annotations

import contextlib
import os
import stat
import time
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
    try:
        yield server
    finally:
        deadline = time.monotonic() + 30
        while server.sessions_done < sessions and time.monotonic() < deadline:
            time.sleep(0.01)
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


def test_a_silent_session_is_dropped_in_seconds_and_pings_keep_one_alive(
    runtime: Path, pending: PendingGeneration, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(control, "SESSION_IDLE_S", 1.5)
    monkeypatch.setattr(control, "PING_S", 0.1)
    deployment = RecordingDeployment()
    with _serving(deployment, sessions=2) as server:
        with control.ControlClient(control.socket_path(18000), lambda _: None) as client:
            client.request("prepare", pending=str(Path(pending.staging) / "pending.json"))
            with client.keepalive():
                time.sleep(4.5)  # working (checking candidates) three times longer than the idle limit
            assert client.request("commit")["times"] == {"switch_s": 0.01}
        deadline = time.monotonic() + 10
        while server.sessions_done < 1 and time.monotonic() < deadline:  # serve sees the first one end
            time.sleep(0.01)
        with control.ControlClient(control.socket_path(18000), lambda _: None) as client:
            client.request("prepare", pending=str(Path(pending.staging) / "pending.json"))
            started = time.monotonic()
            while server.sessions_done < 2 and time.monotonic() - started < 10:
                time.sleep(0.05)  # says nothing
            assert server.sessions_done == 2 and time.monotonic() - started < 6
    assert deployment.calls == ["prepare 2", "commit 2", "prepare 2", "abort 2"]


class SlowDeployment(RecordingDeployment):
    """Prepare takes a while, as loading a generation does."""

    def prepare(self, pending: PendingGeneration, echo: control.Echo) -> list[str]:
        time.sleep(1.0)
        return super().prepare(pending, echo)


def test_a_second_update_is_refused_and_the_changing_models_are_named(
    runtime: Path, pending: PendingGeneration
) -> None:
    deployment = SlowDeployment()
    with _serving(deployment, sessions=1) as server, control.ControlClient(control.socket_path(18000)) as first:
        if True:  # the first session, still preparing
            first._stream.write('{"command": "prepare", "pending": "%s"}\n' % (Path(pending.staging) / "pending.json"))
            first._stream.flush()
            deadline = time.monotonic() + 5
            while not server.changing() and time.monotonic() < deadline:
                time.sleep(0.01)
            assert server.changing() == {*pending.new_leaves, "dlrm__g2", *(
                [pending.candidate(e) for e in pending.ensembles])}  # fmt: skip
            second = control.ControlClient(control.socket_path(18000), lambda _: None)
            with second, pytest.raises(UpdateError, match="another `recgen update` is in progress"):
                second.request("describe")
    assert server.changing() == frozenset()


def test_a_session_right_after_another_closed_is_admitted(runtime: Path) -> None:
    """`recgen update` reads the settings in one session and updates in the next, back to back."""
    deployment = RecordingDeployment()
    with _serving(deployment, sessions=20):
        for _ in range(20):
            with control.ControlClient(control.socket_path(18000), lambda _: None) as channel:
                assert channel.request("describe")["deployment"]["generation"] == 1
    assert deployment.calls == ["describe"] * 20


def test_closing_the_server_ends_a_session_at_once_and_removes_what_it_prepared(
    runtime: Path, pending: PendingGeneration
) -> None:
    deployment = RecordingDeployment()
    server = control.ControlServer(control.socket_path(18000), deployment, echo=lambda _: None)
    server.start()
    client = control.ControlClient(control.socket_path(18000), lambda _: None)
    try:
        client.request("prepare", pending=str(Path(pending.staging) / "pending.json"))
        started = time.monotonic()
        server.close()  # SIGTERM to `recgen serve` does this
        assert time.monotonic() - started < 2 and deployment.calls == ["prepare 2", "abort 2"]
        with pytest.raises(UpdateError, match="closed the control channel"):
            client.request("commit")
    finally:
        client.close()

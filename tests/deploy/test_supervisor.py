"""Faults on the embedded server: a dead or paused stub is found and its model restored; the admin APIs are closed."""

from __future__ import annotations

import dataclasses
import os
import signal
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from generator import triton_runtime
from generator.check import client
from generator.deploy import server as serve
from generator.deploy import stub_health
from generator.deploy.supervisor import Supervisor, Watched
from generator.planning.plan import uniform_plan
from generator.repository import build
from generator.traffic.requests import random_request, reference_scores
from tests.conftest import requires_server, tiny_model

#: Seconds the supervisor gets to find and restore a broken model (the goal is 10 s).
RECOVERY_DEADLINE_S = 15.0
SHARD_MODEL = "dlrm_shards_0"
RESTRICTED = f"This API is restricted, expecting header '{triton_runtime.ADMIN_HEADER}'"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> build.BuildResult:
    """Every step a Python model, so each has a stub to break (native steps have none: a crash stops the server)."""
    tmp_path = tmp_path_factory.mktemp("supervised")
    model = tiny_model()
    plan = dataclasses.replace(uniform_plan(model, shards_per_table=1, lookup_step="separate"), lookup_engine="python")
    return build.build(model, plan, tmp_path / "repo", tmp_path / "ens")


@pytest.fixture
def supervised(
    served: build.BuildResult, server_factory: Callable[[build.BuildResult], serve.TritonServer]
) -> Iterator[tuple[serve.TritonServer, list[str]]]:
    """A server whose supervisor looks every 0.1 s in a thread (the CLI runs the same loop in its main thread)."""
    server = server_factory(served)
    events: list[str] = []
    supervisor = Supervisor([Watched("tritonserver", lambda: server)], events.append, poll_s=0.1)
    stopped = threading.Event()

    def watch() -> None:
        while not stopped.is_set():
            supervisor.check_once()
            stopped.wait(0.1)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    yield server, events
    stopped.set()
    thread.join(timeout=10)


def _shard_stub(server: serve.TritonServer) -> int:
    (stub,) = [stub for stub in stub_health.stub_processes(server.pid) if stub.model == SHARD_MODEL]
    return stub.pid


def _assert_serves_pytorch_scores(server: serve.TritonServer) -> None:
    model = tiny_model()
    request = random_request(model, 16, np.random.default_rng(3))
    deadline = time.monotonic() + RECOVERY_DEADLINE_S
    with client.RankingClient(server.grpc_url, "grpc", timeout_s=5) as ranking:
        while True:
            try:
                served_scores = ranking.score(request)
                break
            except InferenceServerException:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
    np.testing.assert_allclose(served_scores, reference_scores(model, request), atol=client.SCORE_TOLERANCE)


def _wait_for(events: list[str], text: str) -> None:
    deadline = time.monotonic() + RECOVERY_DEADLINE_S
    while not any(text in event for event in events):
        assert time.monotonic() < deadline, f"no {text!r} in the supervisor's events {events}"
        time.sleep(0.05)


@requires_server
@pytest.mark.server
def test_the_probe_names_a_model_whose_stub_died_though_triton_says_ready(
    served: build.BuildResult, server_factory: Callable[[build.BuildResult], serve.TritonServer]
) -> None:
    server = server_factory(served)  # no supervisor: what the Kubernetes exec probe sees
    assert stub_health.probe(server.http_url, server.pid) == []
    os.kill(_shard_stub(server), signal.SIGKILL)
    time.sleep(0.3)
    assert server.model_ready(SHARD_MODEL)  # Triton 2.51 itself does not notice
    (problem,) = stub_health.probe(server.http_url, server.pid)
    assert problem.startswith(f"model {SHARD_MODEL!r}: ") and ("is dead" in problem or "0 of its 1" in problem)
    assert stub_health.main(["--port", str(server.http_port)]) == 1


@requires_server
@pytest.mark.server
@pytest.mark.parametrize("fault", ["kill", "pause"])
def test_a_dead_or_paused_stub_is_restored_and_scores_match_pytorch(
    supervised: tuple[serve.TritonServer, list[str]], fault: str
) -> None:
    server, events = supervised
    _assert_serves_pytorch_scores(server)
    stub = _shard_stub(server)
    os.kill(stub, signal.SIGKILL if fault == "kill" else signal.SIGSTOP)
    _wait_for(events, f"model {SHARD_MODEL!r} restored")
    reasons = ("is paused",) if fault == "pause" else ("is dead", "0 of its 1 stub(s) alive")
    assert any(reason in event for event in events for reason in reasons), events
    assert not os.path.exists(f"/proc/{stub}/cmdline") or "Z" in Path(f"/proc/{stub}/stat").read_text()
    assert _shard_stub(server) != stub
    _assert_serves_pytorch_scores(server)
    assert stub_health.probe(server.http_url, server.pid) == []


@requires_server
@pytest.mark.server
def test_admin_apis_need_the_servers_key(
    served: build.BuildResult, server_factory: Callable[[build.BuildResult], serve.TritonServer]
) -> None:
    server = server_factory(served)
    plain = httpclient.InferenceServerClient(server.http_url)
    with pytest.raises(InferenceServerException, match=RESTRICTED):
        plain.register_system_shared_memory("stub_region", "/triton_python_backend_shm_region_x", 1 << 20)
    with pytest.raises(InferenceServerException, match=RESTRICTED):
        plain.update_log_settings({"log_verbose_level": 1})
    with pytest.raises(InferenceServerException, match=RESTRICTED):
        plain.unload_model(SHARD_MODEL)
    assert server.model_ready(SHARD_MODEL)
    keyed = {triton_runtime.ADMIN_HEADER: server.admin_key}
    assert plain.get_log_settings(headers=keyed)["log_verbose_level"] == 0
    plain.close()


@requires_server
@pytest.mark.server
def test_the_ensemble_stays_up_while_each_broken_step_is_reloaded_under_load(
    supervised: tuple[serve.TritonServer, list[str]],
) -> None:
    server, events = supervised
    model = tiny_model()
    requests = [random_request(model, 16, np.random.default_rng(seed)) for seed in range(4)]
    errors: list[str] = []
    answered = [0]
    ensemble_unready: list[float] = []
    stop = threading.Event()

    def load() -> None:
        with client.RankingClient(server.grpc_url, "grpc", timeout_s=10) as ranking:
            for index in range(100_000):  # bounded in count and time (the test stops it)
                if stop.is_set():
                    break
                try:
                    ranking.score(requests[index % len(requests)])
                    answered[0] += 1
                except InferenceServerException as error:
                    errors.append(str(error))

    answered_ready = [0]

    def readiness() -> None:
        for _ in range(10_000):  # bounded in count and time
            if stop.wait(0.02):
                break
            try:  # an answer other than 200 is a failure; no answer within the timeout (a busy machine) is none
                with urllib.request.urlopen(f"http://{server.http_url}/v2/models/dlrm/ready", timeout=5) as answer:
                    answered_ready[0] += int(answer.status == 200)
            except urllib.error.HTTPError as error:
                ensemble_unready.append(float(error.code))
            except OSError:
                continue

    threads = [threading.Thread(target=load) for _ in range(2)] + [threading.Thread(target=readiness)]
    for thread in threads:
        thread.start()
    try:
        for step in ("dlrm_router", SHARD_MODEL, "dlrm_dense"):  # one after the other, on one server
            time.sleep(0.5)
            (stub,) = [s.pid for s in stub_health.stub_processes(server.pid) if s.model == step and not s.broken]
            os.kill(stub, signal.SIGKILL)
            _wait_for(events, f"model {step!r} restored")
        time.sleep(0.5)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
    assert answered[0] > 0 and answered_ready[0] > 10, (answered, answered_ready)
    assert not ensemble_unready, f"the ensemble was not ready during a reload (HTTP {ensemble_unready})"
    assert not [error for error in errors if "NOT_FOUND" in error or "no available versions" in error], errors
    assert len(errors) <= 30, errors  # only what the dead instances held: 2 to 4 per kill were seen
    _assert_serves_pytorch_scores(server)


@requires_server
@pytest.mark.server
def test_an_ensemble_unloaded_through_the_admin_api_is_loaded_again(
    supervised: tuple[serve.TritonServer, list[str]],
) -> None:
    server, events = supervised
    assert stub_health.probe(server.http_url, server.pid, models=["dlrm"]) == []
    server.admin("unload", "dlrm")
    _wait_for(events, "model 'dlrm' restored")
    assert any("model 'dlrm' is broken (no longer loaded)" in event for event in events), events
    assert server.model_ready("dlrm")
    _assert_serves_pytorch_scores(server)


@requires_server
@pytest.mark.server
def test_the_probe_names_an_unloaded_ensemble_though_triton_says_ready(
    served: build.BuildResult, server_factory: Callable[[build.BuildResult], serve.TritonServer]
) -> None:
    server = server_factory(served)  # no supervisor
    server.admin("unload", "dlrm")
    deadline = time.monotonic() + RECOVERY_DEADLINE_S
    while not stub_health.server_ready(server.http_url):  # not ready only while the unload is in progress
        assert time.monotonic() < deadline, "the server's readiness stayed down after the unload"
        time.sleep(0.05)
    # Triton 2.51's own readiness answers 200 again without the ensemble; the probe does not
    assert stub_health.probe(server.http_url, server.pid, models=["dlrm"]) == ["model 'dlrm' is not loaded and ready"]
    assert stub_health.main(["--port", str(server.http_port), "--model", "dlrm"]) == 1

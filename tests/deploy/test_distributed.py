"""The distributed layout: one repository per shard group, a front whose remote steps call them over gRPC."""

import dataclasses
import json
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from generator import naming
from generator.check import client
from generator.check.client import RankingClient
from generator.deploy.distributed import build_distributed
from generator.deploy.local import LocalTopology
from generator.deploy.supervisor import Supervisor
from generator.errors import OutputExistsError
from generator.model.imported import import_module
from generator.planning.plan import Placement, Plan, table_plan, uniform_plan
from generator.repository import dense_graphs
from generator.repository.params import RemoteCallPolicy
from generator.repository.validation import parse_strict
from generator.traffic.requests import RankingRequest, random_request, reference_scores
from generator.triton_models import remote_group_model as remote
from tests.conftest import SERVER_READY_TIMEOUT_S, requires_server, tiny_model
from tests.model import zoo

DEADLINE_S = 1.5


def two_group_plan() -> Plan:
    """medium's hot rows (permuted) on 2 replicas, everything else on 1: two shard groups."""
    model = tiny_model()
    one_row, small, medium = model.tables
    order = np.random.default_rng(0).permutation(1000)
    return Plan(
        "dlrm",
        (
            table_plan(one_row, [0, 1], [Placement()]),
            table_plan(small, [0, 3, 7], [Placement(), Placement()]),
            table_plan(medium, [0, 10, 1000], [Placement(2), Placement()], row_order=order),
        ),
    )


def test_layout_has_a_front_and_one_repository_per_group(tmp_path: Path) -> None:
    plan = two_group_plan()
    policy = RemoteCallPolicy(deadline_s=DEADLINE_S)
    per_shard = build_distributed(tiny_model(), plan, tmp_path / "per-shard")
    assert [g.model for g in per_shard.groups] == [
        "dlrm_shard_one_row_0", "dlrm_shard_small_0", "dlrm_shard_small_1", "dlrm_shard_medium_0",
        "dlrm_shard_medium_1",
    ]  # fmt: skip
    assert [g.replica_servers for g in per_shard.groups] == [1, 1, 1, 2, 1]
    result = build_distributed(tiny_model(), plan, tmp_path / "dist", policy=policy, group_by="placement")
    groups = {g.model: g for g in result.groups}
    assert {g.replica_servers for g in groups.values()} == {1, 2}
    topology = json.loads((tmp_path / "dist" / naming.TOPOLOGY_FILE).read_text())
    assert topology["remote_call"]["deadline_s"] == DEADLINE_S
    assert [g["model"] for g in topology["groups"]] == list(groups)
    front = {path.name for path in result.front.iterdir() if path.is_dir()}
    assert front == {"dlrm", "dlrm_router", "dlrm_profile", "dlrm_dense", *groups}
    for name, group in groups.items():
        repository = result.group_repository(group)
        assert sorted(p.name for p in repository.iterdir()) == [name, naming.CONTENTS_FILE]
        served = parse_strict((repository / name / naming.CONFIG_FILE).read_text())
        assert served.instance_group[0].count == 1  # the plan's count is the number of replica servers
        step = parse_strict((result.front / name / naming.CONFIG_FILE).read_text())
        assert step.instance_group[0].count == group.replica_servers
        assert list(step.input) == list(served.input) and list(step.output) == list(served.output)
        settings = json.loads(step.parameters["remote"].string_value)
        assert settings["endpoints"] == [f"{naming.service_name(name)}:8001"]
    assert "recgen serve --distributed" in str(result)
    noted = dataclasses.replace(result.models[0], notes=("what the build wants said",))
    assert f"  {noted.name}: what the build wants said" in str(dataclasses.replace(result, models=(noted,)))
    with pytest.raises(OutputExistsError):
        build_distributed(tiny_model(), plan, tmp_path / "dist", group_by="placement")


def test_failed_distributed_build_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_export(*args: object) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(dense_graphs, "export_dense", broken_export)  # fails after the group repositories are written
    with pytest.raises(RuntimeError, match="disk full"):
        build_distributed(tiny_model(), two_group_plan(), tmp_path / "dist")
    assert list(tmp_path.iterdir()) == []


class FakeClient:
    """A replica that answers, or fails with a gRPC status (the retry logic only, no server)."""

    def __init__(self, endpoint: str, behaviour: dict[str, str], calls: list[str]):
        self.endpoint, self.behaviour, self.calls = endpoint, behaviour, calls

    def call(self, settings, tensors, timeout_s):
        self.calls.append(self.endpoint)
        status = self.behaviour.get(self.endpoint, "OK")
        if status != "OK":
            error = RuntimeError(f"{status.lower()} at {self.endpoint}")
            error.status = lambda: f"StatusCode.{status}"  # tritonclient's InferenceServerException shape
            raise error
        assert [name for name, _ in settings.inputs] == list(tensors)
        return np.full((tensors["in"].shape[0], 2), float(self.endpoint[-1]), dtype=np.float32)

    def close(self):
        pass


def remote_group(behaviour: dict[str, str], endpoints=("10.0.0.1:1", "10.0.0.2:2"), attempts=3):
    calls: list[str] = []
    settings = remote.RemoteSettings("dlrm_shards_1", (("in", "INT32"),), "out", endpoints, 1.0, attempts, 0.01, 30.0)
    clock = [0.0]
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        clock[0] += seconds

    group = remote.RemoteGroup(settings, lambda e: FakeClient(e, behaviour, calls), lambda: clock[0], sleep)
    return group, calls, sleeps


def test_remote_calls_round_robin_and_fail_over_on_unavailable() -> None:
    group, calls, sleeps = remote_group({})
    ids = np.zeros((3, 4), np.int32)
    assert [group.infer({"in": ids})[0, 0] for _ in range(4)] == [1, 2, 1, 2]
    group, calls, sleeps = remote_group({"10.0.0.1:1": "UNAVAILABLE"})
    assert [group.infer({"in": ids})[0, 0] for _ in range(2)] == [2, 2]
    assert calls == ["10.0.0.1:1", "10.0.0.2:2", "10.0.0.2:2"]
    assert sleeps == [0.01]


def test_remote_errors_name_the_group_and_every_endpoint_tried() -> None:
    group, calls, sleeps = remote_group({"10.0.0.1:1": "UNAVAILABLE", "10.0.0.2:2": "UNAVAILABLE"})
    with pytest.raises(remote.RemoteCallError, match=r"shard group 'dlrm_shards_1'.*3 attempt") as error:
        group.infer({"in": np.zeros((1, 4), np.int32)})
    assert "10.0.0.1:1: UNAVAILABLE" in str(error.value) and "10.0.0.2:2: UNAVAILABLE" in str(error.value)
    assert sleeps == [0.01, 0.02]  # exponential backoff, none after the last attempt
    group, calls, _ = remote_group({"10.0.0.1:1": "INVALID_ARGUMENT"})
    with pytest.raises(remote.RemoteCallError, match="INVALID_ARGUMENT"):
        group.infer({"in": np.zeros((1, 4), np.int32)})
    assert calls == ["10.0.0.1:1"]  # not retried: another replica would say the same


def test_endpoints_from_environment_and_dns() -> None:
    config = {"parameters": {"remote": {"string_value": json.dumps({
        "model": "dlrm_shards_0", "inputs": [{"name": "a", "dtype": "INT32"}], "output": "b",
        "endpoints": ["dlrm-shards-0:8001"], "deadline_s": 2, "max_attempts": 3, "backoff_s": 0.05,
        "resolve_interval_s": 30,
    })}}}  # fmt: skip
    assert remote.load_settings(config, {}).endpoints == ("dlrm-shards-0:8001",)
    environ = {naming.endpoints_env_var("dlrm_shards_0"): "127.0.0.1:9001, 127.0.0.1:9002"}
    assert remote.load_settings(config, environ).endpoints == ("127.0.0.1:9001", "127.0.0.1:9002")
    assert naming.endpoints_env_var("dlrm_shards_0") == "RECGEN_ENDPOINTS_DLRM_SHARDS_0"
    assert "127.0.0.1:8001" in remote.resolve_endpoints(("localhost:8001",))
    assert remote.resolve_endpoints(("no-such-host.invalid:8001",)) == ["no-such-host.invalid:8001"]


@pytest.fixture
def topology(tmp_path: Path, request: pytest.FixtureRequest):
    policy = RemoteCallPolicy(deadline_s=DEADLINE_S)
    result = build_distributed(tiny_model(), two_group_plan(), tmp_path / "dist", policy=policy, group_by="placement")
    logs = tmp_path / "logs"
    logs.mkdir()
    local = LocalTopology(result.root, log_dir=logs)
    try:
        local.start(timeout_s=SERVER_READY_TIMEOUT_S)
        yield result, local
    finally:
        local.close()
        if request.node.rep_call.failed if hasattr(request.node, "rep_call") else False:
            for log in sorted(logs.iterdir()):
                sys.stderr.write(f"\n===== {log} =====\n{log.read_text(errors='replace')[-8000:]}\n")


def _scores_match(local: LocalTopology, protocol: str, request: RankingRequest) -> None:
    url = local.front.grpc_url if protocol == "grpc" else local.front.http_url
    with RankingClient(url, protocol, timeout_s=30) as ranking:
        served = ranking.score(request)
    np.testing.assert_allclose(served, reference_scores(tiny_model(), request), atol=1e-5)


def _wait_until_served(local: LocalTopology, request: RankingRequest, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            _scores_match(local, "grpc", request)
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@requires_server
def test_local_topology_serves_pytorch_scores_and_survives_a_replica(topology) -> None:
    result, local = topology
    rng = np.random.default_rng(1)
    requests = [random_request(tiny_model(), batch, rng) for batch in (1, 64, 200)]
    for request in requests:
        for protocol in ("grpc", "http"):
            _scores_match(local, protocol, request)
    assert "front" in str(local) and all(g.model in str(local) for g in result.groups)

    replicated = next(g.model for g in result.groups if g.replica_servers == 2)
    single = next(g.model for g in result.groups if g.replica_servers == 1)
    local.stop_replica(replicated, 0)
    for request in requests * 2:  # round robin reaches the stopped replica: retried on the other one
        _scores_match(local, "grpc", request)

    local.stop_replica(single, 0)
    started = time.monotonic()
    with (
        RankingClient(local.front.grpc_url, "grpc", timeout_s=30) as ranking,
        pytest.raises(Exception, match=rf"shard group '{single}'.*127\.0\.0\.1:\d+: UNAVAILABLE") as error,
    ):
        ranking.score(requests[1])
    assert time.monotonic() - started < DEADLINE_S + 2.0, "a request for a stopped shard must fail, not hang"
    assert "did not answer" in str(error.value)

    local.start_replica(single, 0, timeout_s=SERVER_READY_TIMEOUT_S)
    local.start_replica(replicated, 0, timeout_s=SERVER_READY_TIMEOUT_S)
    _wait_until_served(local, requests[0])  # the front's channels reconnect within their 1 s maximum backoff
    for request in requests * 2:
        _scores_match(local, "grpc", request)

    # A replica that hangs (accepts connections, never answers) costs one deadline, not a stuck front.
    hung = local.replicas[single][0].process
    os.kill(hung.pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        with (
            RankingClient(local.front.grpc_url, "grpc", timeout_s=30) as ranking,
            pytest.raises(Exception, match=rf"shard group '{single}'.*DEADLINE_EXCEEDED"),
        ):
            ranking.score(requests[0])
        assert time.monotonic() - started < DEADLINE_S + 2.0
    finally:
        os.kill(hung.pid, signal.SIGCONT)
    _scores_match(local, "grpc", requests[0])


@requires_server
def test_an_imported_weighted_model_is_served_by_the_local_topology(tmp_path: Path) -> None:
    """Remote steps forward every group input (the ids and their weights); the ranking ensemble works across."""
    model = import_module(
        zoo.TwoTower(weighted=True).eval(), zoo.two_tower_example(weighted=True), max_ids={"*": 4}
    ).with_user_side(["viewed"])
    plan = uniform_plan(model, name="towers", shards_per_table=2, group_by="shard")
    result = build_distributed(model, plan, tmp_path / "dist", policy=RemoteCallPolicy(deadline_s=DEADLINE_S))
    logs = tmp_path / "logs"
    logs.mkdir()
    local = LocalTopology(result.root, log_dir=logs)
    try:
        local.start(timeout_s=SERVER_READY_TIMEOUT_S)
        for protocol, url in (("grpc", local.front.grpc_url), ("http", local.front.http_url)):
            report = client.check(model, url, protocol=protocol, model_name="towers", requests=2, batch_size=33)
            assert report.passed, report
            report = client.check(
                model, url, protocol=protocol, model_name="towers_ranking", requests=2, batch_size=9, structured=True
            )
            assert report.passed, report
    except Exception:
        for log in sorted(logs.iterdir()):
            sys.stderr.write(f"\n===== {log} =====\n{log.read_text(errors='replace')[-8000:]}\n")
        raise
    finally:
        local.close()


@requires_server
def test_the_supervisor_restarts_a_dead_replica_on_its_ports_and_keeps_the_rest_up(topology) -> None:
    result, local = topology
    request = random_request(tiny_model(), 32, np.random.default_rng(4))
    events: list[str] = []
    supervisor = Supervisor(local.watched(), events.append, poll_s=0.1)
    single = next(g.model for g in result.groups if g.replica_servers == 1)
    victim = local.replicas[single][0]
    front_pid, ports = local.front.pid, (victim.http_port, victim.grpc_port)
    os.kill(victim.process.pid, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while not any("restarted" in event for event in events):
        assert time.monotonic() < deadline, events
        supervisor.check_once()
        time.sleep(0.1)
    assert any(f"{single}[0]: tritonserver exited on signal SIGKILL" in event for event in events), events
    restarted = local.replicas[single][0]
    assert restarted is not victim and (restarted.http_port, restarted.grpc_port) == ports
    assert local.front.pid == front_pid and not local.front.exited
    _wait_until_served(local, request)

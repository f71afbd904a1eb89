"""The queue policy every step gets from the latency target, in the configs and on the real server."""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from generator import triton_runtime
from generator.check.client import RankingClient
from generator.check.loadtest import count_rejections
from generator.errors import UserInputError
from generator.planning import queueing
from generator.planning.plan import uniform_plan
from generator.planning.plan_file import load_plan, save_plan
from generator.repository import build
from generator.repository.validation import parse_strict
from generator.traffic.requests import random_request, reference_scores
from tests.conftest import requires_server, tiny_model


def test_the_target_splits_over_the_steps_and_the_queue_holds_what_the_instances_drain() -> None:
    policy = queueing.queue_policy(2000.0, instances=1)
    assert policy.timeout_us == round(2000e3 * queueing.QUEUE_SHARE)
    assert policy.max_queue_size == int(
        np.ceil(queueing.QUEUE_BOUND_FACTOR * policy.timeout_us * 1e-6 / queueing.STEP_FLOOR_S)
    )
    drained_by_four = np.ceil(queueing.QUEUE_BOUND_FACTOR * 4 * policy.timeout_us * 1e-6 / queueing.STEP_FLOOR_S)
    assert queueing.queue_policy(2000.0, instances=4).max_queue_size == int(drained_by_four)
    assert queueing.queue_policy(1.0, instances=3).max_queue_size == 16  # ceil(8 x 3 x 0.5 ms / 0.75 ms)
    assert "queue <= 10667 requests, rejected after 1000 ms" in str(policy)
    for bad in (0.5, 0.0, -1.0, 1e9, float("nan")):
        with pytest.raises(UserInputError, match=r"`latency_slo_ms` must be in \[1, 60000\] ms"):
            queueing.queue_policy(bad, 1)


def test_every_serving_config_rejects_past_its_timeout_and_the_plan_keeps_the_target(tmp_path: Path) -> None:
    model = tiny_model()
    plan = uniform_plan(model, shards_per_table=2, instance_count=2, latency_slo_ms=30.0)
    save_plan(plan, tmp_path / "plan.json")
    assert load_plan(tmp_path / "plan.json").latency_slo_ms == 30.0
    result = build.build(model, plan, tmp_path / "repo", tmp_path / "ens")
    leaves = [path for path in (tmp_path / "repo").glob("*/config.pbtxt")]
    assert len(leaves) == len([m for m in result.models if m.role != "ensemble"])
    for path in leaves:
        config = parse_strict(path.read_text())
        expected = queueing.queue_policy(30.0, instances=config.instance_group[0].count)  # the profile model: 1
        queue = config.dynamic_batching.default_queue_policy
        assert queue.timeout_action == queue.REJECT, path
        assert (queue.default_timeout_microseconds, queue.max_queue_size) == (
            expected.timeout_us,
            expected.max_queue_size,
        ), path


def test_rejections_are_counted_apart_from_errors(tmp_path: Path) -> None:
    failures = tmp_path / "failures.csv"
    failures.write_text(
        "Method,Name,Error,Occurrences\n"
        "grpc,dlrm,\"InferenceServerException('[StatusCode.UNAVAILABLE] in ensemble, Request timeout expired')\",7\n"
        "grpc,dlrm,\"InferenceServerException('... Exceeds maximum queue size')\",5\n"
        "grpc,dlrm,\"CheckFailedError('scores differ')\",2\n"
    )
    assert count_rejections(failures) == 12
    assert count_rejections(tmp_path / "absent.csv") == 0


@requires_server
@pytest.mark.server
def test_overload_gets_fast_named_rejections_and_the_server_keeps_serving(tmp_path: Path, server_factory) -> None:
    model = tiny_model()
    plan = uniform_plan(model, shards_per_table=1, latency_slo_ms=1.0)  # 500 us per queue, 6 requests deep
    server = server_factory(build.build(model, plan, tmp_path / "repo", tmp_path / "ens"))
    request = random_request(model, 256, np.random.default_rng(0))
    outcomes: Counter[str] = Counter()
    lock = threading.Lock()

    def client() -> None:
        with RankingClient(server.grpc_url, "grpc", timeout_s=30) as ranking:
            for _ in range(25):
                try:
                    ranking.score(request)
                    outcome = "ok"
                except Exception as error:  # the test classifies every outcome below
                    outcome = next((m for m in triton_runtime.REJECTION_MESSAGES if m in str(error)), str(error))
                with lock:
                    outcomes[outcome] += 1

    threads = [threading.Thread(target=client) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert sum(outcomes.values()) == 12 * 25
    assert set(outcomes) <= {"ok", *triton_runtime.REJECTION_MESSAGES}, outcomes
    assert sum(outcomes[m] for m in triton_runtime.REJECTION_MESSAGES) > 0, outcomes
    with RankingClient(server.grpc_url, "grpc") as ranking:
        np.testing.assert_allclose(ranking.score(request), reference_scores(model, request), atol=1e-5)

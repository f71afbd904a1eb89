"""Shedding by the latency target: no queue policy in any config, the router's budget, and overload on a real server."""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from generator import triton_runtime
from generator.check.client import RankingClient
from generator.check.loadtest import count_rejections
from generator.errors import UserInputError
from generator.model.dlrm import DLRM, TableSpec
from generator.planning import queueing
from generator.planning.plan import uniform_plan
from generator.planning.plan_file import load_plan, save_plan
from generator.repository import build
from generator.repository.validation import parse_strict
from generator.traffic.requests import random_request, reference_scores
from generator.triton_models import recgen_admission as admission
from generator.triton_models import recgen_params as specs
from tests.conftest import requires_server, tiny_model


def test_the_budget_is_a_share_of_the_target_and_bad_targets_are_named() -> None:
    assert queueing.queue_budget_us(2000.0) == round(2000e3 * queueing.QUEUE_SHARE)
    assert queueing.queue_budget_us(1.0) == 500
    for bad in (0.5, 0.0, -1.0, 1e9, float("nan")):
        with pytest.raises(UserInputError, match=r"`latency_slo_ms` must be in \[1, 60000\] ms"):
            queueing.queue_budget_us(bad)


def test_no_config_has_a_queue_policy_and_every_router_sheds_by_the_target(tmp_path: Path) -> None:
    """A queue policy turns Triton 2.51's prefetching off, and with it come ~0.5 s stalls (docs/faults.md)."""
    tables = [TableSpec("history", 50, 4, 3, "user"), TableSpec("item", 30, 4, 1)]
    model = DLRM(num_dense_features=2, tables=tables, bottom_mlp=[4], top_mlp=[4, 1], seed=4).eval()
    plan = uniform_plan(model, shards_per_table=2, instance_count=2, latency_slo_ms=30.0)
    save_plan(plan, tmp_path / "plan.json")
    assert load_plan(tmp_path / "plan.json").latency_slo_ms == 30.0
    result = build.build(model, plan, tmp_path / "repo", tmp_path / "ens")
    leaves = [path for path in (tmp_path / "repo").glob("*/config.pbtxt")]
    assert len(leaves) == len([m for m in result.models if m.role != "ensemble"])
    routers = {}
    for path in leaves:
        config = parse_strict(path.read_text())
        assert config.HasField("dynamic_batching") and not config.dynamic_batching.HasField("default_queue_policy")
        assert not config.dynamic_batching.priority_levels, path
        if specs.AdmissionParams.PARAMETER in config.parameters:
            routers[path.parent.name] = specs.AdmissionParams.from_json(
                config.parameters[specs.AdmissionParams.PARAMETER].string_value
            )
    assert set(routers) == {"dlrm_router", "dlrm_router_ranking"}
    for name, spec in routers.items():
        assert spec.budget_us == 15_000
        assert spec.steps[0] == specs.AdmissionStep(name, 2)
        dense = "dlrm_dense" if name == "dlrm_router" else "dlrm_dense_ranking"
        assert spec.steps[-1] == specs.AdmissionStep(dense, 2)


def test_rejections_are_counted_apart_from_errors(tmp_path: Path) -> None:
    failures = tmp_path / "failures.csv"
    failures.write_text(
        "Method,Name,Error,Occurrences\n"
        "grpc,dlrm,\"InferenceServerException('[StatusCode.UNAVAILABLE] in ensemble, Request timeout expired')\",7\n"
        "grpc,dlrm,\"InferenceServerException('[StatusCode.UNAVAILABLE] overloaded: shed by the router: ...')\",4\n"
        "grpc,dlrm,\"InferenceServerException('... Exceeds maximum queue size')\",5\n"
        "grpc,dlrm,\"CheckFailedError('scores differ')\",2\n"
    )
    assert count_rejections(failures) == 16
    assert count_rejections(tmp_path / "absent.csv") == 0


@requires_server
@pytest.mark.server
def test_overload_gets_fast_named_rejections_and_the_server_keeps_serving(tmp_path: Path, server_factory) -> None:
    model = tiny_model()
    plan = uniform_plan(model, shards_per_table=1, latency_slo_ms=1.0)  # shed above 500 us of queueing
    server = server_factory(build.build(model, plan, tmp_path / "repo", tmp_path / "ens"))
    request = random_request(model, 256, np.random.default_rng(0))
    outcomes: Counter[str] = Counter()
    lock = threading.Lock()

    def client() -> None:
        with RankingClient(server.grpc_url, "grpc", timeout_s=30) as ranking:
            stop_at = time.monotonic() + 3.0
            for _ in range(2000):  # bounded in count and time
                if time.monotonic() > stop_at:
                    break
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
    assert set(outcomes) <= {"ok", admission.SHED_MESSAGE}, outcomes
    assert outcomes[admission.SHED_MESSAGE] > 0 and outcomes["ok"] > 0, outcomes
    # The load is gone: within a second of polls (the poller looks every BUSY_POLL_S) requests are admitted again.
    with RankingClient(server.grpc_url, "grpc") as ranking:
        deadline = time.monotonic() + admission.STALE_AFTER_S
        for _ in range(200):  # bounded in count and time
            try:
                scores = ranking.score(request)
                break
            except Exception as error:  # only a shed may come before the estimate has caught up
                assert admission.SHED_MESSAGE in str(error) and time.monotonic() < deadline, error
                time.sleep(admission.BUSY_POLL_S)
        np.testing.assert_allclose(scores, reference_scores(model, request), atol=1e-5)

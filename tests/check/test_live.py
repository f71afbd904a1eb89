"""Profiles recorded by a running server: exact across router instances, and planned like the same ids offline."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from generator.check import live
from generator.check.client import RankingClient
from generator.cli import main
from generator.errors import RecgenError
from generator.model.dlrm import DLRM, TableSpec
from generator.planning.memory import ModelShape
from generator.planning.plan import Placement, uniform_plan
from generator.planning.plan_file import save_plan
from generator.planning.planner import plan_from_report, plan_model
from generator.repository.build import build
from generator.traffic.profile import AccessProfile, table_access_from_ids, table_shapes, zipf_profile
from generator.traffic.requests import RankingRequest
from tests.conftest import requires_server

pytestmark = [pytest.mark.server, requires_server]


def _model() -> DLRM:
    tables = [TableSpec("history", 5000, 4, 6), TableSpec("item", 800, 4, 1), TableSpec("tiny", 3, 4, 2)]
    return DLRM(num_dense_features=2, tables=tables, bottom_mlp=[4], top_mlp=[4, 1], seed=4).eval()


def _zipf_ids(rng: np.random.Generator, rows: int, shape: tuple[int, int]) -> np.ndarray:
    ids = np.minimum(rng.zipf(1.3, shape) - 1, rows - 1)
    ids[rng.random(shape) < 0.2] = -1  # padding
    return ids.astype(np.int64)


def test_the_servers_profile_is_exact_across_instances_and_plans_like_the_same_ids_offline(
    tmp_path: Path, server_factory
) -> None:
    model, shape = _model(), ModelShape.of(_model())
    planned_from = zipf_profile(table_shapes(model.tables), 1.1, samples=5_000, seed=2)
    report = plan_model(shape, planned_from, target_qps=2_000, front_cache_bytes=512)
    plan = dataclasses.replace(plan_from_report(report, shape, planned_from), router=Placement(2))  # 2 count apart
    save_plan(plan, tmp_path / "plan.json", report)
    server = server_factory(build(model, plan, tmp_path / "r", tmp_path / "e"))
    rng = np.random.default_rng(7)
    sent: dict[str, list[np.ndarray]] = {t.name: [] for t in model.tables}
    samples = 0
    with RankingClient(server.grpc_url, "grpc", "dlrm") as client:
        for batch in rng.integers(1, 40, 60):
            sparse = {t.name: _zipf_ids(rng, t.num_rows, (int(batch), t.max_ids_per_sample)) for t in model.tables}
            client.score(RankingRequest(rng.standard_normal((int(batch), 2)).astype(np.float32), sparse))
            for name, ids in sparse.items():
                sent[name].append(ids.reshape(-1))
            samples += int(batch)
    offline = AccessProfile(
        tuple(table_access_from_ids(t.name, t.num_rows, np.concatenate(sent[t.name]), samples) for t in model.tables),
        "offline",
    )
    served = live.collect_profile(server.http_url, "http")
    assert "2 router counter sets" in served.source  # one per instance of the native router, as per Python stub
    for ours, theirs in zip(served.tables, offline.tables, strict=True):
        np.testing.assert_array_equal(ours.rows, theirs.rows)
        np.testing.assert_array_equal(ours.counts, theirs.counts)
        assert ours.samples == theirs.samples == samples
    for qps in (50, 5000):
        cuts = [
            [(s.table, s.row_start, s.row_end, s.replicas) for s in plan_model(shape, p, target_qps=qps).shards]
            for p in (served, offline)
        ]
        assert cuts[0] == cuts[1]
    out = tmp_path / "live.npz"
    result = CliRunner().invoke(main, [
        "profile", "--from-server", server.grpc_url, "--protocol", "grpc", "--reset", "--plan",
        str(tmp_path / "plan.json"), "-o", str(out),
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "drift against the plan's profile" in result.output and "front cache hit rate" in result.output
    assert AccessProfile.load(out).table("history").lookups == offline.table("history").lookups
    after = live.collect_profile(server.grpc_url, "grpc")  # the reset started a new window
    assert all(table.lookups == 0 and table.samples == 0 for table in after.tables)
    with pytest.raises(RecgenError, match="serves no 'other_profile'"):
        live.collect_profile(server.http_url, "http", "other")


def test_the_profiles_of_several_front_servers_are_summed(tmp_path: Path, server_factory) -> None:
    """Two servers of one build, as two front pods behind a Service: their counts add up to every id sent."""
    model = _model()
    built = build(model, uniform_plan(model), tmp_path / "r", tmp_path / "e")
    fronts = [server_factory(built), server_factory(built)]
    rng = np.random.default_rng(3)
    sent: dict[str, list[np.ndarray]] = {t.name: [] for t in model.tables}
    samples = 0
    for index, batch in enumerate(rng.integers(1, 30, 20)):
        sparse = {t.name: _zipf_ids(rng, t.num_rows, (int(batch), t.max_ids_per_sample)) for t in model.tables}
        with RankingClient(fronts[index % 2].grpc_url, "grpc", "dlrm") as client:
            client.score(RankingRequest(rng.standard_normal((int(batch), 2)).astype(np.float32), sparse))
        for name, ids in sparse.items():
            sent[name].append(ids.reshape(-1))
        samples += int(batch)
    out = tmp_path / "live.npz"
    arguments = ["profile", "-o", str(out)] + [f"--from-server={front.http_url}" for front in fronts]
    result = CliRunner().invoke(main, arguments)
    assert result.exit_code == 0, result.output
    served = AccessProfile.load(out)
    assert served.source.startswith("sum of live from") and served.source.count("router counter sets") == 2
    for table in model.tables:
        offline = table_access_from_ids(table.name, table.num_rows, np.concatenate(sent[table.name]), samples)
        np.testing.assert_array_equal(served.table(table.name).rows, offline.rows)
        np.testing.assert_array_equal(served.table(table.name).counts, offline.counts)
        assert served.table(table.name).samples == samples

import itertools
import math
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from generator.check import client
from generator.check.client import RankingClient
from generator.model.dlrm import TableSpec
from generator.planning import memory
from generator.planning.capacity import Capacity
from generator.planning.cuts import candidate_cuts, optimal_segmentation
from generator.planning.memory import ModelShape
from generator.planning.plan import uniform_plan
from generator.planning.plan_file import load_plan, row_order_path, save_plan
from generator.planning.planner import plan_from_report, plan_model, scale_to_load
from generator.planning.servers import ServerSize
from generator.repository import build
from generator.traffic.profile import AccessProfile, TableAccess, TableShape, zipf_profile
from generator.traffic.requests import random_request, reference_scores
from tests.conftest import requires_server, tiny_model, wide_model

#: The Python-backend figures of 2026-12-03 (compiled kernels), every replica a stub's overhead: fixed here, so the
#: expectations below do not move with the built-in defaults.
CAPACITY = Capacity(
    shard_fixed_s=200e-6, shard_per_row_s=17e-9, router_fixed_s=390e-6, router_per_id_s=18e-9,
    dense_samples_per_s=340_000.0, replica_overhead_bytes=1_000_000, lookup_replica_overhead_bytes=None,
)  # fmt: skip
#: The figures of the numpy kernels (calibrated before the compiled ones): a replica serves few rows per second, so
#: a load needs many, which is where hotness-ordered cuts save the most.
NUMPY_KERNELS = Capacity(
    shard_fixed_s=290e-6, shard_per_row_s=230e-9, router_fixed_s=900e-6, router_per_id_s=41e-9,
    dense_samples_per_s=116_000.0, replica_overhead_bytes=19_600_000, server_overhead_bytes=43_000_000,
    lookup_replica_overhead_bytes=None,
)  # fmt: skip


def _brute_force(cost: np.ndarray, max_segments: int) -> float:
    size = cost.shape[0]
    best = np.inf
    for count in range(max_segments):
        for cuts in itertools.combinations(range(1, size - 1), count):
            points = [0, *cuts, size - 1]
            best = min(best, sum(cost[a, b] for a, b in itertools.pairwise(points)))
    return best


@settings(max_examples=200, deadline=None)
@given(st.integers(2, 8), st.integers(1, 6), st.integers(0, 10_000))
def test_dp_matches_brute_force_on_random_costs(size: int, max_segments: int, seed: int) -> None:
    cost = np.random.default_rng(seed).uniform(0, 10, (size, size))
    cuts = optimal_segmentation(cost, max_segments)
    assert cuts[0] == 0 and cuts[-1] == size - 1 and len(cuts) - 1 <= max_segments
    assert cuts == sorted(set(cuts))
    total = sum(cost[a, b] for a, b in itertools.pairwise(cuts))
    assert total == pytest.approx(_brute_force(cost, max_segments))


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(0, 50), min_size=1, max_size=9), st.integers(1, 4), st.floats(10, 20_000), st.integers(1, 16)
)
def test_dp_matches_brute_force_on_real_shard_costs(counts: list[int], max_shards: int, qps: float, cores: int) -> None:
    """On small tables the grid is every row boundary, so the DP must equal the best of all cut sets."""
    spec = TableSpec("t", len(counts), 16, 1)
    order = np.argsort(-np.asarray(counts), kind="stable")
    touched = [int(r) for r in order if counts[r] > 0]
    access = TableAccess(
        "t",
        len(counts),
        np.array(touched, dtype=np.int64),
        np.array([counts[r] for r in touched], dtype=np.int64),
        samples=max(sum(counts), 1),
    )
    profile = AccessProfile((access,), "test")
    shape = ModelShape((spec,), 1, (16,), (1,))
    report = plan_model(
        shape, profile, target_qps=qps, batch_size=64, capacity=CAPACITY, max_shards_per_table=max_shards,
        servers=ServerSize(cores=cores),
    )  # fmt: skip

    ranked = np.sort(np.asarray(counts))[::-1].astype(float)
    total = ranked.sum()

    def memory(start: int, end: int) -> float:
        share = ranked[start:end].sum() / total if total else 0.0
        seconds = CAPACITY.shard_seconds(64 * access.mean_ids_per_sample * share)
        rows_bytes = _copies(CAPACITY, qps, seconds, cores) * (end - start) * spec.bytes_per_row
        return rows_bytes + CAPACITY.replicas(qps, seconds) * CAPACITY.replica_overhead_bytes

    rows = len(counts)
    brute = min(
        sum(memory(a, b) for a, b in itertools.pairwise([0, *cuts, rows]))
        for k in range(max_shards)
        for cuts in itertools.combinations(range(1, rows), k)
    )
    planned = sum(memory(s.row_start, s.row_end) for s in report.shards)
    assert planned == pytest.approx(brute)
    assert all(s.replicas >= 1 for s in report.shards)


def test_candidate_grid_is_dense_at_the_head_and_sparse_after() -> None:
    grid = candidate_cuts(10_000_000, 123_456)
    assert grid[0] == 0 and grid[-1] == 10_000_000
    assert list(grid[:65]) == list(range(65))
    assert 123_456 in grid
    assert len(grid) < 400
    assert list(candidate_cuts(1, 1)) == [0, 1]


def _criteo_like(alpha: float) -> tuple[ModelShape, AccessProfile]:
    tables = [TableShape(f"t{i}", rows, 1) for i, rows in enumerate([2_000_000, 300_000, 50_000, 1_000, 10])]
    specs = tuple(TableSpec(t.name, t.num_rows, 32, 1) for t in tables)
    return ModelShape(specs, 13, (64, 32), (64, 1)), zipf_profile(tables, alpha, samples=200_000, seed=1)


HISTORY = TableSpec("history", 1_000_000, 64, 20)
HISTORY_SHAPE = ModelShape((HISTORY,), 4, (64,), (8, 1))


def _uniform_history() -> AccessProfile:
    rows = HISTORY.num_rows
    access = TableAccess("history", rows, np.arange(rows), np.full(rows, 10), samples=rows * 10 * 2 // 21)
    return AccessProfile((access,), "exactly uniform")


def _table_memory(report, table: str) -> float:
    """Bytes the plan's servers hold for one table's shards: a copy of its rows per server, an overhead per replica."""
    return sum(
        len(report.fleet.placements(f"{s.table}/{s.index}")) * s.bytes_per_replica
        + s.replicas * report.capacity.lookup_overhead_bytes
        for s in report.shards
        if s.table == table
    )


#: Servers small enough that these tables' load spans several: where hotness-ordered cuts pay.
SMALL_SERVERS = ServerSize(cores=2)


def _copies(capacity: Capacity, qps: float, seconds: float, cores: int) -> int:
    """Servers (copies of a shard's rows) the replicas of a shard busy `seconds` per query need."""
    replicas = capacity.replicas(qps, seconds)
    return min(replicas, max(1, math.ceil(qps * seconds / (cores * capacity.target_utilization) - 1e-9)))


def test_uniform_access_gains_nothing_from_hotness() -> None:
    """With uniform access the hotness order is arbitrary: the DP's cuts are no better than an even split."""
    profile = _uniform_history()
    report = plan_model(
        HISTORY_SHAPE, profile, target_qps=8_000, max_shards_per_table=8, lookup_step="separate", servers=SMALL_SERVERS
    )
    shards = [s for s in report.shards if s.table == "history"]
    even = np.linspace(0, HISTORY.num_rows, len(shards) + 1).astype(int)
    capacity = report.capacity
    lookups = 256 * profile.table("history").mean_ids_per_sample

    def even_shard(rows: int) -> float:
        seconds = capacity.shard_seconds(lookups * rows / HISTORY.num_rows)
        rows_bytes = _copies(capacity, 8_000, seconds, SMALL_SERVERS.cores) * rows * HISTORY.bytes_per_row
        return rows_bytes + capacity.replicas(8_000, seconds) * capacity.lookup_overhead_bytes

    even_memory = sum(even_shard(b - a) for a, b in itertools.pairwise(even))
    assert _table_memory(report, "history") == pytest.approx(even_memory, rel=0.05)
    # Every row is still stored at least once per copy the load needs; nothing is dropped.
    assert sum(s.memory_bytes for s in shards) >= HISTORY.num_rows * HISTORY.bytes_per_row


def test_the_report_says_more_when_the_plan_allocates_more_than_model_wise() -> None:
    report = plan_model(HISTORY_SHAPE, _uniform_history(), target_qps=8_000, max_shards_per_table=8)
    better = replace(report, planned=replace(report.planned, memory_bytes=report.model_wise.memory_bytes // 2))
    assert "-> 2.00x less" in str(better)
    worse = replace(report, planned=replace(report.planned, memory_bytes=2 * report.model_wise.memory_bytes))
    assert worse.memory_ratio == pytest.approx(0.5)
    assert "-> 2.00x more" in str(worse) and "x less" not in str(worse)
    assert "x higher" in str(worse) or "x lower" in str(worse)


def test_strong_skew_saves_a_lot_with_few_shards() -> None:
    skewed = zipf_profile([TableShape("history", HISTORY.num_rows, 20)], 1.2, samples=200_000)
    options = {"target_qps": 8_000, "max_shards_per_table": 8, "capacity": NUMPY_KERNELS, "lookup_step": "separate"}
    uniform_report = plan_model(HISTORY_SHAPE, _uniform_history(), **options, servers=SMALL_SERVERS)
    report = plan_model(HISTORY_SHAPE, skewed, **options, servers=SMALL_SERVERS)
    # The whole model needs 16 servers, each with a copy of its rows; the plan holds the cold rows far less often.
    assert report.model_wise_fleet is not None and report.fleet is not None
    cold_copies = len(report.fleet.placements(f"history/{len(report.shards) - 1}"))
    assert cold_copies < len(report.model_wise_fleet.servers) // 4
    assert report.memory_ratio > 1.5 and report.utility_ratio > 1.5
    # On one server of 16 cores the table is not cut: a copy per server is all a cut could save.
    assert len(plan_model(HISTORY_SHAPE, skewed, **options).shards) == 1
    assert _table_memory(report, "history") < 0.85 * _table_memory(uniform_report, "history")
    assert len(report.shards) < len(uniform_report.shards)
    hot, *_, cold = report.shards
    assert hot.row_end < 0.01 * HISTORY.num_rows and hot.access_share > 0.5
    assert hot.replicas > cold.replicas >= 1


def _one_big_server(gpu_memory_bytes: int | None) -> ServerSize:
    """A server that holds any of these plans alone (and one GPU of the budget, if any)."""
    return ServerSize(4096, 10**14, gpus=int(bool(gpu_memory_bytes)), gpu_memory_bytes=gpu_memory_bytes or 0)


@pytest.mark.parametrize("gpu_memory_bytes", [None, 10**9])
def test_the_fused_lookup_step_charges_the_router_for_pooling_and_the_rows_once(gpu_memory_bytes: int | None) -> None:
    shape, profile = _criteo_like(1.05)
    separate, fused = (
        plan_model(shape, profile, target_qps=20_000, capacity=CAPACITY, lookup_step=step,
                   gpu_memory_bytes=gpu_memory_bytes, servers=_one_big_server(gpu_memory_bytes))
        for step in ("separate", "fused")
    )  # fmt: skip
    assert fused.shards == separate.shards  # the cuts and the separate replicas are the distributed layout's
    lookups = {spec.name: 256 * profile.table(spec.name).mean_ids_per_sample for spec in shape.tables}
    pooled_rows = sum(lookups[s.table] * s.access_share for s in fused.shards if s.device == "cpu")
    seconds = CAPACITY.router_seconds(sum(lookups.values())) + CAPACITY.shard_per_row_s * pooled_rows
    assert fused.router_replicas == CAPACITY.replicas(20_000, seconds) >= separate.router_replicas
    cpu = [s for s in fused.shards if s.device == "cpu"]
    gpu = [s for s in fused.shards if s.device == "gpu"]
    assert bool(gpu) == (gpu_memory_bytes is not None)
    assert fused.fleet is not None and separate.fleet is not None
    assert len(fused.fleet.servers) == len(separate.fleet.servers) == 1  # one server holds it all: rows once
    # The native router maps its rank maps once per server; each instance counts accesses apart.
    rank_maps = memory.router_data_bytes(shape.tables, [0] * len(shape.tables), permuted=[True] * len(shape.tables))
    router_bytes = memory.counter_bytes(shape.tables)
    overhead = CAPACITY.replica_overhead_bytes  # every replica a stub here
    dense = (
        fused.dense_replicas * (shape.dense_bytes + overhead)
        if not fused.dense_on_gpu
        else shape.dense_bytes + fused.dense_replicas * overhead
    )
    common = dense + CAPACITY.server_overhead_bytes + sum(s.bytes_per_replica + s.replicas * overhead for s in gpu)
    common += rank_maps
    expected_fused = sum(s.bytes_per_replica for s in cpu) + fused.router_replicas * (router_bytes + overhead) + common
    expected_separate = (
        sum(s.bytes_per_replica + s.replicas * overhead for s in cpu)
        + separate.router_replicas * (router_bytes + overhead)
        + common
    )
    assert fused.planned.memory_bytes == expected_fused
    assert separate.planned.memory_bytes == expected_separate
    assert (
        fused.planned.embedding_bytes
        == separate.planned.embedding_bytes
        == sum(s.bytes_per_replica for s in fused.shards)
    )
    assert scale_to_load(fused, shape, profile, 20_000).router == fused.router_replicas
    assert "pooling the cpu shards itself" in str(fused) and "pooling" not in str(separate)


def test_more_traffic_never_needs_fewer_replicas() -> None:
    shape, profile = _criteo_like(1.05)
    low = plan_model(shape, profile, target_qps=1_000, capacity=CAPACITY)
    high = plan_model(shape, profile, target_qps=50_000, capacity=CAPACITY)
    assert high.planned.memory_bytes >= low.planned.memory_bytes
    assert high.model_wise.replicas >= low.model_wise.replicas
    assert all(s.replicas >= 1 for r in (low, high) for s in r.shards)


def test_scaling_rule_gives_the_plan_back_at_the_planned_load_and_grows_with_load() -> None:
    shape, profile = _criteo_like(1.05)
    report = plan_model(shape, profile, target_qps=20_000, capacity=CAPACITY)
    at_plan = scale_to_load(report, shape, profile, 20_000)
    assert at_plan.shards == tuple(s.replicas for s in report.shards)
    assert (at_plan.router, at_plan.dense) == (report.router_replicas, report.dense_replicas)
    assert at_plan.model_wise == report.model_wise.replicas
    loads = [500, 5_000, 20_000, 80_000]
    scaled = [scale_to_load(report, shape, profile, qps) for qps in loads]
    for lower, higher in itertools.pairwise(scaled):
        assert all(a <= b for a, b in zip(lower.shards, higher.shards, strict=True))
        assert lower.model_wise <= higher.model_wise and lower.dense <= higher.dense
    assert min(scaled[0].shards) == 1
    with pytest.raises(Exception, match="qps"):
        scale_to_load(report, shape, profile, 0)


def test_one_row_table_and_untouched_table_get_valid_plans() -> None:
    specs = (TableSpec("one", 1, 8, 1), TableSpec("never", 1000, 8, 2), TableSpec("used", 1000, 8, 2))
    accesses = (
        TableAccess("one", 1, np.array([0]), np.array([50]), 50),
        TableAccess("never", 1000, np.array([], dtype=np.int64), np.array([], dtype=np.int64), 50),
        TableAccess("used", 1000, np.array([5, 6]), np.array([40, 10]), 50),
    )
    shape = ModelShape(specs, 2, (8,), (1,))
    profile = AccessProfile(accesses, "test")
    report = plan_model(shape, profile, target_qps=5_000, capacity=CAPACITY, max_shards_per_table=4)
    never = [s for s in report.shards if s.table == "never"]
    assert len(never) == 1 and never[0].access_share == 0 and never[0].replicas >= 1
    assert [s.row_end - s.row_start for s in report.shards if s.table == "one"] == [1]
    plan = plan_from_report(report, shape, profile)
    assert len(plan.tables[0].shards) == 1
    assert plan.tables[2].row_order[:2].tolist() == [5, 6]


def test_gpu_placement_takes_dense_then_hottest_shards() -> None:
    shape, profile = _criteo_like(1.1)
    report = plan_model(shape, profile, target_qps=20_000, capacity=CAPACITY, gpu_memory_bytes=50_000_000)
    on_gpu = [s for s in report.shards if s.device == "gpu"]
    assert report.dense_on_gpu and on_gpu
    assert sum(s.memory_bytes for s in on_gpu) <= 50_000_000
    density = [s.access_share / s.bytes_per_replica for s in report.shards]
    best_cpu = max((d for d, s in zip(density, report.shards, strict=True) if s.device == "cpu"), default=0)
    worst_gpu = min(d for d, s in zip(density, report.shards, strict=True) if s.device == "gpu")
    assert worst_gpu >= best_cpu or any(s.device == "cpu" and s.memory_bytes > 50_000_000 for s in report.shards)
    cpu_only = plan_model(shape, profile, target_qps=20_000, capacity=CAPACITY)
    assert all(s.device == "cpu" for s in cpu_only.shards) and not cpu_only.dense_on_gpu


def test_plan_json_round_trip_keeps_cuts_replicas_and_row_orders(tmp_path: Path) -> None:
    model = tiny_model()
    shape = ModelShape.of(model)
    profile = zipf_profile(
        [TableShape(t.name, t.num_rows, t.max_ids_per_sample) for t in model.tables], 1.1, samples=5_000
    )
    report = plan_model(shape, profile, target_qps=8_000, capacity=CAPACITY, max_shards_per_table=3)
    plan = plan_from_report(report, shape, profile, name="tiny")
    path = save_plan(plan, tmp_path / "plan.json", report, profile_source=profile.source)
    loaded = load_plan(path)
    assert loaded.model_name == "tiny" and loaded.max_batch_size == plan.max_batch_size
    for a, b in zip(plan.tables, loaded.tables, strict=True):
        assert a.spec == b.spec and a.boundaries == b.boundaries
        assert [s.placement for s in a.shards] == [s.placement for s in b.shards]
        assert np.array_equal(a.row_order, b.row_order)
    assert loaded.router == plan.router and loaded.dense == plan.dense
    import json

    document = json.loads(path.read_text())
    shard = document["tables"][2]["shards"][0]
    assert {"row_start", "row_end", "access_share", "replicas", "bytes", "device"} <= set(shard)
    assert document["planner"]["totals"]["memory_ratio"] == pytest.approx(report.memory_ratio)
    rows = row_order_path(path)
    rows.write_bytes(rows.read_bytes()[:-10] + b"0123456789")
    from generator.errors import PlanError

    with pytest.raises(PlanError, match="sha256"):
        load_plan(path)


def test_planning_26_criteo_tables_takes_seconds() -> None:
    from bench.plan_memory import CRITEO_KAGGLE_ROWS, criteo_shape_and_profile

    shape, profile = criteo_shape_and_profile(1.05, samples=100_000)
    started = time.perf_counter()
    report = plan_model(shape, profile, target_qps=10_000, capacity=Capacity())
    assert time.perf_counter() - started < 30
    assert len({s.table for s in report.shards}) == len(CRITEO_KAGGLE_ROWS) == 26


SERVING_CAPACITY = Capacity(  # overheads this small let the tiny model's cold rows pay for steps of their own
    replica_overhead_bytes=100,
    server_overhead_bytes=100,
    lookup_replica_overhead_bytes=None,
    shard_fixed_s=20e-6,
    shard_per_row_s=2e-6,
    dense_samples_per_s=1e7,
    router_fixed_s=50e-6,
    router_per_id_s=0.0,
)


@requires_server
@pytest.mark.server
@pytest.mark.parametrize("backend", ["python", "onnx"])
def test_planned_repository_serves_scores_equal_to_pytorch(tmp_path: Path, server_factory, backend: str) -> None:
    model = wide_model()
    shape = ModelShape.of(model)
    profile = zipf_profile(
        [TableShape(t.name, t.num_rows, t.max_ids_per_sample) for t in model.tables], 1.2, samples=20_000, seed=0
    )
    lookup_step = "separate" if backend == "python" else "fused"  # both ways, each with one backend
    report = plan_model(  # one-core servers: the load spans servers, so the history table is cut
        shape, profile, target_qps=3_000, batch_size=64, capacity=SERVING_CAPACITY, max_shards_per_table=3,
        lookup_step=lookup_step, servers=ServerSize(cores=1),
    )  # fmt: skip
    plan = load_plan(save_plan(plan_from_report(report, shape, profile), tmp_path / "plan.json", report))
    assert plan.lookup_step == lookup_step
    history = plan.tables[0]
    assert len(history.shards) == 3, str(report)
    assert len({s.placement.instance_count for s in history.shards}) > 1, str(report)
    assert not np.array_equal(history.row_order, np.arange(history.spec.num_rows))
    result = build.build(model, plan, tmp_path / "repo", tmp_path / "ens", backend=backend)
    counts = sorted(m.instance_count for m in result.models if m.role == "shards")
    assert counts == sorted(group.placement.instance_count for group in plan.step_groups())
    if lookup_step == "fused":  # on one-core servers, a step of its own holds a shard's rows in fewer bytes
        assert any(not s.router_pooled for s in plan.shards), str(report)
    server = server_factory(result)
    for protocol, url in (("http", server.http_url), ("grpc", server.grpc_url)):
        report = client.check(model, url, protocol=protocol, requests=3, batch_size=64, seed=5)
        assert report.passed, str(report)
        # Requests that follow the profile hit the hot shard hardest; scores must still match.
        hot_ids = profile.table("history").rows[:3]
        request = random_request(model, 16, np.random.default_rng(2))
        ids = request.sparse["history"]
        ids[ids >= 0] = hot_ids[ids[ids >= 0] % 3]
        with RankingClient(url, protocol) as ranking:
            np.testing.assert_allclose(ranking.score(request), reference_scores(model, request), atol=1e-5)


@requires_server
@pytest.mark.server
@pytest.mark.parametrize("engine", ["native", "python"])
def test_a_fused_plan_with_shards_of_their_own_serves_exactly(tmp_path: Path, server_factory, engine: str) -> None:
    model = wide_model()
    plan = replace(uniform_plan(model, shards_per_table=3), lookup_engine=engine)
    tables = tuple(  # the hottest shard of every table pooled by the router, the others steps of their own
        replace(t, shards=tuple(replace(s, router_pooled=s.index == 0) for s in t.shards)) for t in plan.tables
    )
    plan = load_plan(save_plan(replace(plan, tables=tables), tmp_path / "plan.json"))
    assert len(plan.router_pooled_groups()) == 1 and len(plan.step_groups()) == 1
    result = build.build(model, plan, tmp_path / "repo", tmp_path / "ens")
    assert [m.role for m in result.models].count("shards") == 1
    server = server_factory(result)
    for protocol, url in (("http", server.http_url), ("grpc", server.grpc_url)):
        report = client.check(model, url, protocol=protocol, requests=3, batch_size=32, seed=4)
        assert report.passed, str(report)

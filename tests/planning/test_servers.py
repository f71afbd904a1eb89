"""Placing replicas on servers of a stated size (`planning.servers`) and pricing a plan on them (`planning.pricing`)."""

import dataclasses
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from generator.errors import PlanError, UserInputError
from generator.model.dlrm import TableSpec
from generator.planning.capacity import Capacity
from generator.planning.memory import ModelShape
from generator.planning.planner import plan_model
from generator.planning.servers import Component, ServerSize, place
from generator.traffic.profile import TableShape, zipf_profile

UTILIZATION = 0.8
SERVER_BYTES = 45_000_000

components_strategy = st.lists(
    st.builds(
        Component,
        name=st.text("abcdefgh", min_size=1, max_size=4),
        replicas=st.integers(1, 40),
        busy_cores=st.floats(0.0, UTILIZATION),
        data_bytes=st.integers(0, 3 * 10**9),
        replica_bytes=st.integers(0, 200 * 10**6),
        pod=st.sampled_from(["", "front"]),
    ),
    min_size=1,
    max_size=8,
    unique_by=lambda c: c.name,
)


@settings(max_examples=150, deadline=None)
@given(components_strategy, st.integers(1, 32))
def test_every_replica_is_placed_and_no_server_is_over_its_cores_or_memory(components, cores) -> None:
    size = ServerSize(cores=cores, memory_bytes=16 * 10**9)
    fleet = place(components, size, UTILIZATION, SERVER_BYTES)
    by_name = {c.name: c for c in components}
    for component in components:
        assert sum(count for _, count in fleet.placements(component.name)) == component.replicas
    for server in fleet.servers:
        hosted = [(by_name[name], count) for name, count in server.hosts]
        assert all(count > 0 for _, count in hosted)
        assert server.busy_cores <= cores * UTILIZATION + 1e-6
        # one copy of each hosted model's data, whatever the number of its replicas there; a server per pod
        pods = {c.pod_name for c, _ in hosted}
        expected = SERVER_BYTES * len(pods) + sum(c.data_bytes + count * c.replica_bytes for c, count in hosted)
        assert server.memory_bytes == expected <= size.memory_bytes
    assert fleet.memory_bytes == sum(s.memory_bytes for s in fleet.servers)


@settings(max_examples=100, deadline=None)
@given(
    st.integers(1, 500), st.floats(0.01, UTILIZATION), st.integers(0, 10**9), st.integers(1, 10**8), st.integers(1, 64)
)
def test_one_model_takes_as_few_servers_as_its_load_and_memory_allow(replicas, busy, data, per_replica, cores) -> None:
    size = ServerSize(cores=cores, memory_bytes=8 * 10**9)
    fleet = place([Component("m", replicas, busy, data, per_replica)], size, UTILIZATION, SERVER_BYTES)
    per_server = min(
        math.floor((cores * UTILIZATION + 1e-9) / busy), (size.memory_bytes - SERVER_BYTES - data) // per_replica
    )
    assert len(fleet.servers) == math.ceil(replicas / per_server)


def test_a_replica_too_big_for_any_server_names_the_flag() -> None:
    with pytest.raises(PlanError, match=r"t/0: one replica with its data needs 20\.045 GB .*\(--server-memory-gb\)"):
        place([Component("t/0", 1, 0.1, 20 * 10**9, 0)], ServerSize(memory_bytes=16 * 10**9), UTILIZATION, SERVER_BYTES)
    with pytest.raises(PlanError, match=r"placed on GPU, but the servers have no GPUs.*--server-gpus"):
        place([Component("t/0", 1, 0.0, 10, 0, "gpu")], ServerSize(), UTILIZATION, SERVER_BYTES)
    gpu_server = ServerSize(gpus=2, gpu_memory_bytes=10**9)
    with pytest.raises(PlanError, match=r"2 x 1 GB \(--server-gpu-memory-gb"):
        place([Component("t/0", 1, 0.0, 3 * 10**9, 0, "gpu")], gpu_server, UTILIZATION, SERVER_BYTES)
    assert len(place([Component("t/0", 5, 0.0, 2 * 10**9, 0, "gpu")], gpu_server, UTILIZATION, 0).servers) == 1


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"cores": 0}, "`server_cores` must be an integer in 1..4096, got 0"),
        ({"memory_bytes": 10**6}, "`server_memory_gb` must be in 0.01..100000, got 0.001"),
        ({"gpus": 65}, "`server_gpus` must be an integer in 0..64, got 65"),
        ({"gpus": 1}, "`server_gpu_memory_gb` must be in 0.001..10000 when servers have GPUs, got 0"),
    ],
)
def test_a_bad_server_size_names_the_field_and_the_range(fields, message) -> None:
    with pytest.raises(UserInputError, match=message.replace(".", r"\.")):
        ServerSize(**fields)


def _big_table_model() -> tuple[ModelShape, object]:
    tables = [TableShape("big", 4_000_000, 1), TableShape("small", 1_000, 1)]
    specs = tuple(TableSpec(t.name, t.num_rows, 64, 1) for t in tables)
    return ModelShape(specs, 13, (64, 32), (64, 1)), zipf_profile(tables, 1.1, samples=100_000, seed=3)


def test_the_model_wise_baseline_holds_the_whole_model_once_per_server_it_needs() -> None:
    shape, profile = _big_table_model()
    capacity = Capacity()
    report = plan_model(shape, profile, target_qps=30_000, capacity=capacity, servers=ServerSize(cores=4))
    baseline = report.model_wise_fleet
    assert baseline is not None
    replicas = report.model_wise.replicas
    per_server = sum(count for _, count in baseline.servers[0].hosts)
    assert len(baseline.servers) == math.ceil(replicas / per_server) > 1
    expected = len(baseline.servers) * (capacity.server_overhead_bytes + shape.embedding_bytes) + replicas * (
        shape.dense_bytes + capacity.replica_overhead_bytes
    )
    assert report.model_wise.memory_bytes == expected
    assert report.model_wise.embedding_bytes == len(baseline.servers) * shape.embedding_bytes


def test_cold_rows_are_held_less_often_than_whole_model_copies_and_read_more_per_byte() -> None:
    shape, profile = _big_table_model()
    report = plan_model(
        shape, profile, target_qps=30_000, lookup_step="separate", servers=ServerSize(cores=4), max_shards_per_table=4
    )
    assert report.fleet is not None and report.model_wise_fleet is not None
    big = [s for s in report.shards if s.table == "big"]
    coldest = f"big/{big[-1].index}"
    assert len(report.fleet.placements(coldest)) < len(report.model_wise_fleet.servers)
    assert report.utility_ratio > 1.0
    assert np.isfinite(report.memory_ratio) and report.memory_ratio > 1.0


def test_the_report_and_plan_json_show_the_servers() -> None:
    shape, profile = _big_table_model()
    report = plan_model(shape, profile, target_qps=30_000, servers=ServerSize(cores=4))
    text = str(report)
    assert "servers of 4 cores, 64 GB: planned" in text and "the default" not in text
    assert "front x" in text and "cores busy" in text  # a distributed fleet: fronts and shard steps
    assert "(the default: --server-cores, --server-memory-gb)" in str(plan_model(shape, profile, target_qps=100))
    document = report.to_dict()
    assert document["servers"]["server"]["cores"] == 4
    assert len(document["servers"]["servers"]) == len(report.fleet.servers)
    assert document["model_wise_servers"]["memory_bytes"] == report.model_wise.memory_bytes


def test_memory_parts_add_up_and_the_figure_draws_cut_and_uncut_plans(tmp_path) -> None:
    from generator.planning.figure import cut_tables, plot_plan

    history = TableShape("history", 1_000_000, 20)  # long lists: rows, not calls, dominate a shard's time
    shape = ModelShape((TableSpec("history", history.num_rows, 64, 20),), 4, (64,), (8, 1))
    profile = zipf_profile([history], 1.2, samples=100_000, seed=2)
    for cores, cut in ((1, True), (64, False)):
        report = plan_model(shape, profile, target_qps=30_000, lookup_step="separate", servers=ServerSize(cores=cores))
        for totals, fleet in ((report.planned, report.fleet), (report.model_wise, report.model_wise_fleet)):
            parts = report.memory_parts(totals, fleet)
            assert sum(parts.values()) == totals.memory_bytes and min(parts.values()) >= 0
        assert bool(cut_tables(report)) == cut, str(report)
        assert all(any(s.table == name and s.index > 0 for s in report.shards) for name in cut_tables(report))
        written = plot_plan(report, profile, tmp_path / f"plan-{cores}.png")
        assert written.stat().st_size > 20_000
        assert report.memory_words in str(report)


def test_the_fused_router_leaves_cold_rows_that_span_its_servers_to_steps_of_their_own() -> None:
    history = TableShape("history", 1_000_000, 20)
    shape = ModelShape((TableSpec("history", history.num_rows, 64, 20),), 4, (64,), (8, 1))
    profile = zipf_profile([history], 1.2, samples=100_000, seed=2)
    one_server = plan_model(shape, profile, target_qps=30_000, servers=ServerSize(cores=64))
    assert all(s.router_pooled for s in one_server.shards)  # one front server: pooling holds every row once
    report = plan_model(shape, profile, target_qps=30_000, servers=ServerSize(cores=1))
    assert report.fleet is not None
    hot, cold = report.shards[0], report.shards[-1]
    assert hot.router_pooled and not cold.router_pooled, str(report)
    routers = len(report.fleet.placements("front"))
    assert 0 < len(report.fleet.placements(f"history/{cold.index}")) < routers
    assert "own step" in str(report)


def test_a_model_larger_than_a_server_names_the_baseline_and_the_flag() -> None:
    shape, profile = _big_table_model()  # 1.02 GB of rows
    with pytest.raises(PlanError, match=r"model-wise baseline holds every row.*\(--server-memory-gb\)"):
        plan_model(
            shape, profile, target_qps=1_000, lookup_step="separate", servers=ServerSize(memory_bytes=11 * 10**8)
        )


def test_paging_keeps_in_memory_only_the_folios_a_copy_is_expected_to_read() -> None:
    from generator.planning import paging

    history = TableShape("history", 1_000_000, 20)
    shape = ModelShape((TableSpec("history", history.num_rows, 64, 20),), 4, (64,), (8, 1))
    profile = zipf_profile([history], 1.2, samples=100_000, seed=2)
    plain = plan_model(shape, profile, target_qps=30_000, servers=ServerSize(cores=1))
    paged = plan_model(shape, profile, target_qps=30_000, servers=ServerSize(cores=1), page_cold_rows=True)
    assert [(s.row_start, s.row_end) for s in paged.shards] == [(s.row_start, s.row_end) for s in plain.shards]
    cold = paged.shards[-1]
    assert not cold.resident and cold.held_bytes < cold.bytes_per_replica / 2, str(paged)
    assert paged.planned.memory_bytes < plain.planned.memory_bytes
    assert paged.utility_ratio > plain.utility_ratio
    assert "paged," in str(paged) and "paged" not in str(plain)
    # The expectation is the touched folios' bytes (plus the header's), checked by brute force on a tiny shard.
    access = profile.table("history")
    rows_per_folio = paging.FAULT_BYTES // 256
    tiny = dataclasses.replace(cold, row_start=0, row_end=3 * rows_per_folio, access_share=1.0)
    tiny = dataclasses.replace(tiny, bytes_per_replica=3 * paging.FAULT_BYTES)
    counts = np.zeros(3 * rows_per_folio)
    ranked = access.ranked_counts()[: counts.size]
    counts[: ranked.size] = ranked
    p = counts.reshape(3, -1).sum(axis=1) / counts.sum()
    expected = (sum(1 - (1 - q) ** 5 for q in p) + 1) * paging.FAULT_BYTES
    resident = paging.resident_bytes(access, shape.tables[0], tiny, 5, 0, paging.FAULT_BYTES)
    assert resident == min(3 * paging.FAULT_BYTES, int(expected))


def test_routers_that_count_nothing_hold_no_counters_and_the_plan_says_so() -> None:
    from generator.planning import memory
    from generator.planning.planner import plan_from_report

    shape, profile = _big_table_model()
    counted = plan_model(shape, profile, target_qps=30_000, servers=ServerSize(cores=4))
    uncounted = plan_model(shape, profile, target_qps=30_000, servers=ServerSize(cores=4), count_accesses=False)
    assert counted.router_replicas == uncounted.router_replicas and counted.fleet is not None
    fronts = len(counted.fleet.placements("front"))  # a distributed fleet: each front its share of the routers
    routers = fronts * -(-counted.router_replicas // fronts)
    saved = counted.planned.memory_bytes - uncounted.planned.memory_bytes
    assert saved == routers * memory.counter_bytes(shape.tables)  # every router instance's counters, and no more
    assert not plan_from_report(uncounted, shape, profile).count_accesses
    assert plan_from_report(counted, shape, profile).count_accesses

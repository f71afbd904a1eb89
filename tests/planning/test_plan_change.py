"""What re-planning changes: rows that move between shards against a brute force, replicas, memory, hit rates."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from generator.errors import PlanError
from generator.model.dlrm import TableSpec
from generator.planning import plan_change as changes
from generator.planning.capacity import Capacity
from generator.planning.memory import ModelShape
from generator.planning.plan import Placement, table_plan, uniform_plan
from generator.planning.plan_file import load_plan, save_plan
from generator.planning.planner import plan_from_report, plan_model
from generator.planning.servers import ServerSize
from generator.traffic.profile import AccessProfile, table_access_from_ids, table_shapes, zipf_profile
from tests.conftest import tiny_model, wide_model

#: Replicas this cheap make the planner cut the hot head off.
SMALL_REPLICAS = Capacity(replica_overhead_bytes=1_000, lookup_replica_overhead_bytes=None)
OTHER_REPLICAS = Capacity(replica_overhead_bytes=2_000, lookup_replica_overhead_bytes=None)


def _brute_force_moved(old_shard: list[int], new_shard: list[int]) -> list[bool]:
    """Row by row: match (new, old) shard pairs by rows shared, most first, each shard at most once."""
    shared: dict[tuple[int, int], int] = {}
    for old, new in zip(old_shard, new_shard, strict=True):
        shared[(new, old)] = shared.get((new, old), 0) + 1
    heirs: dict[int, int] = {}
    for (new, old), _ in sorted(shared.items(), key=lambda item: (-item[1], item[0])):
        if new not in heirs and old not in heirs.values():
            heirs[new] = old
    return [heirs.get(new) != old for old, new in zip(old_shard, new_shard, strict=True)]


@st.composite
def _table_plans(draw: st.DrawFn) -> tuple[object, object]:
    rows = draw(st.integers(1, 40))
    spec = TableSpec("t", rows, 4, 1)

    def one() -> object:
        cuts = sorted(draw(st.sets(st.integers(1, max(1, rows - 1)), max_size=4)) - {rows})
        boundaries = [0, *cuts, rows]
        order = np.asarray(draw(st.permutations(list(range(rows)))), dtype=np.int64)
        permuted = draw(st.booleans())
        return table_plan(spec, boundaries, [Placement()] * (len(boundaries) - 1), order if permuted else None)

    return one(), one()


@given(_table_plans())
@settings(max_examples=150, deadline=None)
def test_moved_rows_match_a_brute_force(plans: tuple[object, object]) -> None:
    before, now = plans
    old = changes.shard_of_rows(before).tolist()  # type: ignore[arg-type]
    new = changes.shard_of_rows(now).tolist()  # type: ignore[arg-type]
    assert changes.moved_rows(before, now).tolist() == _brute_force_moved(old, new)  # type: ignore[arg-type]


def test_a_row_lives_in_the_shard_its_rank_falls_in() -> None:
    spec = TableSpec("t", 6, 4, 1)
    order = np.array([5, 4, 3, 2, 1, 0])
    table = table_plan(spec, [0, 2, 6], [Placement()] * 2, order)
    assert changes.shard_of_rows(table).tolist() == [1, 1, 1, 1, 0, 0]


def _planned(
    tmp_path: Path, name: str, alpha: float, qps: float, seed: int, capacity: Capacity = SMALL_REPLICAS
) -> tuple[Path, AccessProfile]:
    model = wide_model()
    shape = ModelShape.of(model)
    profile = zipf_profile(table_shapes(model.tables), alpha, samples=20_000, seed=seed)
    report = plan_model(  # one-core servers: the load spans servers, so the tables are cut
        shape, profile, target_qps=qps, front_cache_bytes=256, lookup_step="separate", capacity=capacity,
        servers=ServerSize(cores=1),
    )  # fmt: skip
    path = save_plan(plan_from_report(report, shape, profile), tmp_path / f"{name}.json", report)
    return path, profile


def test_the_same_plan_moves_nothing(tmp_path: Path) -> None:
    path, profile = _planned(tmp_path, "plan", 1.2, 3000, 3)
    plan = load_plan(path)
    change = changes.plan_change(plan, path, plan, path, profile)
    assert change.rows_moved == 0
    assert all(t.accesses_moved_share == 0 and not t.cuts_changed for t in change.tables)
    assert change.memory_bytes[0] == change.memory_bytes[1] > 0
    on_profile, expected_before, expected_now = change.hit_rates
    assert on_profile == pytest.approx(expected_before) and expected_before == expected_now > 0
    assert "no row changes shard" in str(change)


def test_a_plan_of_other_traffic_moves_rows_and_says_how_many(tmp_path: Path) -> None:
    before_path, _ = _planned(tmp_path, "before", 1.2, 3000, 3)
    now_path, profile = _planned(tmp_path, "now", 0.9, 30_000, 11)
    change = changes.plan_change(load_plan(before_path), before_path, load_plan(now_path), now_path, profile)
    history = next(t for t in change.tables if t.table == "history")
    assert history.rows_moved > 0 and 0 < history.accesses_moved_share <= 1
    assert change.memory_bytes[1] > change.memory_bytes[0]  # ten times the traffic
    assert change.router_replicas[1] >= change.router_replicas[0]
    text = str(change)
    assert f"{history.rows_moved:,}" in text and "memory allocated" in text and "front cache hit rate" in text
    assert "(for 3,000 queries/s) ->" in text and "(for 30,000 queries/s)" in text
    assert change.same_capacity and "other capacity figures" not in text
    other_path, _ = _planned(
        tmp_path,
        "other",
        0.9,
        30_000,
        11,
        capacity=Capacity(replica_overhead_bytes=2_000, lookup_replica_overhead_bytes=None),
    )
    other = changes.plan_change(load_plan(before_path), before_path, load_plan(other_path), other_path, profile)
    assert not other.same_capacity and "other capacity figures: compare the replicas" in str(other)


def test_accesses_moved_weigh_the_new_profile() -> None:
    spec = TableSpec("t", 4, 4, 1)
    before = table_plan(spec, [0, 2, 4], [Placement()] * 2)
    now = table_plan(spec, [0, 3, 4], [Placement()] * 2)  # row 2 moves into shard 0
    ids = np.array([2, 2, 2, 0, 1, 3])
    profile = AccessProfile((table_access_from_ids("t", 4, ids, 6),), "test")
    change = changes.table_change(before, now, profile)
    assert change.rows_moved == 1 and change.accesses_moved_share == pytest.approx(3 / 6)


def test_a_split_moves_the_smaller_part() -> None:
    spec = TableSpec("t", 10, 4, 1)
    before = table_plan(spec, [0, 10], [Placement()])
    now = table_plan(spec, [0, 3, 10], [Placement()] * 2)
    assert changes.moved_rows(before, now).tolist() == [True] * 3 + [False] * 7


def test_plans_of_other_models_are_refused(tmp_path: Path) -> None:
    path, profile = _planned(tmp_path, "plan", 1.2, 3000, 3)
    other = save_plan(uniform_plan(tiny_model()), tmp_path / "other.json")
    with pytest.raises(PlanError, match="--previous must be a plan of the same model"):
        changes.plan_change(load_plan(other), other, load_plan(path), path, profile)


def test_shards_that_leave_the_router_for_steps_of_their_own_are_said(tmp_path: Path) -> None:
    model = wide_model()
    shape = ModelShape.of(model)
    profile = zipf_profile(table_shapes(model.tables), 1.2, samples=20_000, seed=3)
    paths = []
    # One front server pools every row; on one-core servers cold rows get steps of their own (where their rows
    # outweigh a tritonserver and a remote-step stub per front: this tiny model's do against 10 kB ones).
    capacity = Capacity(replica_overhead_bytes=10_000, server_overhead_bytes=10_000)
    for cores in (64, 1):
        report = plan_model(shape, profile, target_qps=30_000, servers=ServerSize(cores=cores), capacity=capacity)
        plan = plan_from_report(report, shape, profile)
        paths.append(save_plan(plan, tmp_path / f"plan-{cores}.json", report))
    before, now = (load_plan(path) for path in paths)
    change = changes.plan_change(before, paths[0], now, paths[1], profile)
    assert change.step_groups == (0, len(now.step_groups())) and change.step_groups[1] > 0
    assert f"steps of their own 0 -> {change.step_groups[1]}" in str(change)
    assert "steps of their own" not in str(changes.plan_change(before, paths[0], before, paths[0], profile))

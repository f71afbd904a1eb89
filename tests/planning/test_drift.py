"""Drift of live traffic from a plan's profile: none for the same traffic, the moved share for shifted traffic."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from generator.errors import PlanError
from generator.planning import drift as drifts
from generator.planning.memory import ModelShape
from generator.planning.plan import uniform_plan
from generator.planning.plan_file import load_plan, save_plan
from generator.planning.planner import plan_from_report, plan_model
from generator.traffic.profile import AccessProfile, TableAccess, table_shapes, zipf_profile
from tests.conftest import wide_model


def _planned(tmp_path: Path) -> tuple[Path, AccessProfile]:
    model = wide_model()
    shape = ModelShape.of(model)
    profile = zipf_profile(table_shapes(model.tables), 1.2, samples=20_000, seed=3)
    report = plan_model(shape, profile, target_qps=3000, front_cache_bytes=256)
    path = save_plan(plan_from_report(report, shape, profile), tmp_path / "plan.json", report)
    return path, profile


def test_the_plans_own_profile_has_not_drifted(tmp_path: Path) -> None:
    path, profile = _planned(tmp_path)
    shares, hit_rate = drifts.planned_expectations(path)
    result = drifts.drift(load_plan(path), shares, hit_rate, profile)
    for table in result.tables:
        assert table.moved_share == pytest.approx(0.0, abs=1e-9)
    assert result.live_hit_rate == pytest.approx(hit_rate) and hit_rate > 0
    assert "moved" in str(result) and "front cache hit rate" in str(result)


def test_traffic_that_moved_to_other_rows_shows_the_moved_share(tmp_path: Path) -> None:
    path, profile = _planned(tmp_path)
    plan = load_plan(path)
    shares, hit_rate = drifts.planned_expectations(path)
    history = profile.table("history")
    order = plan.tables[0].original_rows()
    cold = order[-50:]  # every access now goes to the plan's coldest rows
    moved = TableAccess("history", history.num_rows, cold, np.full(cold.size, 10**6), history.samples)
    shifted = AccessProfile((moved, profile.table("tiny")), "shifted")
    result = drifts.drift(plan, shares, hit_rate, shifted)
    (history_drift, tiny_drift) = result.tables
    assert history_drift.live[-1] == pytest.approx(1.0)  # all of it in the coldest shard, none in the cache
    expected = 0.5 * sum(abs(a - b) for a, b in zip(history_drift.live, history_drift.planned, strict=True))
    assert history_drift.moved_share == pytest.approx(expected) and history_drift.moved_share > 0.2
    assert tiny_drift.moved_share == pytest.approx(0.0, abs=1e-9)
    assert result.live_hit_rate < hit_rate
    save_plan(uniform_plan(wide_model()), tmp_path / "uniform.json")
    with pytest.raises(PlanError, match="was not made by `recgen plan`"):
        drifts.planned_expectations(tmp_path / "uniform.json")

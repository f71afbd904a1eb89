"""Flags into a plan: what a command names wins, then what the running deployment was built with, then defaults."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from generator.errors import PlanError, UserInputError
from generator.planning.plan import uniform_plan
from generator.planning.plan_file import save_plan
from generator.repository import settings
from generator.repository.settings import DeploymentOptions, RunningSettings, UniformOptions
from tests.conftest import tiny_model


def test_a_named_flag_wins_then_the_running_deployment_then_the_default() -> None:
    model = tiny_model()
    running = RunningSettings(
        uniform={"shards_per_table": 3, "max_batch_size": 384, "latency_slo_ms": 500.0},
        deployment={"check_finite": False, "shedding": "queue-policy", "backend": "onnx", "lookup_engine": "native"},
    )
    resolved = settings.resolve_plan(
        model,
        None,
        UniformOptions(max_batch_size=64),
        DeploymentOptions(),
        given={"max_batch_size"},
        distributed=False,
        running=running,
    )
    assert resolved.plan.max_batch_size == 64  # named by the command
    assert max(len(table.shards) for table in resolved.plan.tables) == 3  # from the running build
    assert resolved.plan.latency_slo_ms == 500.0 and resolved.plan.shedding == "queue-policy"
    assert not resolved.plan.check_finite and resolved.backend == "onnx" and resolved.plan.lookup_engine == "native"
    assert resolved.plan.count_accesses and resolved.target == "embedded"  # recorded by neither: the default


def test_a_flag_the_plan_file_decides_is_refused_beside_it(tmp_path: Path) -> None:
    model = tiny_model()
    path = save_plan(uniform_plan(model), tmp_path / "plan.json")
    with pytest.raises(UserInputError, match=r"--plan sets --instances, --max-batch-size; drop them"):
        settings.check_plan_flags(path, {"instances", "max_batch_size"}, distributed=False)
    settings.check_plan_flags(path, {"group_by"}, distributed=True)  # a distributed build groups as it likes


def test_the_plan_check_reads_is_the_plan_file_with_the_builds_row_dtypes(tmp_path: Path) -> None:
    model = tiny_model()
    planned = uniform_plan(model, shards_per_table=3)
    path = save_plan(planned, tmp_path / "plan.json")
    first = model.tables[0].name
    plan = settings.built_plan(model, path, ["fp16", f"{first}=int8"])
    assert [len(t.shards) for t in plan.tables] == [len(t.shards) for t in planned.tables]
    dtypes = {t.spec.name: {s.row_dtype for s in t.shards} for t in plan.tables}
    assert dtypes[first] == {"int8"} and all(d == {"fp16"} for name, d in dtypes.items() if name != first)
    assert {s.row_dtype for s in settings.built_plan(model, None).shards} == {"fp32"}
    other = dataclasses.replace(model.tables[0], num_rows=model.tables[0].num_rows + 1)
    wider = tiny_model()
    wider.tables[0] = other
    with pytest.raises(PlanError):
        settings.built_plan(wider, path)

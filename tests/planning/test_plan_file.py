"""plan.json version 2: strict reading (every field, its type, nothing unknown) and the migration of version 1."""

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from generator.errors import PlanError, UserInputError
from generator.planning import queueing
from generator.planning.plan import Placement, uniform_plan
from generator.planning.plan_file import load_plan, load_planner_figures, save_plan
from tests.conftest import tiny_model


def _saved(tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    path = save_plan(uniform_plan(tiny_model(), name="tiny", shards_per_table=2), tmp_path / "plan.json")
    return path, json.loads(path.read_text())


def _write(path: Path, document: dict[str, Any]) -> Path:
    path.write_text(json.dumps(document))
    return path


def test_a_saved_plan_reads_back_equal_and_has_no_planner_section(tmp_path: Path) -> None:
    path, document = _saved(tmp_path)
    plan = uniform_plan(tiny_model(), name="tiny", shards_per_table=2)
    assert load_plan(path) == plan
    assert document["schema_version"] == 3 and document["planner"] is None
    assert load_planner_figures(path) is None


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.pop("lookup_engine"), "the plan has no `lookup_engine`"),
        (lambda d: d.pop("generation"), "the plan has no `generation`"),
        (lambda d: d.update(check_finite="yes"), "the plan `check_finite` must be bool, got 'yes'"),
        (lambda d: d.update(max_batch_size=True), "the plan `max_batch_size` must be int, got True"),
        (lambda d: d.update(extra=1), r"the plan has unknown fields \['extra'\]"),
        (lambda d: d["tables"][1].pop("side"), "table 'small' has no `side`"),
        (lambda d: d["tables"][1].pop("cached_rows"), "table 'small' has no `cached_rows`"),
        (lambda d: d["tables"][1]["shards"][1].pop("row_dtype"), "table 'small' has no `row_dtype`"),
        (lambda d: d["tables"][0]["shards"][0].update(replicas="2"), "shard 0 `replicas` must be int, got '2'"),
        (lambda d: d["tables"][0]["shards"][0].update(hot=True), r"shard 0 has unknown fields \['hot'\]"),
        (lambda d: d["router"].pop("device"), "`router` has no `device`"),
        (lambda d: d["router"].pop("instances_per_server"), "`router` has no `instances_per_server`"),
        (lambda d: d["dense"].pop("cores_per_instance"), "`dense` has no `cores_per_instance`"),
        (lambda d: d["tables"][0]["shards"][0].update(cores_per_replica="1"), "`cores_per_replica` must be"),
        (lambda d: d["tables"][0]["shards"][0].pop("replicas_per_server"), "has no `replicas_per_server`"),
        (lambda d: d.update(schema_version=4), "schema version 4; this recgen reads 1 to 3"),
    ],
)
def test_a_missing_mistyped_or_unknown_field_is_named(tmp_path: Path, edit: Any, message: str) -> None:
    path, document = _saved(tmp_path)
    edit(document)
    with pytest.raises(PlanError, match=message):
        load_plan(_write(path, document))


def test_more_instances_per_server_than_instances_is_refused(tmp_path: Path) -> None:
    path, document = _saved(tmp_path)
    document["dense"]["instances_per_server"] = 2
    with pytest.raises(UserInputError, match=r"`instances_per_server` must be an integer in 1..1 .*got 2"):
        load_plan(_write(path, document))


def _version_2(document: dict[str, Any]) -> dict[str, Any]:
    """The document as recgen wrote version 2, before placements said how many instances share a server."""
    old = json.loads(json.dumps(document))
    old["schema_version"] = 2
    for key in ("router", "dense"):
        old[key].pop("instances_per_server"), old[key].pop("cores_per_instance")
    for table in old["tables"]:
        for shard in table["shards"]:
            shard.pop("replicas_per_server"), shard.pop("cores_per_replica")
    return old


def test_a_version_2_file_is_spread_as_its_distributed_layout_served_it(tmp_path: Path) -> None:
    plan = uniform_plan(tiny_model(), name="tiny", shards_per_table=2, instance_count=3)
    path = save_plan(plan, tmp_path / "plan.json")
    loaded = load_plan(_write(path, _version_2(json.loads(path.read_text()))))
    assert loaded == plan
    assert {s.placement.instances_per_server for s in loaded.shards} == {1}  # a server per shard instance
    assert loaded.router.servers == loaded.dense.servers == 1  # one front server runs them all


def _version_1(document: dict[str, Any]) -> dict[str, Any]:
    """The document as recgen wrote version 1 before plans had engines, generations, features and row dtypes."""
    document = _version_2(document)
    old = {key: value for key, value in document.items() if key not in ("planner", "lookup_engine", "generation")}
    for key in ("group_by", "lookup_step", "latency_slo_ms", "shedding", "check_finite", "count_accesses", "features"):
        old.pop(key)
    old["schema_version"] = 1
    old["inputs"], old["totals"] = {}, {}
    for table in old["tables"]:
        table.pop("side"), table.pop("cached_rows")
        for shard in table["shards"]:
            shard.pop("row_dtype"), shard.pop("access_share"), shard.pop("router_pooled")
    return old


def test_a_version_1_file_is_migrated_with_what_its_reader_defaulted(tmp_path: Path) -> None:
    path, document = _saved(tmp_path)
    plan = load_plan(_write(path, _version_1(document)))
    assert plan.lookup_engine == "python" and plan.lookup_step == "separate" and plan.group_by == "placement"
    assert plan.latency_slo_ms == queueing.DEFAULT_LATENCY_SLO_MS and plan.shedding == "router"
    assert plan.check_finite and plan.count_accesses and plan.generation == 1 and plan.features == ()
    assert all(t.spec.side == "item" and t.cached_rows == 0 for t in plan.tables)
    assert {s.row_dtype for s in plan.shards} == {"fp32"}
    assert all(s.router_pooled for s in plan.shards)
    assert plan.router == Placement(1, "cpu")
    assert load_planner_figures(path) is None


def test_a_version_1_planner_file_keeps_its_figures(tmp_path: Path) -> None:
    path, document = _saved(tmp_path)
    old = _version_1(document)
    old["inputs"] = {"target_qps": 3000.0, "capacity": {"format": "recgen.capacity"}}
    old["totals"] = {"planned": {"memory_bytes": 123}, "front_cache": {"expected_hit_rate": 0.25}}
    old["tables"][1]["shards"][0]["access_share"] = 0.75
    figures = load_planner_figures(_write(path, old))
    assert figures is not None
    assert (figures.target_qps, figures.planned_memory_bytes, figures.expected_hit_rate) == (3000.0, 123, 0.25)
    assert figures.access_shares == {("small", 0): 0.75}


def test_a_shard_left_to_its_own_step_stays_so(tmp_path: Path) -> None:
    plan = uniform_plan(tiny_model(), name="tiny", shards_per_table=2)
    medium = plan.tables[2]
    shards = (medium.shards[0], dataclasses.replace(medium.shards[1], router_pooled=False))
    plan = dataclasses.replace(plan, tables=(*plan.tables[:2], dataclasses.replace(medium, shards=shards)))
    loaded = load_plan(save_plan(plan, tmp_path / "plan.json"))
    assert loaded == plan and [g.router_pooled for g in loaded.step_groups()] == [False]

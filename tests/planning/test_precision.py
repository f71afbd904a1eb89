"""Row dtypes in plans: choosing them, grouping by them, saving them, counting their bytes, rounding the model."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from generator.errors import PlanError, UserInputError
from generator.model.dlrm import TableSpec
from generator.planning import precision
from generator.planning.memory import ModelShape
from generator.planning.plan import Placement, Plan, table_plan, uniform_plan
from generator.planning.plan_file import load_plan, save_plan
from generator.planning.planner import plan_from_report, plan_model
from generator.traffic.profile import AccessProfile, TableShape, zipf_profile
from generator.triton_models import recgen_rows
from tests.conftest import tiny_model


def _mixed_plan() -> Plan:
    """`medium` cut in three shards (fp32, int8, fp16) with a hotness order; the others int8 and fp32."""
    model = tiny_model()
    one_row, small, medium = model.tables
    order = np.random.default_rng(0).permutation(medium.num_rows)
    tables = (
        table_plan(one_row, [0, 1], [Placement()], row_dtypes=["int8"]),
        table_plan(small, [0, 3, 7], [Placement(), Placement()]),
        table_plan(medium, [0, 10, 400, 1000], [Placement()] * 3, order, row_dtypes=["fp32", "int8", "fp16"]),
    )
    return Plan("dlrm", tables)


def test_row_dtype_values_set_every_table_or_one() -> None:
    tables = ["one_row", "small", "medium"]
    assert precision.parse_row_dtypes(["int8"], tables) == dict.fromkeys(tables, "int8")
    assert precision.parse_row_dtypes(["fp16", "small=int8"], tables) == {
        "one_row": "fp16",
        "small": "int8",
        "medium": "fp16",
    }
    assert precision.parse_row_dtypes([], tables) == {}
    with pytest.raises(UserInputError, match="no table 'large'; its tables: one_row, small, medium"):
        precision.parse_row_dtypes(["large=int8"], tables)
    with pytest.raises(UserInputError, match="must be one of fp32, fp16, int8, got 'int4'"):
        precision.parse_row_dtypes(["small=int4"], tables)


def test_precision_by_hotness_and_a_dtype_for_every_table_exclude_each_other() -> None:
    assert precision.row_precision(["int8"], None) == precision.RowPrecision({}, 1.0, "int8", "int8")
    chosen = precision.row_precision(["small=fp16"], 0.9, "fp32", "int8")
    assert chosen.by_hotness and chosen.tables == {"small": "fp16"}
    with pytest.raises(UserInputError, match="give one of them"):
        precision.row_precision(["int8"], 0.9)
    with pytest.raises(UserInputError, match=r"`--row-dtype-by-hotness` must be a share in 0\.\.1"):
        precision.RowPrecision(hot_share=1.5)
    shares = np.array([0.0, 0.5, 0.89, 0.9, 1.0])
    dtypes = [recgen_rows.ROW_DTYPES[i] for i in chosen.dtypes("medium", shares)]
    assert dtypes == ["fp32", "fp32", "fp32", "int8", "int8"]
    assert {recgen_rows.ROW_DTYPES[i] for i in chosen.dtypes("small", shares)} == {"fp16"}


def test_groups_never_mix_row_dtypes_and_bytes_follow_them() -> None:
    plan = _mixed_plan()
    groups = plan.shard_groups()
    assert [group.row_dtype for group in groups] == ["int8", "fp32", "fp16"]
    for group in groups:
        assert {shard.row_dtype for shard in group.shards} == {group.row_dtype}
    medium = plan.tables[2]
    assert [medium.shard_bytes(s) for s in medium.shards] == [10 * 32, 390 * 16, 600 * 16]
    assert "embedding rows:" in str(plan) and " int8 " in str(plan)
    with pytest.raises(UserInputError, match="`row_dtype` must be one of fp32, fp16, int8"):
        dataclasses.replace(plan.tables[0].shards[0], row_dtype="bf16")  # type: ignore[arg-type]


def test_with_row_dtypes_replaces_whole_tables_and_names_unknown_ones() -> None:
    plan = precision.with_row_dtypes(_mixed_plan(), {"medium": "fp16"})
    assert {s.row_dtype for s in plan.tables[2].shards} == {"fp16"}
    assert plan.tables[0].shards[0].row_dtype == "int8"
    with pytest.raises(UserInputError, match=r"names tables \['nope'\]"):
        precision.with_row_dtypes(plan, {"nope": "int8"})


def test_plan_files_keep_row_dtypes_and_older_files_read_as_fp32(tmp_path: Path) -> None:
    plan = _mixed_plan()
    path = save_plan(plan, tmp_path / "plan.json")
    loaded = load_plan(path)
    assert [s.row_dtype for s in loaded.shards] == [s.row_dtype for s in plan.shards]
    document = json.loads(path.read_text())
    assert document["tables"][2]["shards"][1]["bytes"] == 390 * 16
    for table in document["tables"]:
        for shard in table["shards"]:
            del shard["row_dtype"]
    path.write_text(json.dumps(document))
    with pytest.raises(PlanError, match="has no `row_dtype`"):  # version 2 reads no field with a default
        load_plan(path)
    document["schema_version"] = 1  # a version 1 file, written before row dtypes: fp32
    path.write_text(json.dumps(document))
    assert {s.row_dtype for s in load_plan(path).shards} == {"fp32"}
    document["tables"][0]["shards"][0]["row_dtype"] = "int3"
    path.write_text(json.dumps(document))
    with pytest.raises(UserInputError, match="shard `row_dtype`: row dtype must be one of"):
        load_plan(path)
    with pytest.raises(PlanError, match="placements"):
        table_plan(plan.tables[0].spec, [0, 1], [Placement()], row_dtypes=["fp32", "int8"])


def test_rounded_rows_read_every_row_back_through_its_shards_dtype() -> None:
    model, plan = tiny_model(), _mixed_plan()
    medium = plan.tables[2]
    weight = model.embeddings["medium"].detach().numpy().copy()
    rounded = precision.rounded_table_rows(model, medium)
    order = medium.original_rows()
    for shard in medium.shards:
        rows = order[shard.row_start : shard.row_end]
        np.testing.assert_array_equal(rounded[rows], recgen_rows.round_trip(weight[rows], shard.row_dtype))
    assert np.abs(rounded - weight).max() > 0  # int8 and fp16 moved something
    np.testing.assert_array_equal(precision.rounded_rank_rows(model, medium, 5, 15), rounded[order[5:15]])
    copy = precision.with_rounded_rows(model, plan)
    np.testing.assert_array_equal(model.embeddings["medium"].detach().numpy(), weight)  # the model is untouched
    np.testing.assert_array_equal(copy.embeddings["medium"].detach().numpy(), rounded)
    fp32 = uniform_plan(model)
    assert precision.with_rounded_rows(model, fp32) is model


def test_the_rounded_imported_model_is_compared_through_its_cut_program() -> None:
    from generator.model.imported import import_module
    from tests.model import zoo

    model = import_module(zoo.TwoTower().eval(), zoo.two_tower_example(), max_ids={"*": 4})
    plan = uniform_plan(model, row_dtypes=dict.fromkeys([t.name for t in model.tables], "int8"))
    before = {name: rows.clone() for name, rows in model.embeddings.items()}
    rounded = precision.with_rounded_rows(model, plan)
    request = model.random_request(6, seed=1)
    for ours, theirs in zip(rounded.reference_outputs(request), rounded.served_outputs(request), strict=True):
        np.testing.assert_array_equal(ours, theirs)
    exact = model.reference_outputs(request)
    assert max(float(np.abs(a - b).max()) for a, b in zip(exact, rounded.served_outputs(request), strict=True)) > 0
    assert all(torch.equal(model.embeddings[name], rows) for name, rows in before.items())


HISTORY = TableSpec("history", 200_000, 64, 20)
SHAPE = ModelShape((HISTORY, TableSpec("country", 300, 64, 1)), 4, (64,), (8, 1))


def _skewed() -> AccessProfile:
    return zipf_profile(
        [TableShape("history", HISTORY.num_rows, 20), TableShape("country", 300, 1)], 1.1, samples=50_000
    )


@pytest.mark.parametrize("hot_share", [0.5, 0.8, 0.95])
def test_the_planner_cuts_where_the_hot_share_ends_and_prices_each_shard_in_its_dtype(hot_share: float) -> None:
    profile = _skewed()
    chosen = precision.RowPrecision({"country": "fp16"}, hot_share, "fp32", "int8")
    report = plan_model(SHAPE, profile, target_qps=500, precision=chosen)
    history = [s for s in report.shards if s.table == "history"]
    access = profile.table("history")
    shares = np.concatenate([[0.0], np.cumsum(access.ranked_counts())]) / access.lookups
    edge = int(np.searchsorted(shares, hot_share - 1e-12))
    assert edge in [s.row_start for s in history]  # the edge is a cut
    for shard in history:
        assert shard.row_dtype == ("fp32" if shard.row_start < edge else "int8")
        assert shard.bytes_per_replica == (shard.row_end - shard.row_start) * recgen_rows.bytes_per_row(
            64, shard.row_dtype
        )
    assert {s.row_dtype for s in report.shards if s.table == "country"} == {"fp16"}
    assert report.planned.embedding_bytes == sum(s.memory_bytes for s in report.shards)
    plan = plan_from_report(report, SHAPE, profile)
    assert [s.row_dtype for s in plan.shards] == [s.row_dtype for s in report.shards]
    assert "int8" in str(report) and "as stored" in str(report)


def test_the_same_load_costs_less_memory_in_int8_and_a_fixed_dtype_needs_no_cut() -> None:
    profile = _skewed()
    full = plan_model(SHAPE, profile, target_qps=500)
    reduced = plan_model(SHAPE, profile, target_qps=500, precision=precision.row_precision(["int8"], None))
    assert {s.row_dtype for s in reduced.shards} == {"int8"}
    assert full.planned.embedding_bytes / reduced.planned.embedding_bytes == pytest.approx(4 * 64 / 72, rel=0.02)
    with pytest.raises(UserInputError, match=r"names tables \['nope'\]"):
        plan_model(SHAPE, profile, target_qps=500, precision=precision.RowPrecision({"nope": "int8"}))

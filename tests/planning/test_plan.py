import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from generator.errors import PlanError, UserInputError
from generator.model.dlrm import DLRM, TableSpec
from generator.planning.plan import Placement, Plan, split_rows, table_plan, uniform_plan
from tests.conftest import tiny_model, wide_model


@given(num_rows=st.integers(1, 10_000), max_shards=st.integers(1, 64))
def test_split_rows_is_contiguous_balanced_and_bounded(num_rows: int, max_shards: int) -> None:
    boundaries = split_rows(num_rows, max_shards)
    sizes = np.diff(boundaries)
    assert boundaries[0] == 0 and boundaries[-1] == num_rows
    assert len(sizes) == min(num_rows, max_shards)
    assert sizes.min() >= 1
    assert sizes.max() - sizes.min() <= 1


def test_table_smaller_than_k_gets_one_shard_per_row() -> None:
    assert split_rows(1, 4) == [0, 1]
    assert split_rows(3, 8) == [0, 1, 2, 3]


@pytest.mark.parametrize(("rows", "k"), [(0, 2), (5, 0)])
def test_split_rows_rejects_bad_arguments(rows: int, k: int) -> None:
    with pytest.raises(UserInputError):
        split_rows(rows, k)


def test_uniform_plan_covers_every_table() -> None:
    model = tiny_model()
    plan = uniform_plan(model, shards_per_table=3, instance_count=2)
    assert [len(t.shards) for t in plan.tables] == [1, 3, 3]
    assert plan.tables[1].boundaries == [0, 2, 4, 7]
    assert all(s.placement == Placement(2, "cpu") for s in plan.shards)
    plan.check_matches(model)
    assert "small" in str(plan)


def test_arbitrary_boundaries_and_instance_counts() -> None:
    spec = TableSpec("t", 100, 4, 2)
    plan = table_plan(spec, [0, 3, 40, 100], [Placement(4), Placement(2), Placement(1, "gpu")])
    assert [s.num_rows for s in plan.shards] == [3, 37, 60]
    assert [s.placement.instance_count for s in plan.shards] == [4, 2, 1]


def test_row_order_permutation_and_its_inverse() -> None:
    spec = TableSpec("t", 5, 4, 1)
    order = np.array([3, 0, 4, 1, 2])
    plan = table_plan(spec, [0, 2, 5], [Placement(), Placement()], row_order=order)
    ranks = plan.rank_of_row()
    assert ranks is not None
    assert np.array_equal(plan.original_rows()[ranks], np.arange(5))


@pytest.mark.parametrize(
    ("boundaries", "message"),
    [([0, 2, 2, 5], "non-empty and contiguous"), ([0, 3], "end at row 3"), ([1, 5], "start at 0")],
)
def test_bad_boundaries_are_plan_errors(boundaries, message) -> None:
    spec = TableSpec("t", 5, 4, 1)
    with pytest.raises(PlanError, match=message):
        table_plan(spec, boundaries, [Placement()] * (len(boundaries) - 1))


def test_bad_permutation_is_a_plan_error() -> None:
    with pytest.raises(PlanError, match="permutation"):
        table_plan(TableSpec("t", 3, 4, 1), [0, 3], [Placement()], row_order=np.array([0, 0, 1]))


def test_bad_placement_names_field_and_range() -> None:
    with pytest.raises(UserInputError, match=r"instance_count.*1\.\.256"):
        Placement(0)
    with pytest.raises(UserInputError, match=r"device.*cpu, gpu"):
        Placement(1, "tpu")  # type: ignore[arg-type]


def test_plan_for_another_model_is_rejected_naming_what_differs() -> None:
    plan = uniform_plan(tiny_model())
    with pytest.raises(PlanError, match=r"does not match.*\['one_row', 'small', 'medium'\] in the plan, \['history'"):
        plan.check_matches(wide_model())
    tables = list(tiny_model().tables)
    tables[2] = TableSpec("medium", 999, 8, 1)
    other = DLRM(num_dense_features=5, tables=tables, bottom_mlp=[16, 8], top_mlp=[8, 1])
    with pytest.raises(PlanError, match="table 'medium': `num_rows` 1000 in the plan, 999 in the model") as error:
        plan.check_matches(other)
    assert "'small'" not in str(error.value)  # only what differs


def test_bad_model_name() -> None:
    with pytest.raises(UserInputError, match="model `name`"):
        Plan(model_name="has space", tables=uniform_plan(tiny_model()).tables)

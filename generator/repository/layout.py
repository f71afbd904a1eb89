"""The wire layout of a generated repository: every tensor between the steps, and where each id lands in it.

One owner for what the router writes and what the shard groups and dense models read: the request contracts
(flattened and ranking), each shard group's packed input (one block of columns per table it holds, of row ids into
its members' stacked rows) and output (one `dim` slot per table), and which (tensor, slot) pairs make up each
table's pool. Configs, typed parameters, ONNX export, edge accounting and calibration all read it from here.
Dtypes are Triton's names (`FP32`, `INT64`, `INT32`); mapping them to the config schema is `configs`' job.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import accumulate, pairwise
from typing import Literal

from generator import naming
from generator.model.dlrm import Side
from generator.planning.plan import Plan, ShardGroup

DataType = Literal["FP32", "INT64", "INT32"]


@dataclass(frozen=True)
class TensorSpec:
    """A tensor of a model's signature; `dims` exclude the batch dimension of batching models."""

    name: str
    data_type: DataType
    dims: tuple[int, ...]

    def unbatched(self) -> TensorSpec:
        """The same tensor with a leading variable dimension (for models with max_batch_size 0)."""
        return TensorSpec(self.name, self.data_type, (-1, *self.dims))


def fp32(name: str, *dims: int) -> TensorSpec:
    """An FP32 tensor."""
    return TensorSpec(name, "FP32", dims)


def int64(name: str, *dims: int) -> TensorSpec:
    """An INT64 tensor."""
    return TensorSpec(name, "INT64", dims)


def int32(name: str, *dims: int) -> TensorSpec:
    """An INT32 tensor (local row ids: a shard holds < 2**31 rows, half the bytes of int64 on the edge)."""
    return TensorSpec(name, "INT32", dims)


def row_dim(plan: Plan) -> int:
    """Width of every row and partial sum (the DLRM protocol: every table's dim equals bottom_mlp[-1])."""
    return plan.tables[0].spec.dim


# -- request contracts -------------------------------------------------------------------------------------------


def sparse_inputs(plan: Plan) -> list[TensorSpec]:
    """One multi-hot id tensor per table (the flattened request and the router's inputs)."""
    return [int64(naming.sparse_input(t.spec.name), t.spec.max_ids_per_sample) for t in plan.tables]


def ensemble_inputs(plan: Plan, num_dense_features: int) -> list[TensorSpec]:
    """The flattened request contract: dense features, then one multi-hot id tensor per table."""
    return [fp32(naming.DENSE_FEATURES, num_dense_features), *sparse_inputs(plan)]


def ensemble_outputs() -> list[TensorSpec]:
    """The flattened request contract's output."""
    return [fp32(naming.SCORE, 1)]


def ranking_sparse_inputs(plan: Plan) -> list[TensorSpec]:
    """The ranking request's ids (full shapes): [1, L] for a user-side table, [N, L] for an item-side one."""
    return [
        int64(naming.side_sparse_input(t.spec.name, t.spec.side), _rows_of(t.spec.side), t.spec.max_ids_per_sample)
        for t in plan.tables
    ]


def ranking_dense_inputs(dense_sides: list[Side]) -> list[TensorSpec]:
    """The ranking request's dense features: [1, Du] of the user, [N, Di] of the candidates (absent when empty)."""
    specs = []
    for side, name in (("user", naming.USER_DENSE_FEATURES), ("item", naming.ITEM_DENSE_FEATURES)):
        width = sum(1 for value in dense_sides if value == side)
        if width:
            specs.append(fp32(name, _rows_of(side), width))
    return specs


def ranking_inputs(plan: Plan, dense_sides: list[Side]) -> list[TensorSpec]:
    """The ranking request contract (full shapes, no batch dimension): one user row, N candidate rows."""
    return [*ranking_dense_inputs(dense_sides), *ranking_sparse_inputs(plan)]


def ranking_outputs() -> list[TensorSpec]:
    """The ranking request's output: one score per candidate."""
    return [fp32(naming.SCORE, -1, 1)]


def _rows_of(side: str) -> int:
    return 1 if side == "user" else -1


# -- shard groups ----------------------------------------------------------------------------------------------------


def group_tables(group: ShardGroup) -> list[str]:
    """Tables with shards in the group, in order of first appearance: one partial-sum slot each."""
    return list(dict.fromkeys(shard.table for shard in group.shards))


def shard_group_model_name(plan: Plan, group: ShardGroup) -> str:
    """The Triton model serving a shard group."""
    return naming.shard_group_model(plan.model_name, group.index, [(s.table, s.index) for s in group.shards])


@dataclass(frozen=True)
class GroupLayout:
    """A shard group's packed input: one block of columns per table it holds, of row ids into its stacked rows.

    The group stacks its member shards' rows in member order; `first_rows[i]` is where member i starts. A sample's
    id lives in exactly one shard of its table, so the router writes it, already shifted to the stacked rows,
    into the table's block: the group pools each block with one gather per column, whatever its shard count.
    """

    tables: list[str]  # partial-sum slot order
    columns: list[tuple[int, int]]  # [first, last) per table slot
    first_rows: list[int]  # per member shard
    total_rows: int

    @property
    def width(self) -> int:
        """Columns of the packed input."""
        return self.columns[-1][1]


def group_layout(plan: Plan, group: ShardGroup) -> GroupLayout:
    """Columns per table slot and first stacked row per member shard (the router and the group both read this)."""
    widths = {table.spec.name: table.spec.max_ids_per_sample for table in plan.tables}
    tables = group_tables(group)
    edges = list(accumulate((widths[table] for table in tables), initial=0))
    rows = list(accumulate((shard.num_rows for shard in group.shards), initial=0))
    return GroupLayout(tables, list(pairwise(edges)), rows[:-1], rows[-1])


def group_signature(plan: Plan, group: ShardGroup) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """A shard group's input and output, the same for the group model and its remote step in a front server."""
    layout = group_layout(plan, group)
    return (
        [int32(naming.group_local_ids(group.index), layout.width)],
        [fp32(naming.group_partial_sums(group.index), len(layout.tables) * row_dim(plan))],
    )


def cached_tables(plan: Plan) -> list[str]:
    """Tables with rows in the router's front cache, in model order (one partial-sum slot each)."""
    return [t.spec.name for t in plan.tables if t.cached_rows]


def front_cache_partials(plan: Plan) -> list[TensorSpec]:
    """The router's pools of its front cache, one slot per cached table (straight to the dense model); [] without."""
    if not plan.has_front_cache:
        return []
    return [fp32(naming.FRONT_CACHE_PARTIALS, len(cached_tables(plan)) * row_dim(plan))]


def router_outputs(plan: Plan) -> list[TensorSpec]:
    """The router's outputs: every group's packed ids, then the front cache's partial sums (if any)."""
    return [group_signature(plan, group)[0][0] for group in plan.shard_groups()] + front_cache_partials(plan)


# -- dense models ------------------------------------------------------------------------------------------------------


def partial_sum_inputs(plan: Plan) -> list[TensorSpec]:
    """Every shard group's packed partial sums, then the front cache's: what the dense models add up per table."""
    return [group_signature(plan, group)[1][0] for group in plan.shard_groups()] + front_cache_partials(plan)


def dense_inputs(plan: Plan, num_dense_features: int) -> list[TensorSpec]:
    """Dense features, then the partial sums (the dense ONNX graph's input order)."""
    return [fp32(naming.DENSE_FEATURES, num_dense_features), *partial_sum_inputs(plan)]


def table_parts(plan: Plan) -> list[list[tuple[str, int]]]:
    """Per table (model order): the (packed partial-sum tensor, slot) of each group holding its shards."""
    slots = [(naming.group_partial_sums(group.index), group_tables(group)) for group in plan.shard_groups()]
    if plan.has_front_cache:
        slots.append((naming.FRONT_CACHE_PARTIALS, cached_tables(plan)))
    return [
        [(tensor, tables.index(t.spec.name)) for tensor, tables in slots if t.spec.name in tables] for t in plan.tables
    ]

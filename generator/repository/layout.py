"""The wire layout of a generated repository: every tensor between the steps, and where each id lands in it.

One owner for what the router writes and what the shard groups and dense models read: the request contracts
(flattened and ranking), each shard group's packed input (one block of columns per table it holds, of row ids into
its members' stacked rows) and output (one `dim` slot per table), and which (tensor, slot) pairs make up each
table's pool. Configs, typed parameters, ONNX export, edge accounting and calibration all read it from here.
Dtypes are Triton's names (`FP32`, `INT64`, `INT32`); mapping them to the config schema is `configs`' job.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import accumulate, pairwise
from typing import Literal

from generator import naming
from generator.model.dlrm import Side
from generator.model.imported import ImportedModel
from generator.planning.plan import Model, Plan, ShardGroup

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
    """Width of every row and partial sum of recgen's DLRM (its protocol: every table's dim equals bottom_mlp[-1])."""
    return plan.tables[0].spec.dim


def table_dims(plan: Plan) -> dict[str, int]:
    """Row width per table (an imported model's tables keep their own widths)."""
    return {table.spec.name: table.spec.dim for table in plan.tables}


# -- request contracts -------------------------------------------------------------------------------------------


def sparse_inputs(plan: Plan) -> list[TensorSpec]:
    """One multi-hot id tensor per feature (the flattened request and the router's inputs)."""
    return [int64(naming.sparse_input(f.name), f.max_ids_per_sample) for f in plan.sparse_features]


def weight_inputs(plan: Plan) -> list[TensorSpec]:
    """One per-id weight tensor per weighted feature, laid out as its ids ([] for unweighted models)."""
    return [fp32(naming.weights_input(f.name), f.max_ids_per_sample) for f in plan.sparse_features if f.weighted]


def router_inputs(plan: Plan) -> list[TensorSpec]:
    """What the router reads from a flattened request: every feature's ids, then the weighted features' weights."""
    return [*sparse_inputs(plan), *weight_inputs(plan)]


#: The dense side of a request: recgen's DLRM has one `dense_features` tensor of this width; an imported model has
#: its own dense inputs, (name, width) each.
DenseSignature = int | Sequence[tuple[str, int]]
#: An imported model's outputs, (name, per-sample dims) each; None for recgen's DLRM (one `score` [B, 1]).
OutputSignature = Sequence[tuple[str, tuple[int, ...]]] | None


def model_signature(model: Model) -> tuple[DenseSignature, OutputSignature]:
    """The dense side and the outputs of a model's request contract."""
    if isinstance(model, ImportedModel):
        return model.dense_inputs, model.outputs
    return model.num_dense_features, None


def dense_tensors(dense: DenseSignature) -> list[TensorSpec]:
    """The request's dense tensors."""
    if isinstance(dense, int):
        return [fp32(naming.DENSE_FEATURES, dense)]
    return [fp32(name, width) for name, width in dense]


def ensemble_inputs(plan: Plan, dense: DenseSignature) -> list[TensorSpec]:
    """The flattened request contract: the dense tensors, one multi-hot id tensor per feature, then the weights."""
    return [*dense_tensors(dense), *router_inputs(plan)]


def ensemble_outputs(outputs: OutputSignature = None) -> list[TensorSpec]:
    """The flattened request contract's outputs: `score` [B, 1], or an imported model's own outputs."""
    if outputs is None:
        return [fp32(naming.SCORE, 1)]
    return [fp32(name, *dims) for name, dims in outputs]


def ranking_sparse_inputs(plan: Plan) -> list[TensorSpec]:
    """The ranking request's ids (full shapes): [1, L] for a user-side feature, [N, L] for an item-side one."""
    return [
        int64(naming.side_sparse_input(f.name, f.side), _rows_of(f.side), f.max_ids_per_sample)
        for f in plan.sparse_features
    ]


def ranking_weight_inputs(plan: Plan) -> list[TensorSpec]:
    """The ranking request's per-id weights of the weighted features, shaped as their ids."""
    return [
        fp32(naming.side_input(naming.weights_input(f.name), f.side), _rows_of(f.side), f.max_ids_per_sample)
        for f in plan.sparse_features
        if f.weighted
    ]


def ranking_router_inputs(plan: Plan) -> list[TensorSpec]:
    """What the ranking router reads: every feature's ids on its side, then the weighted features' weights."""
    return [*ranking_sparse_inputs(plan), *ranking_weight_inputs(plan)]


def imported_ranking_dense_inputs(model: ImportedModel) -> list[TensorSpec]:
    """An imported model's dense inputs in a ranking request: `user_<name>` [1, width], `item_<name>` [N, width]."""
    return [
        fp32(naming.side_input(name, model.side_of(name)), _rows_of(model.side_of(name)), width)
        for name, width in model.dense_inputs
    ]


def ranking_signature(plan: Plan, model: Model) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """The `<model>_ranking` request contract (full shapes): inputs, then outputs ([N, ...] each)."""
    if isinstance(model, ImportedModel):
        outputs = [fp32(name, -1, *dims) for name, dims in model.outputs]
        return [*imported_ranking_dense_inputs(model), *ranking_router_inputs(plan)], outputs
    return ranking_inputs(plan, model.dense_sides), ranking_outputs()


def ranking_dense_step_inputs(plan: Plan, model: Model) -> list[TensorSpec]:
    """The ranking dense step's inputs: the request's dense tensors, the [1 + N, ...] partial sums (and counts)."""
    partials = [spec.unbatched() for spec in [*partial_sum_inputs(plan), *pool_counts(plan)]]
    if isinstance(model, ImportedModel):
        return [*imported_ranking_dense_inputs(model), *partials]
    return [*ranking_dense_inputs(model.dense_sides), *partials]


def finite_inputs(plan: Plan, dense: DenseSignature) -> list[TensorSpec]:
    """The flattened request's FP32 tensors the router checks for finite values (none if the plan allows them)."""
    return [*dense_tensors(dense), *weight_inputs(plan)] if plan.check_finite else []


def ranking_finite_inputs(plan: Plan, model: Model) -> list[TensorSpec]:
    """The ranking request's FP32 tensors the ranking router checks for finite values."""
    if not plan.check_finite:
        return []
    if isinstance(model, ImportedModel):
        return [*imported_ranking_dense_inputs(model), *ranking_weight_inputs(plan)]
    return [*ranking_dense_inputs(model.dense_sides), *ranking_weight_inputs(plan)]


def with_checked(reads: Sequence[TensorSpec], checked: Sequence[TensorSpec]) -> list[TensorSpec]:
    """A router's inputs: what it routes, then the tensors it only checks (each tensor once)."""
    names = {spec.name for spec in reads}
    return [*reads, *(spec for spec in checked if spec.name not in names)]


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


def group_slots(plan: Plan, group: ShardGroup) -> list[tuple[str, str]]:
    """(feature, table) of every partial-sum slot of a group: the features of the tables it holds, model order."""
    tables = {shard.table for shard in group.shards}
    return [(f.name, f.table) for f in plan.sparse_features if f.table in tables]


def shard_group_model_name(plan: Plan, group: ShardGroup) -> str:
    """The Triton model serving a shard group."""
    return naming.shard_group_model(plan.leaf_stem, group.index, [(s.table, s.index) for s in group.shards])


@dataclass(frozen=True)
class GroupLayout:
    """A shard group's packed input: one block of columns per feature slot, of row ids into its stacked rows.

    The group stacks its member shards' rows per row width, in member order; `first_rows[i]` is where member i
    starts in its width's stack (recgen's DLRM has one width, so one stack). A sample's id lives in exactly one
    shard of its table, so the router writes it, already shifted to the stacked rows, into the feature's block: the
    group pools each block with one gather per column, whatever its shard count. Output slot i is `slot_widths[i]`
    columns wide.
    """

    features: list[str]  # partial-sum slot order
    tables: list[str]  # the table of every slot
    columns: list[tuple[int, int]]  # [first, last) input columns per slot
    slot_widths: list[int]
    first_rows: list[int]  # per member shard, within its width's stack
    total_rows: int
    stack_widths: tuple[int, ...] = ()  # the row width of every stack, in member order

    @property
    def slot_stacks(self) -> list[int]:
        """The stack every slot pools from (the stack of its table's width)."""
        return [self.stack_widths.index(width) for width in self.slot_widths]

    @property
    def width(self) -> int:
        """Columns of the packed input."""
        return self.columns[-1][1]

    @property
    def output_columns(self) -> list[tuple[int, int]]:
        """[first, last) output columns per slot."""
        edges = list(accumulate(self.slot_widths, initial=0))
        return list(pairwise(edges))


def group_layout(plan: Plan, group: ShardGroup) -> GroupLayout:
    """Columns per feature slot and first stacked row per member shard (the router and the group both read this)."""
    widths = {f.name: f.max_ids_per_sample for f in plan.sparse_features}
    dims = table_dims(plan)
    slots = group_slots(plan, group)
    edges = list(accumulate((widths[feature] for feature, _ in slots), initial=0))
    stacked: dict[int, int] = {}
    first_rows = []
    for shard in group.shards:
        dim = dims[shard.table]
        first_rows.append(stacked.get(dim, 0))
        stacked[dim] = first_rows[-1] + shard.num_rows
    return GroupLayout(
        [feature for feature, _ in slots],
        [table for _, table in slots],
        list(pairwise(edges)),
        [dims[table] for _, table in slots],
        first_rows,
        sum(stacked.values()),
        tuple(stacked),
    )


def group_weighted(plan: Plan, group: ShardGroup) -> bool:
    """Whether a group pools a weighted feature: then the router also sends it every id's weight."""
    weighted = {f.name for f in plan.sparse_features if f.weighted}
    return any(feature in weighted for feature, _ in group_slots(plan, group))


def group_signature(plan: Plan, group: ShardGroup) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """A shard group's inputs and output, the same for the group model and its remote step in a front server.

    The inputs are the packed local ids and, when the group pools a weighted feature, each id's weight in the same
    columns (1 for the ids of unweighted features).
    """
    layout = group_layout(plan, group)
    inputs = [int32(naming.group_local_ids(group.index), layout.width)]
    if group_weighted(plan, group):
        inputs.append(fp32(naming.group_id_weights(group.index), layout.width))
    return inputs, [fp32(naming.group_partial_sums(group.index), sum(layout.slot_widths))]


def cached_features(plan: Plan) -> list[tuple[str, str]]:
    """(feature, table) of the features whose table has rows in the router's front cache (one slot each)."""
    cached = {t.spec.name for t in plan.tables if t.cached_rows}
    return [(f.name, f.table) for f in plan.sparse_features if f.table in cached]


def cached_tables(plan: Plan) -> list[str]:
    """The table of every front-cache slot, in model order (recgen's DLRM: the cached tables)."""
    return [table for _, table in cached_features(plan)]


def front_cache_partials(plan: Plan) -> list[TensorSpec]:
    """The router's pools of its front cache, one slot per cached feature (straight to the dense model); []."""
    if not plan.has_front_cache:
        return []
    dims = table_dims(plan)
    return [fp32(naming.FRONT_CACHE_PARTIALS, sum(dims[table] for table in cached_tables(plan)))]


def mean_features(plan: Plan) -> list[str]:
    """Mean-pooled features in model order: the router counts their ids for the dense model."""
    return [f.name for f in plan.sparse_features if f.pooling == "mean"]


def pool_counts(plan: Plan) -> list[TensorSpec]:
    """The router's per-sample id counts of the mean-pooled features, [B, features] FP32 ([] without any)."""
    means = mean_features(plan)
    return [fp32(naming.POOL_COUNTS, len(means))] if means else []


def router_outputs(plan: Plan) -> list[TensorSpec]:
    """The router's outputs: every group's packed ids, the front cache's partial sums and the mean counts (if any).

    With a fused lookup step, the groups the router pools itself give their partial sums instead of their ids.
    """
    pooled = {group.index for group in plan.router_pooled_groups()}
    groups = [
        spec
        for group in plan.shard_groups()
        for spec in group_signature(plan, group)[1 if group.index in pooled else 0]
    ]
    return groups + front_cache_partials(plan) + pool_counts(plan)


def profile_signature(plan: Plan) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """The profile model's inputs (an optional [1] reset flag) and outputs (touched rows and counts per table)."""
    outputs = [
        spec
        for table in plan.tables
        for spec in (
            int64(naming.profile_rows_output(table.spec.name), -1),
            int64(naming.profile_counts_output(table.spec.name), -1),
        )
    ]
    outputs += [
        int64(naming.PROFILE_SAMPLES, len(plan.tables)),
        int64(naming.PROFILE_SINCE, 1),
        int64(naming.PROFILE_INSTANCES, 1),
    ]
    return [int32(naming.PROFILE_RESET, 1)], outputs


# -- dense models ------------------------------------------------------------------------------------------------------


def partial_sum_inputs(plan: Plan) -> list[TensorSpec]:
    """Every shard group's packed partial sums, then the front cache's: what the dense models add up per table."""
    return [group_signature(plan, group)[1][0] for group in plan.shard_groups()] + front_cache_partials(plan)


def dense_inputs(plan: Plan, dense: DenseSignature) -> list[TensorSpec]:
    """The dense tensors, the partial sums, then the mean counts (the dense ONNX graph's input order)."""
    return [*dense_tensors(dense), *partial_sum_inputs(plan), *pool_counts(plan)]


def table_parts(plan: Plan) -> list[list[tuple[str, int]]]:
    """Per feature (model order): the (packed partial-sum tensor, slot) of each group holding its table's shards."""
    slots = [
        (naming.group_partial_sums(group.index), [feature for feature, _ in group_slots(plan, group)])
        for group in plan.shard_groups()
    ]
    if plan.has_front_cache:
        slots.append((naming.FRONT_CACHE_PARTIALS, [feature for feature, _ in cached_features(plan)]))
    return [
        [(tensor, features.index(f.name)) for tensor, features in slots if f.name in features]
        for f in plan.sparse_features
    ]


def part_columns(plan: Plan) -> list[list[tuple[str, int, int]]]:
    """Per feature (model order): the (packed partial-sum tensor, first column, last column) of each of its parts."""
    dims = table_dims(plan)
    columns = {
        naming.group_partial_sums(group.index): group_layout(plan, group).output_columns
        for group in plan.shard_groups()
    }
    if plan.has_front_cache:
        edges = list(accumulate((dims[table] for table in cached_tables(plan)), initial=0))
        columns[naming.FRONT_CACHE_PARTIALS] = list(pairwise(edges))
    return [[(tensor, *columns[tensor][slot]) for tensor, slot in parts] for parts in table_parts(plan)]

"""The wire between a repository's steps: what the router writes, what each shard group and the dense models read.

One owner for where each id lands: each shard group's packed input (one block of columns per feature it holds, of
row ids into its members' stacked rows) and output (one slot per feature), the front cache's and the mean counts'
tensors, and which (tensor, slot) pairs make up each feature's pool. `wire_layout(plan)` builds it once per plan;
the build hands that value to the typed parameters, the configs, the export, the manifest and the topology.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import accumulate, pairwise

from generator import naming
from generator.planning.plan import Model, Plan, ShardGroup
from generator.repository.layout import (
    DenseSignature,
    TensorSpec,
    dense_tensors,
    fp32,
    int32,
    ranking_dense_inputs,
    table_dims,
)

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


def _group_layout(plan: Plan, group: ShardGroup) -> GroupLayout:
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


def _group_weighted(plan: Plan, group: ShardGroup) -> bool:
    """Whether a group pools a weighted feature: then the router also sends it every id's weight."""
    weighted = {f.name for f in plan.sparse_features if f.weighted}
    return any(feature in weighted for feature, _ in group_slots(plan, group))


@dataclass(frozen=True)
class GroupWire:
    """One shard group on the wire: its model, its packed columns, and the tensors it reads and writes.

    The inputs are the packed local ids and, when the group pools a weighted feature, each id's weight in the same
    columns (1 for the ids of unweighted features); the group model and its remote step in a front server read
    the same. The output is one partial-sum slot per feature it holds.
    """

    group: ShardGroup
    model_name: str
    columns: GroupLayout
    ids: TensorSpec
    weights: TensorSpec | None
    partial_sums: TensorSpec
    pooled_by_router: bool  # a fused lookup step: the router pools it and sends its partial sums instead

    @property
    def index(self) -> int:
        """The group's number (its position in `WireLayout.groups`)."""
        return self.group.index

    @property
    def inputs(self) -> list[TensorSpec]:
        """The packed ids, then their weights when the group pools a weighted feature."""
        return [self.ids] if self.weights is None else [self.ids, self.weights]


@dataclass(frozen=True)
class WireLayout:
    """Every tensor between the router, the shard groups and the dense step, built once per plan (`wire_layout`).

    The build hands this one value to the typed parameters, the configs, the export, the manifest and the
    topology, so the router and every reader of its outputs agree by construction.
    """

    groups: tuple[GroupWire, ...]
    front_cache: tuple[TensorSpec, ...]  # the router's front-cache pools (none without a front cache)
    counts: tuple[TensorSpec, ...]  # the mean-pooled features' id counts (none without such features)
    #: Per feature (model order): the (partial-sum tensor, slot) of each group holding its table's shards.
    table_parts: tuple[tuple[tuple[str, int], ...], ...]
    #: Per feature (model order): the (partial-sum tensor, first column, last column) of each of its parts.
    part_columns: tuple[tuple[tuple[str, int, int], ...], ...]

    def of(self, group: ShardGroup) -> GroupWire:
        """The wire of one of the plan's groups."""
        return self.groups[group.index]

    @property
    def pooled(self) -> list[GroupWire]:
        """The groups the router pools in its own step (fused lookup step)."""
        return [wire for wire in self.groups if wire.pooled_by_router]

    @property
    def steps(self) -> list[GroupWire]:
        """The groups served as their own model and ensemble step."""
        return [wire for wire in self.groups if not wire.pooled_by_router]

    def router_outputs(self) -> list[TensorSpec]:
        """Every group's packed ids (or, pooled by the router, its partial sums), the front cache's, the counts."""
        groups = [
            spec for wire in self.groups for spec in ([wire.partial_sums] if wire.pooled_by_router else wire.inputs)
        ]
        return [*groups, *self.front_cache, *self.counts]

    def partial_sum_inputs(self) -> list[TensorSpec]:
        """Every group's partial sums, then the front cache's: what the dense models add up per table."""
        return [*(wire.partial_sums for wire in self.groups), *self.front_cache]


def wire_layout(plan: Plan) -> WireLayout:
    """The plan's wire layout (see WireLayout)."""
    pooled = {group.index for group in plan.router_pooled_groups()}
    groups = tuple(_group_wire(plan, group, group.index in pooled) for group in plan.shard_groups())
    parts = _table_parts(plan, groups)
    return WireLayout(
        groups, tuple(front_cache_partials(plan)), tuple(pool_counts(plan)), parts, _part_columns(plan, groups, parts)
    )


def _group_wire(plan: Plan, group: ShardGroup, pooled_by_router: bool) -> GroupWire:
    columns = _group_layout(plan, group)
    weights = fp32(naming.group_id_weights(group.index), columns.width) if _group_weighted(plan, group) else None
    return GroupWire(
        group,
        shard_group_model_name(plan, group),
        columns,
        int32(naming.group_local_ids(group.index), columns.width),
        weights,
        fp32(naming.group_partial_sums(group.index), sum(columns.slot_widths)),
        pooled_by_router,
    )


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


# -- dense models ------------------------------------------------------------------------------------------------------


def dense_inputs(wire: WireLayout, dense: DenseSignature) -> list[TensorSpec]:
    """The dense tensors, the partial sums, then the mean counts (the dense ONNX graph's input order)."""
    return [*dense_tensors(dense), *wire.partial_sum_inputs(), *wire.counts]


def _table_parts(plan: Plan, groups: Sequence[GroupWire]) -> tuple[tuple[tuple[str, int], ...], ...]:
    slots = [(wire.partial_sums.name, wire.columns.features) for wire in groups]
    if plan.has_front_cache:
        slots.append((naming.FRONT_CACHE_PARTIALS, [feature for feature, _ in cached_features(plan)]))
    return tuple(
        tuple((tensor, features.index(f.name)) for tensor, features in slots if f.name in features)
        for f in plan.sparse_features
    )


def _part_columns(
    plan: Plan, groups: Sequence[GroupWire], parts: Sequence[Sequence[tuple[str, int]]]
) -> tuple[tuple[tuple[str, int, int], ...], ...]:
    dims = table_dims(plan)
    columns = {wire.partial_sums.name: wire.columns.output_columns for wire in groups}
    if plan.has_front_cache:
        edges = list(accumulate((dims[table] for table in cached_tables(plan)), initial=0))
        columns[naming.FRONT_CACHE_PARTIALS] = list(pairwise(edges))
    return tuple(tuple((tensor, *columns[tensor][slot]) for tensor, slot in per) for per in parts)


def ranking_dense_step_inputs(wire: WireLayout, model: Model) -> list[TensorSpec]:
    """The ranking dense step's inputs: the request's dense tensors, the [1 + N, ...] partial sums (and counts)."""
    partials = [spec.unbatched() for spec in [*wire.partial_sum_inputs(), *wire.counts]]
    return [*ranking_dense_inputs(model), *partials]

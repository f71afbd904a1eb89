"""The typed parameters every generated runtime model reads, built from a plan and its wire layout.

The specs themselves live in `generator.triton_models.recgen_params` (shipped next to each model.py); this module
fills them in. `configs` puts each into its model's config.pbtxt.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from generator import naming, triton_runtime
from generator.model.dlrm import Side
from generator.planning import queueing
from generator.planning.plan import Plan
from generator.repository import layout, wiring
from generator.repository.layout import TensorSpec
from generator.repository.wiring import GroupWire, WireLayout
from generator.triton_models import recgen_params as params


def routing(
    plan: Plan, wire: WireLayout, input_names: Sequence[str], weights_names: Sequence[str] | None = None
) -> params.RoutingParams:
    """The router's routing table: per feature (read from `input_names`) where each shard's ids land.

    `weights_names`: the weighted features' weights tensors in order (default: the flattened request's names).
    """
    weighted = [f for f in plan.sparse_features if f.weighted]
    weights_of = dict(
        zip(
            [f.name for f in weighted],
            weights_names if weights_names is not None else [naming.weights_input(f.name) for f in weighted],
            strict=True,
        )
    )
    member = {
        (shard.table, shard.index): (group.index, group.columns, first)
        for group in wire.groups
        for shard, first in zip(group.group.shards, group.columns.first_rows, strict=True)
    }
    tables = {t.spec.name: t for t in plan.tables}

    def target(feature: str, table: str, shard: int) -> params.ShardTarget:
        position, group_layout, first = member[(table, shard)]
        column = group_layout.columns[group_layout.features.index(feature)][0]
        return params.ShardTarget(output=position, column=column, first_row=first)

    routed = tuple(
        params.RoutedTable(
            table=f.table,
            input=input_name,
            side=f.side,
            cached_rows=tables[f.table].cached_rows,
            num_rows=tables[f.table].spec.num_rows,
            ids_per_sample=f.max_ids_per_sample,
            boundaries=tuple(tables[f.table].boundaries),
            shards=tuple(target(f.name, f.table, s.index) for s in tables[f.table].shards),
            permuted=tables[f.table].row_order is not None,
            counted=f.pooling == "mean",
            weights_input=weights_of.get(f.name, ""),
            padding_id=f.padding_id,
        )
        for f, input_name in zip(plan.sparse_features, input_names, strict=True)
    )
    outputs = tuple(
        params.PackedOutput(
            name=group.ids.name, width=group.columns.width, weights=group.weights.name if group.weights else ""
        )
        for group in wire.groups
    )
    counts = wire.counts[0].name if wire.counts else ""
    return params.RoutingParams(tables=routed, outputs=outputs, counts_output=counts)


def router_pooling(plan: Plan, wire: WireLayout) -> params.RouterPoolingParams | None:
    """The groups the router pools itself (fused lookup step) and where their stacked rows live; None if none."""
    if not wire.pooled:
        return None
    entries = []
    for wired in wire.pooled:
        group, group_layout = wired.group, wired.columns
        entries.append(
            params.PooledGroup(
                ids=wired.ids.name,
                weights=wired.weights.name if wired.weights else "",
                output=wired.partial_sums.name,
                stack_files=tuple(
                    naming.router_rows_file(group.index, stack) for stack in range(len(group_layout.stack_widths))
                ),
                slots=tuple(
                    params.GroupSlot(table=table, columns=span)
                    for table, span in zip(group_layout.tables, group_layout.columns, strict=True)
                ),
                slot_stacks=tuple(group_layout.slot_stacks),
                row_dtype=group.row_dtype,
                scale_files=tuple(
                    naming.router_scales_file(group.index, stack) for stack in range(len(group_layout.stack_widths))
                )
                if group.row_dtype == "int8"
                else (),
                fault_in=group.resident,
            )
        )
    return params.RouterPoolingParams(rows_model=naming.router_model(plan.leaf_stem), groups=tuple(entries))


def admission(plan: Plan, first_step: str, steps: Sequence[tuple[str, int]]) -> params.AdmissionParams:
    """The router's shedding: the queue budget from the latency target, and the ensemble's steps on its server."""
    return params.AdmissionParams(
        budget_us=queueing.queue_budget_us(plan.latency_slo_ms),
        steps=(
            params.AdmissionStep(first_step, plan.router.instance_count),
            *(params.AdmissionStep(name, instances) for name, instances in steps),
        ),
        directory=RUNTIME_DIRECTORY,
    )


#: Where the stubs keep their runtime files, under recgen-<uid>/ (memory on Linux; an emptyDir `medium: Memory` on
#: Kubernetes).
RUNTIME_DIRECTORY = "/dev/shm"


def access_counts(plan: Plan) -> params.AccessCountsParams | None:
    """The routers' access counters, keyed by the model's name (None when the build turned counting off)."""
    if not plan.count_accesses:
        return None
    tables = tuple(table.spec.name for table in plan.tables)
    rows = tuple(table.spec.num_rows for table in plan.tables)
    return params.AccessCountsParams(RUNTIME_DIRECTORY, plan.model_name, tables, rows)


def request_checks(checked: Sequence[TensorSpec]) -> list[params.RequestChecksParams]:
    """The router's finite-value checks of `checked` (no parameter when there is nothing to check)."""
    return [params.RequestChecksParams(tuple(spec.name for spec in checked))] if checked else []


def front_cache(plan: Plan) -> params.FrontCacheParams | None:
    """The router's front cache (None without one)."""
    if not plan.has_front_cache:
        return None
    return params.FrontCacheParams(output=naming.FRONT_CACHE_PARTIALS, tables=tuple(wiring.cached_tables(plan)))


def ranking_router(plan: Plan) -> params.RankingRouterParams:
    """The ranking router's one extra fact: 1 + N rows reach the (batching) shard groups."""
    return params.RankingRouterParams(max_rows=plan.max_batch_size)


def shard_group(wired: GroupWire) -> params.ShardGroupParams:
    """A numpy shard group: its packed tensors, member rows files (stacked in member order) and slot columns."""
    group, group_layout = wired.group, wired.columns
    return params.ShardGroupParams(
        input=wired.ids.name,
        output=wired.partial_sums.name,
        shards=tuple(
            params.GroupMember(
                table=s.table,
                shard=s.index,
                rows_file=naming.shard_rows_file(s.table, s.index),
                scales_file=naming.shard_scales_file(s.table, s.index) if s.row_dtype == "int8" else "",
            )
            for s in group.shards
        ),
        slots=tuple(
            params.GroupSlot(table=table, columns=span)
            for table, span in zip(group_layout.tables, group_layout.columns, strict=True)
        ),
        weights_input=wired.weights.name if wired.weights else "",
        row_dtype=group.row_dtype,
        fault_in=group.resident,
    )


def _parts(parts: Sequence[tuple[str, int]]) -> tuple[params.PartialSlot, ...]:
    return tuple(params.PartialSlot(input=name, slot=slot) for name, slot in parts)


def dense(plan: Plan, wire: WireLayout) -> params.DenseParams:
    """A numpy dense model: its inputs and the parts of every table's pool."""
    return params.DenseParams(
        dense_input=naming.DENSE_FEATURES,
        output=naming.SCORE,
        dim=layout.row_dim(plan),
        tables=tuple(
            params.TableParts(table=f.name, parts=_parts(parts))
            for f, parts in zip(plan.sparse_features, wire.table_parts, strict=True)
        ),
    )


def ranking_dense(plan: Plan, wire: WireLayout, dense_sides: Sequence[Side]) -> params.RankingDenseParams:
    """The ranking dense model: each side's dense input, every feature's side, every table's side and parts."""
    return params.RankingDenseParams(
        user_dense=naming.USER_DENSE_FEATURES if "user" in dense_sides else None,
        item_dense=naming.ITEM_DENSE_FEATURES if "item" in dense_sides else None,
        output=naming.SCORE,
        dim=layout.row_dim(plan),
        dense_sides=tuple(dense_sides),
        tables=tuple(
            params.SidedTableParts(table=f.name, side=f.side, parts=_parts(parts))
            for f, parts in zip(plan.sparse_features, wire.table_parts, strict=True)
        ),
    )


def monolithic(plan: Plan) -> params.MonolithicParams:
    """The monolithic baseline: one rows file per whole table."""
    return params.MonolithicParams(
        dense_input=naming.DENSE_FEATURES,
        output=naming.SCORE,
        tables=tuple(
            params.WholeTable(
                table=t.spec.name,
                input=naming.sparse_input(t.spec.name),
                num_rows=t.spec.num_rows,
                rows_file=naming.table_rows_file(t.spec.name),
            )
            for t in plan.tables
        ),
    )


@dataclass(frozen=True)
class RemoteCallPolicy:
    """How a front server's remote shard-group step calls the group's service."""

    deadline_s: float = 2.0
    max_attempts: int = 3
    backoff_s: float = 0.05
    resolve_interval_s: float = 30.0


def remote_group(wired: GroupWire, policy: RemoteCallPolicy) -> params.RemoteParams:
    """The front's step for a shard group served elsewhere; endpoints default to the group's Kubernetes Service."""
    name = wired.model_name
    return params.RemoteParams(
        model=name,
        inputs=tuple(params.RemoteTensor(name=spec.name, dtype=spec.data_type) for spec in wired.inputs),
        output=wired.partial_sums.name,
        endpoints=(f"{naming.service_name(name)}:{triton_runtime.GRPC_PORT}",),
        deadline_s=policy.deadline_s,
        max_attempts=policy.max_attempts,
        backoff_s=policy.backoff_s,
        resolve_interval_s=policy.resolve_interval_s,
    )

"""The planner (ElasticRec): hotness-ordered rows, DP-optimal cuts, utility-based replicas, placement, totals.

The stages, each its own module: `cuts` orders each table's rows by access count and cuts them (the cost grid and
the dynamic program), `placement` puts the dense model and the densest shards on GPU and fills the router's front
cache, `report` prices the plan against the model-wise baseline. `plan_model` composes them into a `PlanReport`
(no weights needed), `plan_from_report` turns that into a buildable `Plan`, and `plan_to_files` is the whole
`recgen plan` pipeline from files to plan.json, its row orders and its figure.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from generator.errors import UserInputError
from generator.model.features import max_ids_items
from generator.model.loading import load_model
from generator.planning import figure, memory, paging, queueing
from generator.planning.capacity import Capacity
from generator.planning.cuts import ShardStats, cut_table
from generator.planning.memory import ModelShape
from generator.planning.placement import allocate_front_cache, place_on_gpu
from generator.planning.plan import DEFAULT_MAX_BATCH_SIZE, LookupStep, Plan, table_plan
from generator.planning.plan_change import PlanChange, plan_change
from generator.planning.plan_file import load_plan, row_order_path, save_plan
from generator.planning.precision import RowPrecision
from generator.planning.pricing import (
    DENSE,
    ROUTER,
    Traffic,
    busy_cores,
    model_wise_on_servers,
    placed_on,
    plan_on_servers,
    shard_name,
)
from generator.planning.report import PlanReport
from generator.planning.servers import ServerSize, servers_needed
from generator.traffic.profile import AccessProfile, TableAccess


@dataclass(frozen=True)
class PlanTargets:
    """What a plan must serve and within which limits; checked on construction."""

    target_qps: float
    batch_size: int = 256
    max_shards_per_table: int = 8
    gpu_memory_bytes: int | None = None
    window_s: float = 1.0
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    front_cache_bytes: int = 0
    latency_slo_ms: float = queueing.DEFAULT_LATENCY_SLO_MS
    lookup_step: LookupStep = "fused"
    precision: RowPrecision = field(default_factory=RowPrecision)
    #: The servers replicas are placed on (None: the default size, with one GPU of `gpu_memory_bytes` if given).
    servers: ServerSize | None = None
    #: Page the CPU shards a copy would keep under half resident (`paging`): their cold rows stay on disk.
    page_cold_rows: bool = False
    #: The routers count every id they route (`recgen profile --from-server`); their counters are priced.
    count_accesses: bool = True

    def __post_init__(self) -> None:
        queueing.check_latency_slo_ms(self.latency_slo_ms)
        if not self.target_qps > 0:
            raise UserInputError(f"`target_qps` must be > 0, got {self.target_qps}")
        if not 1 <= self.batch_size <= self.max_batch_size:
            raise UserInputError(
                f"`batch` must be in 1..{self.max_batch_size} (the max batch size), got {self.batch_size}"
            )
        if not 1 <= self.max_shards_per_table <= 1024:
            raise UserInputError(f"`max_shards_per_table` must be in 1..1024, got {self.max_shards_per_table}")
        if self.window_s <= 0:
            raise UserInputError(f"`window_s` must be > 0, got {self.window_s}")
        if self.front_cache_bytes < 0:
            raise UserInputError(f"`front_cache_mb` must be >= 0, got {self.front_cache_bytes / 2**20:g}")


def _lookups_per_query(shape: ModelShape, profile: AccessProfile, batch_size: int) -> list[float]:
    return [batch_size * profile.table(spec.name).mean_ids_per_sample for spec in shape.tables]


def _router_seconds(
    capacity: Capacity, lookups: Mapping[str, float], shards: Sequence[ShardStats], lookup_step: LookupStep
) -> float:
    """Busy time of a router replica per query; with the fused lookup step it also pools the CPU shards' rows."""
    ids = sum(lookups.values())
    if lookup_step != "fused":
        return capacity.router_seconds(ids)
    pooled = [s for s in shards if s.device == "cpu" and s.router_pooled]
    return capacity.fused_seconds(ids, sum(lookups[s.table] * s.access_share for s in pooled))


def plan_model(
    shape: ModelShape,
    profile: AccessProfile,
    *,
    target_qps: float,
    batch_size: int = 256,
    capacity: Capacity | None = None,
    max_shards_per_table: int = 8,
    gpu_memory_bytes: int | None = None,
    window_s: float = 1.0,
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
    front_cache_bytes: int = 0,
    lookup_step: LookupStep = "fused",
    precision: RowPrecision | None = None,
    servers: ServerSize | None = None,
    page_cold_rows: bool = False,
    count_accesses: bool = True,
) -> PlanReport:
    """Cut every table, size every model for `target_qps` queries of `batch_size` candidates, place on GPU.

    `front_cache_bytes`: the router keeps that many bytes of the hottest rows (see `allocate_front_cache`); their
    lookups reach no shard, so hot shards need fewer replicas. Needs no weights; `plan_from_report` turns the
    result into a buildable Plan. `lookup_step`: "fused" sizes the router to pool the CPU shards itself; "separate"
    gives every shard group its own replicas. `precision`: every shard's row dtype, fixed per table or by hotness.
    `servers`: the size of the servers the plan and the model-wise baseline are placed on (`pricing`).
    `page_cold_rows`: leave cold shards' rows on disk until read (`paging`), priced at what a copy keeps resident.
    `count_accesses`: the routers count every id (each instance one uint32 a row; False: a build without them).
    """
    targets = PlanTargets(
        target_qps, batch_size, max_shards_per_table, gpu_memory_bytes, window_s, max_batch_size, front_cache_bytes,
        lookup_step=lookup_step, precision=precision or RowPrecision(), servers=servers, page_cold_rows=page_cold_rows,
    )  # fmt: skip
    capacity = capacity or Capacity()
    accesses = [profile.table(spec.name) for spec in shape.tables]
    cached = allocate_front_cache(shape, profile, targets.front_cache_bytes)
    lookups_per_query = _lookups_per_query(shape, profile, batch_size)
    stats = _cut_tables(shape, accesses, cached, targets, capacity)
    dense_replicas = capacity.replicas(target_qps, capacity.dense_seconds(batch_size))
    router_bytes = _router_bytes(shape, cached, count_accesses)
    stats, dense_device = place_on_gpu(stats, dense_replicas * shape.dense_bytes, gpu_memory_bytes)
    lookups = dict(zip([spec.name for spec in shape.tables], lookups_per_query, strict=True))
    router_s = _router_seconds(capacity, lookups, stats, lookup_step)
    router_replicas = capacity.replicas(target_qps, router_s)
    traffic = Traffic(tuple(accesses), tuple(target_qps * window_s * n for n in lookups_per_query), tuple(cached))
    size = _server_size(targets)
    if page_cold_rows:
        front_s = router_s + capacity.dense_seconds(batch_size) * (dense_device == "cpu")
        copies = paging.shard_copies(stats, lookups, (target_qps, front_s), size.cores, capacity, lookup_step)
        stats = paging.page_cold_shards(stats, shape, traffic, copies, capacity.fault_bytes)
    planned, fleet = plan_on_servers(
        shape, traffic, capacity, size, stats, (target_qps, batch_size, lookups),
        (router_s, router_replicas, dense_replicas), router_bytes, lookup_step, dense_device,
    )  # fmt: skip
    whole_model_s = capacity.whole_model_seconds(sum(lookups_per_query), batch_size)  # the baseline: no counters
    baseline, baseline_fleet = model_wise_on_servers(shape, traffic, capacity, size, target_qps, whole_model_s)
    return PlanReport(
        target_qps, batch_size, window_s, capacity, tuple(stats), router_replicas, dense_replicas, planned, baseline,
        dense_device == "gpu", tuple(cached), _cached_bytes(shape, cached), _hit_rate(accesses, cached), lookup_step,
        fleet, baseline_fleet, count_accesses,
    )  # fmt: skip


def _router_bytes(shape: ModelShape, cached: Sequence[int], counted: bool) -> tuple[int, int]:
    """The routers' memory as the native router (the default engine) holds it: files once a server, counters each."""
    permuted = [True] * len(shape.tables)
    return memory.router_memory(shape.tables, cached, permuted, counted=counted, shares_files=True)


def _cached_bytes(shape: ModelShape, cached: Sequence[int]) -> int:
    """Bytes of the front cache's rows."""
    return sum(rows * spec.bytes_per_row for rows, spec in zip(cached, shape.tables, strict=True))


def _server_size(targets: PlanTargets) -> ServerSize:
    """The stated servers, or the default size with one GPU of the planner's GPU budget when it has one."""
    if targets.servers is not None:
        return targets.servers
    if targets.gpu_memory_bytes:
        return ServerSize(gpus=1, gpu_memory_bytes=targets.gpu_memory_bytes)
    return ServerSize()


def _cut_tables(
    shape: ModelShape, accesses: Sequence[TableAccess], cached: Sequence[int], targets: PlanTargets, capacity: Capacity
) -> list[ShardStats]:
    """Every table's shards, hottest first, cut for the targets' load (and its row dtypes).

    With the fused step a shard is pooled by the router or its own step, whichever holds its rows in fewer bytes,
    priced with the servers the routers take when they pool every row: an upper bound, so a shard becomes its own
    step only where that pays even against the most router servers (one pass; no iteration to flip-flop).
    """
    targets.precision.check_tables([spec.name for spec in shape.tables])
    pooled_rows = sum(targets.batch_size * access.mean_ids_per_sample for access in accesses)
    return _cuts(shape, accesses, cached, targets, capacity, _router_servers(pooled_rows, accesses, targets, capacity))


def _cuts(
    shape: ModelShape,
    accesses: Sequence[TableAccess],
    cached: Sequence[int],
    targets: PlanTargets,
    capacity: Capacity,
    router_servers: int | None,
) -> list[ShardStats]:
    return [
        shard
        for spec, access, cached_rows in zip(shape.tables, accesses, cached, strict=True)
        for shard in cut_table(spec, access, qps=targets.target_qps, batch_size=targets.batch_size,
                               capacity=capacity, max_shards=targets.max_shards_per_table, cached_rows=cached_rows,
                               precision=targets.precision, server_cores=_server_size(targets).cores,
                               pooled_copies=router_servers)
    ]  # fmt: skip


def _router_servers(
    pooled_rows: float, accesses: Sequence[TableAccess], targets: PlanTargets, capacity: Capacity
) -> int | None:
    """With the fused step, the front servers the routers pooling `pooled_rows` rows a query take (None: separate).

    A front also runs its share of the dense replicas, unless they may go to GPU.
    """
    if targets.lookup_step != "fused":
        return None
    ids = sum(targets.batch_size * access.mean_ids_per_sample for access in accesses)
    dense_s = 0.0 if targets.gpu_memory_bytes else capacity.dense_seconds(targets.batch_size)
    busy_cores = targets.target_qps * (capacity.fused_seconds(ids, pooled_rows) + dense_s)
    return servers_needed(busy_cores, _server_size(targets).cores, capacity.target_utilization)


def _hit_rate(accesses: Sequence[TableAccess], cached: Sequence[int]) -> float:
    """The share of all lookups that the front cache's rows serve."""
    hits = sum(float(access.ranked_counts()[:rows].sum()) for access, rows in zip(accesses, cached, strict=True))
    total_lookups = sum(access.lookups for access in accesses)
    return hits / total_lookups if total_lookups else 0.0


@dataclass(frozen=True)
class ScaledReplicas:
    """Replicas at one load under the plan's scaling rule: per shard (report order), router, dense, model-wise."""

    qps: float
    shards: tuple[int, ...]
    router: int
    dense: int
    model_wise: int


def scale_to_load(report: PlanReport, shape: ModelShape, profile: AccessProfile, qps: float) -> ScaledReplicas:
    """The plan's cuts at another load: every model gets the replicas that load needs under the capacity model.

    This is what the autoscalers do between the planned floor and the ceiling; at the planned load it gives back
    the report's own replica counts.
    """
    if not qps > 0:
        raise UserInputError(f"`qps` must be > 0, got {qps}")
    capacity, batch = report.capacity, report.batch_size
    lookups = dict(zip([spec.name for spec in shape.tables], _lookups_per_query(shape, profile, batch), strict=True))
    return ScaledReplicas(
        qps,
        tuple(capacity.replicas(qps, capacity.shard_seconds(lookups[s.table] * s.access_share)) for s in report.shards),
        capacity.replicas(qps, _router_seconds(capacity, lookups, report.shards, report.lookup_step)),
        capacity.replicas(qps, capacity.dense_seconds(batch)),
        capacity.replicas(qps, capacity.whole_model_seconds(sum(lookups.values()), batch)),
    )


def plan_from_report(
    report: PlanReport,
    shape: ModelShape,
    profile: AccessProfile,
    *,
    name: str = "dlrm",
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
    latency_slo_ms: float = queueing.DEFAULT_LATENCY_SLO_MS,
) -> Plan:
    """The buildable plan: hotness row orders from the profile, the report's cuts, replicas and devices."""
    tables = []
    cached = report.cached_rows or (0,) * len(shape.tables)
    lookups = dict(
        zip([t.name for t in shape.tables], _lookups_per_query(shape, profile, report.batch_size), strict=True)
    )
    router_s = _router_seconds(report.capacity, lookups, report.shards, report.lookup_step)
    busy = busy_cores(report.shards, (report.target_qps, report.batch_size, lookups), router_s, report.capacity)
    for spec, cached_rows in zip(shape.tables, cached, strict=True):
        shards = [s for s in report.shards if s.table == spec.name]
        boundaries = [shards[0].row_start, *(s.row_end for s in shards)]
        placements = [placed_on(report.fleet, shard_name(s), s.replicas, s.device, busy) for s in shards]
        order = profile.table(spec.name).row_order()
        dtypes = [s.row_dtype for s in shards]
        tables.append(
            table_plan(
                spec,
                boundaries,
                placements,
                row_order=order,
                cached_rows=cached_rows,
                row_dtypes=dtypes,
                router_pooled=[s.router_pooled for s in shards],
                resident=[s.resident for s in shards],
            )
        )
    return Plan(
        model_name=name,
        tables=tuple(tables),
        router=placed_on(report.fleet, ROUTER, report.router_replicas, "cpu", busy),
        dense=placed_on(report.fleet, DENSE, report.dense_replicas, "gpu" if report.dense_on_gpu else "cpu", busy),
        max_batch_size=max_batch_size,
        features=shape.features,
        latency_slo_ms=latency_slo_ms,
        lookup_step=report.lookup_step,
        count_accesses=report.count_accesses,
    )


@dataclass(frozen=True)
class PlanFiles:
    """A planned model and where `plan_to_files` wrote it."""

    plan: Plan
    report: PlanReport
    plan_path: Path
    rows_path: Path
    figure_path: Path
    model_path: Path
    #: The options that import the model as planned (`--max-ids`, `--user-features`), for the build command.
    model_options: str = ""
    #: What the plan changes against the running one (`--previous`).
    change: PlanChange | None = None

    def __str__(self) -> str:
        features = [
            f"{f.name} ({f.table}, {f.max_ids_per_sample} ids, {f.pooling}{', weighted' if f.weighted else ''}, "
            f"{f.side})"
            for f in self.plan.features
        ]
        return (
            f"{self.report}\n"
            + (f"{self.change}\n" if self.change is not None else "")
            + (f"features: {'; '.join(features)}\n" if features else "")
            + f"wrote {self.plan_path}, {self.rows_path} and {self.figure_path}\n"
            f"build it: recgen build --model {self.model_path}{self.model_options} --plan {self.plan_path}"
        )


def plan_to_files(
    model_path: Path,
    profile_path: Path,
    targets: PlanTargets,
    out_path: Path,
    *,
    capacity: Capacity | None = None,
    figure_path: Path | None = None,
    name: str = "dlrm",
    max_ids: Mapping[str, int] | None = None,
    user_features: Sequence[str] = (),
    previous_path: Path | None = None,
) -> PlanFiles:
    """`recgen plan`: model and profile files in; plan.json, its row orders and a PNG of the cuts out.

    `previous_path`: the plan the deployment runs; the result then says what switching to the new plan changes.
    """
    model = load_model(model_path, max_ids=max_ids, user_features=user_features)
    profile = AccessProfile.load(profile_path)
    previous = None if previous_path is None else load_plan(previous_path)
    shape = ModelShape.of(model)
    report = plan_model(
        shape,
        profile,
        target_qps=targets.target_qps,
        batch_size=targets.batch_size,
        capacity=capacity,
        max_shards_per_table=targets.max_shards_per_table,
        gpu_memory_bytes=targets.gpu_memory_bytes,
        window_s=targets.window_s,
        max_batch_size=targets.max_batch_size,
        front_cache_bytes=targets.front_cache_bytes,
        lookup_step=targets.lookup_step,
        precision=targets.precision,
        servers=targets.servers,
        page_cold_rows=targets.page_cold_rows,
        count_accesses=targets.count_accesses,
    )
    the_plan = plan_from_report(
        report,
        shape,
        profile,
        name=name,
        max_batch_size=targets.max_batch_size,
        latency_slo_ms=targets.latency_slo_ms,
    )
    if previous is not None and previous_path is not None:  # checked before anything is written
        previous.check_matches(model)
    save_plan(the_plan, out_path, report, profile_source=profile.source)
    written = figure.plot_plan(report, profile, figure_path or out_path.with_suffix(".png"))
    options = "".join(f" --max-ids {item}" for item in max_ids_items(max_ids or {}))
    options += f" --user-features {','.join(user_features)}" if user_features else ""
    change = None
    if previous is not None and previous_path is not None:
        change = plan_change(previous, previous_path, the_plan, out_path, profile)
    return PlanFiles(the_plan, report, out_path, row_order_path(out_path), written, model_path, options, change)

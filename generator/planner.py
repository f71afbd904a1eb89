"""The planner: hotness-ordered rows, DP-optimal cut points, utility-based replicas (ElasticRec), placement.

For every table the rows are ordered by access count (hottest first). A shard is a contiguous range of that order;
its replicas are what its expected lookups per query need under the capacity model at the target QPS, and it
costs `replicas * (rows * bytes_per_row + replica overhead)` bytes. The cut points minimise that memory exactly
over a candidate-cut grid that holds every position in the hot head and geometrically spaced ones after it
(`optimal_segmentation` is a textbook O(K G^2) dynamic program, vectorised over the grid).

The model-wise baseline holds the whole model per replica, with the same capacity model: one replica serves a
query in `shard_fixed_s + shard_per_row_s * all lookups + dense time` (no routing, one step), so the comparison
favours the baseline.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from generator import render
from generator.capacity import Capacity
from generator.errors import PlanError, UserInputError
from generator.models import TableSpec
from generator.plan import DEFAULT_MAX_BATCH_SIZE, Placement, Plan, save_plan, table_plan
from generator.profile import AccessProfile, TableAccess

#: Every cut position up to this rank is a candidate; beyond it candidates grow geometrically.
GRID_HEAD = 64
GRID_GROWTH = 1.08
#: Bytes of one entry of the router's id -> hotness-rank map (int32).
RANK_BYTES = 4


def candidate_cuts(num_rows: int, touched_rows: int, head: int = GRID_HEAD, growth: float = GRID_GROWTH) -> np.ndarray:
    """Candidate boundaries [0, ..., num_rows]: dense in the hot head, geometric after, plus the touched edge."""
    points = set(range(min(head, num_rows) + 1))
    position = float(head)
    while position < num_rows:
        points.add(int(position))
        position = max(position * growth, position + 1)
    points.update((touched_rows, num_rows))
    return np.array(sorted(p for p in points if 0 <= p <= num_rows), dtype=np.int64)


def optimal_segmentation(cost: np.ndarray, max_segments: int) -> list[int]:
    """Grid indices [0, ..., G-1] of the cheapest split of [0, G-1] into at most `max_segments` segments.

    `cost[i, j]` is the cost of one segment from grid point i to grid point j (only i < j is read).
    """
    size = cost.shape[0]
    if size < 2:
        raise PlanError("a segmentation needs at least two grid points")
    upper = np.triu(np.ones((size, size), dtype=bool), k=1)
    segment = np.where(upper, cost, np.inf)
    best = np.full(size, np.inf)
    best[0] = 0.0
    choices: list[np.ndarray] = []
    answers: list[float] = []
    for _ in range(max(1, max_segments)):
        totals = best[:, np.newaxis] + segment  # totals[i, j]: best split of [0, i] plus segment (i, j)
        choice = np.argmin(totals, axis=0)
        best = totals[choice, np.arange(size)]
        choices.append(choice)
        answers.append(float(best[-1]))
    segments = int(np.argmin(answers)) + 1  # fewest segments among equal optima
    cuts = [size - 1]
    for choice in reversed(choices[:segments]):
        cuts.append(int(choice[cuts[-1]]))
    return cuts[::-1]


@dataclass(frozen=True)
class ShardStats:
    """What the planner expects of one shard."""

    table: str
    index: int
    row_start: int
    row_end: int
    access_share: float
    replicas: int
    bytes_per_replica: int
    device: str

    @property
    def memory_bytes(self) -> int:
        """Bytes all replicas reserve (rows only; overheads are in the totals)."""
        return self.replicas * self.bytes_per_replica


@dataclass(frozen=True)
class Totals:
    """Memory allocated and memory utility of one deployment."""

    replicas: int
    memory_bytes: int
    embedding_bytes: int
    bytes_read: float

    @property
    def memory_utility(self) -> float:
        """Bytes of rows read in the window per byte allocated for embeddings."""
        return self.bytes_read / self.embedding_bytes if self.embedding_bytes else 0.0


@dataclass(frozen=True)
class PlanReport:
    """The plan's expectations next to the model-wise baseline."""

    target_qps: float
    batch_size: int
    window_s: float
    capacity: Capacity
    shards: tuple[ShardStats, ...]
    router_replicas: int
    dense_replicas: int
    planned: Totals
    model_wise: Totals
    dense_on_gpu: bool = False
    #: Front cache (FlexEMR): hottest ranks per table (model order) the router pools itself, and its expectation.
    cached_rows: tuple[int, ...] = ()
    front_cache_bytes: int = 0
    expected_hit_rate: float = 0.0

    @property
    def memory_ratio(self) -> float:
        """Model-wise memory allocated / planned (higher is better)."""
        return self.model_wise.memory_bytes / self.planned.memory_bytes

    @property
    def utility_ratio(self) -> float:
        """Planned memory utility / model-wise (higher is better)."""
        base = self.model_wise.memory_utility
        return self.planned.memory_utility / base if base else float("inf")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able totals for plan.json."""

        def totals(value: Totals) -> dict[str, Any]:
            return {
                "replicas": value.replicas,
                "memory_bytes": value.memory_bytes,
                "embedding_bytes": value.embedding_bytes,
                "bytes_read_in_window": value.bytes_read,
                "memory_utility": value.memory_utility,
            }

        return {
            "target_qps": self.target_qps,
            "batch_size": self.batch_size,
            "window_s": self.window_s,
            "planned": totals(self.planned),
            "model_wise": totals(self.model_wise),
            "memory_ratio": self.memory_ratio,
            "utility_ratio": self.utility_ratio,
            "front_cache": {
                "bytes": self.front_cache_bytes,
                "cached_rows": list(self.cached_rows),
                "expected_hit_rate": self.expected_hit_rate,
            },
        }

    def __str__(self) -> str:
        lines = [
            f"planned for {self.target_qps:,.1f} queries/s x {self.batch_size} candidates ({self.capacity.source})",
            f"  {'table':<18} {'shard':>5} {'rows':>25} {'access':>8} {'replicas':>8} {'MB/replica':>11} {'device':>6}",
        ]
        for shard in self.shards:
            rows = f"[{shard.row_start:,}, {shard.row_end:,})"
            lines.append(
                f"  {shard.table:<18} {shard.index:>5} {rows:>25} {shard.access_share:>8.2%} {shard.replicas:>8} "
                f"{shard.bytes_per_replica / 1e6:>11.3f} {shard.device:>6}"
            )
        lines += [
            f"  router replicas {self.router_replicas}, dense replicas {self.dense_replicas}",
            f"memory allocated: model-wise {self.model_wise.memory_bytes / 1e9:.3f} GB "
            f"({self.model_wise.replicas} whole-model replicas), planned {self.planned.memory_bytes / 1e9:.3f} GB "
            f"-> {self.memory_ratio:.2f}x less",
            f"memory utility ({self.window_s:g} s window): model-wise {self.model_wise.memory_utility:.4f}, "
            f"planned {self.planned.memory_utility:.4f} -> {self.utility_ratio:.2f}x higher",
        ]
        if self.front_cache_bytes:
            lines.append(
                f"front cache: {self.front_cache_bytes / 1e6:.2f} MB in the router ({sum(self.cached_rows):,} rows), "
                f"expected hit rate {self.expected_hit_rate:.1%} of lookups"
            )
        return "\n".join(lines)


def _expected_unique(probabilities: np.ndarray, draws: float) -> float:
    """Expected distinct items in `draws` independent draws with these probabilities."""
    if draws <= 0 or probabilities.size == 0:
        return 0.0
    return float(-np.expm1(draws * np.log1p(-np.minimum(probabilities, 1.0 - 1e-12))).sum())


def _table_grid_costs(
    access: TableAccess,
    spec: TableSpec,
    lookups_per_query: float,
    qps: float,
    capacity: Capacity,
    grid: np.ndarray,
    cached_rows: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Memory cost, replicas and access share of every grid segment (i, j).

    Lookups of the hottest `cached_rows` ranks are served by the router's front cache and reach no shard.
    """
    counts = np.asarray(access.ranked_counts(), dtype=np.float64).copy()
    counts[:cached_rows] = 0.0
    prefix = np.concatenate([[0], np.cumsum(counts)])
    at_grid = prefix[np.minimum(grid, access.touched_rows)]
    total = float(access.lookups)
    share = (at_grid[np.newaxis, :] - at_grid[:, np.newaxis]) / total if total else np.zeros((grid.size, grid.size))
    seconds = capacity.shard_fixed_s + capacity.shard_per_row_s * lookups_per_query * share
    replicas = np.maximum(1, np.ceil(qps * seconds / capacity.target_utilization - 1e-9))
    rows = grid[np.newaxis, :] - grid[:, np.newaxis]
    memory = replicas * (rows * spec.bytes_per_row + capacity.replica_overhead_bytes)
    return memory, replicas.astype(np.int64), share


def cut_table(
    spec: TableSpec,
    access: TableAccess,
    *,
    qps: float,
    batch_size: int,
    capacity: Capacity,
    max_shards: int,
    cached_rows: int = 0,
) -> list[ShardStats]:
    """Optimal cuts of one table's hotness order and each shard's replicas (all on CPU; placement comes later).

    With a front cache of the hottest `cached_rows` ranks, those lookups reach no shard (shares exclude them).
    """
    if access.num_rows != spec.num_rows:
        raise PlanError(f"table {spec.name!r}: the profile has {access.num_rows} rows, the model {spec.num_rows}")
    lookups_per_query = batch_size * access.mean_ids_per_sample
    grid = candidate_cuts(spec.num_rows, access.touched_rows)
    if cached_rows:  # a cut at the cache's edge lets the DP give the (now cold) cached head its own shard
        grid = np.unique(np.concatenate([grid, [min(cached_rows, spec.num_rows)]]))
    memory, replicas, share = _table_grid_costs(access, spec, lookups_per_query, qps, capacity, grid, cached_rows)
    cut_indices = optimal_segmentation(memory, max_shards)
    return [
        ShardStats(
            spec.name,
            index,
            int(grid[i]),
            int(grid[j]),
            float(share[i, j]),
            int(replicas[i, j]),
            int(grid[j] - grid[i]) * spec.bytes_per_row,
            "cpu",
        )
        for index, (i, j) in enumerate(itertools.pairwise(cut_indices))
    ]


def _window_bytes_read(
    access: TableAccess, spec: TableSpec, lookups: float, shards: Sequence[ShardStats], cached_rows: int = 0
) -> float:
    """Bytes of distinct rows each replica reads in a window of `lookups` lookups, summed over replicas."""
    if not access.lookups:
        return 0.0
    probabilities = access.ranked_counts() / access.lookups
    if cached_rows:  # the router serves these; shards never read them
        probabilities = probabilities.copy()
        probabilities[:cached_rows] = 0.0
    read_rows = 0.0
    for shard in shards:
        within = probabilities[shard.row_start : min(shard.row_end, access.touched_rows)]
        if shard.access_share <= 0 or within.size == 0 or not within.any():
            continue
        per_replica = lookups * shard.access_share / shard.replicas
        read_rows += shard.replicas * _expected_unique(within / shard.access_share, per_replica)
    return read_rows * spec.bytes_per_row


def dense_bytes(num_dense_features: int, num_tables: int, bottom_mlp: Sequence[int], top_mlp: Sequence[int]) -> int:
    """fp32 bytes of the dense tower's parameters."""
    widths = [num_dense_features, *bottom_mlp]
    parameters = sum((a + 1) * b for a, b in itertools.pairwise(widths))
    vectors = num_tables + 1
    top = [bottom_mlp[-1] + vectors * (vectors - 1) // 2, *top_mlp]
    parameters += sum((a + 1) * b for a, b in itertools.pairwise(top))
    return 4 * parameters


@dataclass(frozen=True)
class ModelShape:
    """What planning needs of a model (no weights): tables and MLP widths."""

    tables: tuple[TableSpec, ...]
    num_dense_features: int
    bottom_mlp: tuple[int, ...]
    top_mlp: tuple[int, ...]

    @classmethod
    def of(cls, model: Any) -> ModelShape:
        """The shape of a DLRM."""
        return cls(tuple(model.tables), model.num_dense_features, tuple(model.bottom_mlp), tuple(model.top_mlp))

    @property
    def dense_bytes(self) -> int:
        """Bytes of the dense tower."""
        return dense_bytes(self.num_dense_features, len(self.tables), self.bottom_mlp, self.top_mlp)


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
) -> PlanReport:
    """Cut every table, size every model for `target_qps` queries of `batch_size` candidates, place on GPU.

    `front_cache_bytes`: the router keeps that many bytes of the hottest rows (see `allocate_front_cache`); their
    lookups reach no shard, so hot shards need fewer replicas. Needs no weights; `plan_from_report` turns the
    result into a buildable Plan.
    """
    capacity = capacity or Capacity()
    if not target_qps > 0:
        raise UserInputError(f"`target_qps` must be > 0, got {target_qps}")
    if not 1 <= batch_size <= max_batch_size:
        raise UserInputError(f"`batch` must be in 1..{max_batch_size} (the max batch size), got {batch_size}")
    if not 1 <= max_shards_per_table <= 1024:
        raise UserInputError(f"`max_shards_per_table` must be in 1..1024, got {max_shards_per_table}")
    if window_s <= 0:
        raise UserInputError(f"`window_s` must be > 0, got {window_s}")
    if front_cache_bytes < 0:
        raise UserInputError(f"`front_cache_mb` must be >= 0, got {front_cache_bytes / 2**20:g}")
    accesses = [profile.table(spec.name) for spec in shape.tables]
    cached = allocate_front_cache(shape, profile, front_cache_bytes)
    lookups_per_query = _lookups_per_query(shape, profile, batch_size)
    window_lookups = [target_qps * window_s * lookups for lookups in lookups_per_query]
    stats = [
        shard
        for spec, access, cached_rows in zip(shape.tables, accesses, cached, strict=True)
        for shard in cut_table(
            spec,
            access,
            qps=target_qps,
            batch_size=batch_size,
            capacity=capacity,
            max_shards=max_shards_per_table,
            cached_rows=cached_rows,
        )
    ]

    model_bytes = sum(spec.num_rows * spec.bytes_per_row for spec in shape.tables)
    model_wise_replicas = capacity.replicas(target_qps, _whole_model_seconds(capacity, lookups_per_query, batch_size))
    model_wise_read = sum(
        # A whole-model replica is one shard spanning the table that sees 1/R of the traffic.
        _window_bytes_read(
            access,
            spec,
            lookups,
            [ShardStats(spec.name, 0, 0, spec.num_rows, 1.0 if access.lookups else 0.0, model_wise_replicas, 0, "cpu")],
        )
        for spec, access, lookups in zip(shape.tables, accesses, window_lookups, strict=True)
    )
    model_wise = Totals(
        replicas=model_wise_replicas,
        memory_bytes=model_wise_replicas * (model_bytes + shape.dense_bytes + capacity.replica_overhead_bytes)
        + capacity.server_overhead_bytes,
        embedding_bytes=model_wise_replicas * model_bytes,
        bytes_read=model_wise_read,
    )

    router_replicas = capacity.replicas(target_qps, capacity.router_seconds(sum(lookups_per_query)))
    dense_replicas = capacity.replicas(target_qps, capacity.dense_seconds(batch_size))
    cache_bytes = sum(rows * spec.bytes_per_row for rows, spec in zip(cached, shape.tables, strict=True))
    router_bytes = sum(spec.num_rows * RANK_BYTES for spec in shape.tables) + cache_bytes
    stats, dense_device = _place(stats, dense_replicas * shape.dense_bytes, gpu_memory_bytes)
    shard_replicas = sum(s.replicas for s in stats)
    embedding_bytes = sum(s.memory_bytes for s in stats)
    planned = Totals(
        replicas=shard_replicas + router_replicas + dense_replicas,
        memory_bytes=embedding_bytes
        + shard_replicas * capacity.replica_overhead_bytes
        + router_replicas * (router_bytes + capacity.replica_overhead_bytes)
        + dense_replicas * (shape.dense_bytes + capacity.replica_overhead_bytes)
        + capacity.server_overhead_bytes,
        embedding_bytes=embedding_bytes,
        bytes_read=sum(
            _window_bytes_read(access, spec, lookups, [s for s in stats if s.table == spec.name], cached_rows)
            for spec, access, lookups, cached_rows in zip(shape.tables, accesses, window_lookups, cached, strict=True)
        ),
    )
    hits = sum(float(access.ranked_counts()[:rows].sum()) for access, rows in zip(accesses, cached, strict=True))
    total_lookups = sum(access.lookups for access in accesses)
    return PlanReport(
        target_qps,
        batch_size,
        window_s,
        capacity,
        tuple(stats),
        router_replicas,
        dense_replicas,
        planned,
        model_wise,
        dense_device == "gpu",
        tuple(cached),
        cache_bytes,
        hits / total_lookups if total_lookups else 0.0,
    )


def allocate_front_cache(shape: ModelShape, profile: AccessProfile, budget_bytes: int) -> list[int]:
    """Hottest ranks per table that fill `budget_bytes` with the most lookups.

    Rows of all tables compete by accesses per byte, so each table gets a prefix of its hotness order.
    """
    if budget_bytes <= 0:
        return [0] * len(shape.tables)
    values, owners = [], []
    for index, spec in enumerate(shape.tables):
        counts = np.asarray(profile.table(spec.name).ranked_counts(), dtype=np.float64)
        values.append(counts / spec.bytes_per_row)
        owners.append(np.full(counts.size, index, dtype=np.int64))
    value, owner = np.concatenate(values), np.concatenate(owners)
    order = np.argsort(-value, kind="stable")
    sizes = np.array([spec.bytes_per_row for spec in shape.tables], dtype=np.int64)[owner[order]]
    taken = order[: int(np.searchsorted(np.cumsum(sizes), budget_bytes, side="right"))]
    taken = taken[value[taken] > 0]  # an untouched row is never worth caching
    return np.bincount(owner[taken], minlength=len(shape.tables)).astype(int).tolist()


def _lookups_per_query(shape: ModelShape, profile: AccessProfile, batch_size: int) -> list[float]:
    return [batch_size * profile.table(spec.name).mean_ids_per_sample for spec in shape.tables]


def _whole_model_seconds(capacity: Capacity, lookups_per_query: Sequence[float], batch_size: int) -> float:
    """Busy time of a whole-model replica per query: one step doing every lookup, then the dense tower."""
    return (
        capacity.shard_fixed_s + capacity.shard_per_row_s * sum(lookups_per_query) + capacity.dense_seconds(batch_size)
    )


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
        capacity.replicas(qps, capacity.router_seconds(sum(lookups.values()))),
        capacity.replicas(qps, capacity.dense_seconds(batch)),
        capacity.replicas(qps, _whole_model_seconds(capacity, list(lookups.values()), batch)),
    )


def plan_from_report(
    report: PlanReport,
    shape: ModelShape,
    profile: AccessProfile,
    *,
    name: str = "dlrm",
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
) -> Plan:
    """The buildable plan: hotness row orders from the profile, the report's cuts, replicas and devices."""
    tables = []
    cached = report.cached_rows or (0,) * len(shape.tables)
    for spec, cached_rows in zip(shape.tables, cached, strict=True):
        shards = [s for s in report.shards if s.table == spec.name]
        boundaries = [shards[0].row_start, *(s.row_end for s in shards)]
        placements = [Placement(s.replicas, s.device) for s in shards]  # type: ignore[arg-type]
        order = profile.table(spec.name).row_order()
        tables.append(table_plan(spec, boundaries, placements, row_order=order, cached_rows=cached_rows))
    dense_device = "gpu" if report.dense_on_gpu else "cpu"
    return Plan(
        model_name=name,
        tables=tuple(tables),
        router=Placement(report.router_replicas, "cpu"),
        dense=Placement(report.dense_replicas, dense_device),
        max_batch_size=max_batch_size,
    )


def _place(
    stats: list[ShardStats], dense_memory_bytes: int, gpu_memory_bytes: int | None
) -> tuple[list[ShardStats], str]:
    """Dense model first, then the hottest shards (by access per byte) go to GPU while they fit."""
    if gpu_memory_bytes is None:
        return stats, "cpu"
    if gpu_memory_bytes <= 0:
        raise UserInputError(f"`gpu_memory_gb` must be > 0, got {gpu_memory_bytes / 1e9:g}")
    free = gpu_memory_bytes
    dense_device = "cpu"
    if dense_memory_bytes <= free:
        dense_device, free = "gpu", free - dense_memory_bytes
    placed = list(stats)
    order = sorted(range(len(stats)), key=lambda i: -stats[i].access_share / max(stats[i].bytes_per_replica, 1))
    for index in order:
        shard = stats[index]
        if shard.access_share > 0 and shard.memory_bytes <= free:
            free -= shard.memory_bytes
            placed[index] = dataclasses.replace(shard, device="gpu")
    return placed, dense_device


def save(plan: Plan, report: PlanReport, path: str | Path, *, profile_source: str = "") -> Path:
    """plan.json with every shard's access share and bytes, the totals, and what the plan was made from."""
    details = {
        (s.table, s.index): {"access_share": s.access_share, "replicas": s.replicas, "bytes": s.bytes_per_replica}
        for s in report.shards
    }
    inputs = {
        "target_qps": report.target_qps,
        "batch_size": report.batch_size,
        "window_s": report.window_s,
        "profile": profile_source,
        "capacity": report.capacity.to_dict(),
    }
    totals = report.to_dict()
    totals["router_replicas"] = report.router_replicas
    totals["dense_replicas"] = report.dense_replicas
    return save_plan(plan, path, shard_details=details, totals=totals, inputs=inputs)


@dataclass(frozen=True)
class EdgeBytes:
    """Bytes one request of `batch_size` candidates moves across the ensemble's step (or network) boundaries.

    Shard groups return pooled partial sums (one `dim` vector per sample and table they hold); shipping the raw rows
    instead would move one `dim` vector per id. `ids_to_groups` is what the router sends the groups (packed int32
    blocks, padding included); `ids_reaching_groups` the real ids among them (expected from the profile).
    """

    batch_size: int
    ids_to_groups: int
    partials_to_dense: int
    raw_rows_instead: int
    ids_reaching_groups: float
    cache_partials: int

    @property
    def saving(self) -> float:
        """Raw-row bytes / pooled-partial bytes on the group -> dense edges (FlexEMR's spatial locality)."""
        return self.raw_rows_instead / self.partials_to_dense if self.partials_to_dense else float("inf")

    def __str__(self) -> str:
        return (
            f"per request of {self.batch_size}: router -> groups {self.ids_to_groups:,} B of ids "
            f"({self.ids_reaching_groups:,.0f} real ids), groups -> dense {self.partials_to_dense:,} B of pooled "
            f"partials (raw rows would be {self.raw_rows_instead:,.0f} B: {self.saving:.1f}x), "
            f"front cache -> dense {self.cache_partials:,} B"
        )


def edge_bytes(plan: Plan, profile: AccessProfile, batch_size: int) -> EdgeBytes:
    """What the plan moves per request between router, shard groups and dense model, and what raw rows would."""
    tables = {t.spec.name: t for t in plan.tables}
    dims = {name: t.spec.dim for name, t in tables.items()}
    ids_bytes = partial_bytes = 0
    raw_bytes = real_ids = 0.0
    for group in plan.shard_groups():
        layout = render.group_layout(plan, group)
        ids_bytes += batch_size * layout.width * 4
        partial_bytes += batch_size * len(layout.tables) * dims[layout.tables[0]] * 4
        for shard in group.shards:
            table = tables[shard.table]
            access = profile.table(shard.table)
            counts = np.asarray(access.ranked_counts(), dtype=np.float64)
            reached = counts[max(shard.row_start, table.cached_rows) : shard.row_end].sum() if access.lookups else 0
            ids = batch_size * access.mean_ids_per_sample * (reached / access.lookups if access.lookups else 0)
            real_ids += ids
            raw_bytes += ids * dims[shard.table] * 4
    cached_tables = [t for t in plan.tables if t.cached_rows]
    cache_bytes = batch_size * sum(t.spec.dim for t in cached_tables) * 4
    return EdgeBytes(batch_size, ids_bytes, partial_bytes, raw_bytes, real_ids, cache_bytes)

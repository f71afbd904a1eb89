"""Cutting one table's hotness order into shards: the cost grid and the exact dynamic program (ElasticRec).

A shard is a contiguous range of a table's rows ordered by access count (hottest first). Its replicas are what its
expected lookups per query need under the capacity model at the target QPS. It costs a copy of its rows on every
server its replicas need (the cores they keep busy over a server's usable cores; see `servers`) plus a replica
overhead each: `copies * rows * bytes_per_row + replicas * overhead` bytes. A cut pays only where a shard's load
spans servers, so that its cold rows can live on fewer of them. The cut points minimise that memory exactly over a
candidate-cut grid that holds every position in the hot head and geometrically spaced ones after it
(`optimal_segmentation` is a textbook O(K G^2) dynamic program, vectorised over the grid).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from generator.errors import PlanError
from generator.model.dlrm import TableSpec
from generator.planning.capacity import Capacity
from generator.planning.plan import Device
from generator.planning.precision import RowPrecision, bytes_per_row_of
from generator.traffic.profile import TableAccess
from generator.triton_models.recgen_rows import ROW_DTYPES, RowDtype

#: Every cut position up to this rank is a candidate; beyond it candidates grow geometrically.
GRID_HEAD = 64
GRID_GROWTH = 1.08


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
    device: Device
    row_dtype: RowDtype = "fp32"
    #: With the fused lookup step: the router pools it (True) or it is its own step (False).
    router_pooled: bool = True
    #: Faulted in at load (True), or paged: only the folios requests read are in memory (`paging`).
    resident: bool = True
    #: What a copy of its rows is expected to keep in memory (None: all of it, as a resident shard does).
    resident_bytes: int | None = None

    @property
    def held_bytes(self) -> int:
        """Bytes a copy of its rows keeps in memory."""
        return self.bytes_per_replica if self.resident_bytes is None else self.resident_bytes

    @property
    def memory_bytes(self) -> int:
        """Bytes all replicas reserve (rows only; overheads are in the totals)."""
        return self.replicas * self.bytes_per_replica


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


def _table_grid_costs(
    access: TableAccess,
    spec: TableSpec,
    lookups_per_query: float,
    qps: float,
    capacity: Capacity,
    grid: np.ndarray,
    cached_rows: int = 0,
    row_dtypes: np.ndarray | None = None,
    server_cores: int | None = None,
    pooled_copies: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Memory cost, replicas, access share and whether the router should pool it, of every grid segment (i, j).

    Lookups of the hottest `cached_rows` ranks are served by the router's front cache and reach no shard.
    `row_dtypes`: the row dtype (index into ROW_DTYPES) of a segment starting at each grid point (fp32 if None).
    `server_cores`: a shard's replicas share one copy of its rows per server, and take as many servers as the cores
    they keep busy need (`servers.place` packs them so); None: every replica holds its own copy.
    `pooled_copies` (the fused lookup step): a segment the router pools costs a copy of its rows on each of the
    front servers instead; each segment costs the cheaper of the two, and says which it is. With more than one
    front, a segment of its own step also costs a tritonserver per copy and a remote-step stub on every front per
    share of its replicas.
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
    dtypes = np.zeros(grid.size, dtype=np.int64) if row_dtypes is None else row_dtypes
    row_bytes = bytes_per_row_of(spec.dim, dtypes)[:, np.newaxis]
    copies = replicas
    if server_cores is not None:
        per_server = server_cores * capacity.target_utilization
        copies = np.minimum(replicas, np.maximum(1, np.ceil(qps * seconds / per_server - 1e-9)))
    memory = copies * rows * row_bytes + replicas * capacity.lookup_overhead_bytes
    pooled = np.zeros(memory.shape, dtype=bool)
    if pooled_copies is not None:
        if pooled_copies > 1:  # served distributed: a pod per copy, and each front calls it through stubs of its own
            stubs = pooled_copies * np.ceil(replicas / pooled_copies)
            memory = memory + stubs * capacity.replica_overhead_bytes + copies * capacity.server_overhead_bytes
        pooled_memory = pooled_copies * rows * row_bytes
        pooled = pooled_memory <= memory
        memory = np.where(pooled, pooled_memory, memory)
    return memory, replicas.astype(np.int64), share, pooled


def cut_table(
    spec: TableSpec,
    access: TableAccess,
    *,
    qps: float,
    batch_size: int,
    capacity: Capacity,
    max_shards: int,
    cached_rows: int = 0,
    precision: RowPrecision | None = None,
    server_cores: int | None = None,
    pooled_copies: int | None = None,
) -> list[ShardStats]:
    """Optimal cuts of one table's hotness order and each shard's replicas (all on CPU; placement comes later).

    With a front cache of the hottest `cached_rows` ranks, those lookups reach no shard (shares exclude them).
    `precision`: every shard's row dtype (by hotness: the cuts are chosen for the bytes that dtype stores).
    `server_cores`: price a shard's rows once per server its replicas need (see `_table_grid_costs`).
    `pooled_copies`: the fused router's servers; each shard is then pooled by the router or its own step, whichever
    holds its rows in fewer bytes.
    """
    if access.num_rows != spec.num_rows:
        raise PlanError(f"table {spec.name!r}: the profile has {access.num_rows} rows, the model {spec.num_rows}")
    lookups_per_query = batch_size * access.mean_ids_per_sample
    grid = candidate_cuts(spec.num_rows, access.touched_rows)
    if cached_rows:  # a cut at the cache's edge lets the DP give the (now cold) cached head its own shard
        grid = np.unique(np.concatenate([grid, [min(cached_rows, spec.num_rows)]]))
    precision = precision or RowPrecision()
    shares_before = _shares_before(access)
    edge = 0
    if precision.by_hotness and spec.name not in precision.tables:  # where the hot share ends: always a cut
        edge = min(int(np.searchsorted(shares_before, precision.hot_share - 1e-12, side="left")), spec.num_rows)
        grid = np.unique(np.concatenate([grid, [edge]]))
    dtypes = precision.dtypes(spec.name, shares_before[np.minimum(grid, spec.num_rows)])
    memory, replicas, share, pooled = _table_grid_costs(
        access, spec, lookups_per_query, qps, capacity, grid, cached_rows, dtypes, server_cores, pooled_copies
    )
    if 0 < edge < spec.num_rows:  # no shard spans the edge, so the hot and cold rows get their own dtypes
        memory[(grid[:, np.newaxis] < edge) & (grid[np.newaxis, :] > edge)] = np.inf
        max_shards = max(max_shards, 2)
    cut_indices = optimal_segmentation(memory, max_shards)
    return [
        ShardStats(
            spec.name,
            index,
            int(grid[i]),
            int(grid[j]),
            float(share[i, j]),
            int(replicas[i, j]),
            int(grid[j] - grid[i]) * int(bytes_per_row_of(spec.dim, dtypes[i : i + 1])[0]),
            "cpu",
            ROW_DTYPES[int(dtypes[i])],
            pooled_copies is None or bool(pooled[i, j]),
        )
        for index, (i, j) in enumerate(itertools.pairwise(cut_indices))
    ]


def _shares_before(access: TableAccess) -> np.ndarray:
    """[num_rows + 1]: the share of the table's accesses that the ranks before each rank receive."""
    counts = np.zeros(access.num_rows, dtype=np.float64)
    ranked = np.asarray(access.ranked_counts(), dtype=np.float64)
    counts[: ranked.size] = ranked
    prefix = np.concatenate([[0.0], np.cumsum(counts)])
    total = float(prefix[-1])
    return prefix / total if total else np.zeros_like(prefix)

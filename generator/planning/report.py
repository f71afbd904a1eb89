"""What a plan is expected to cost, next to the model-wise baseline: memory allocated and memory utility.

The model-wise baseline holds the whole model per replica, with the same capacity model: one replica serves a
query in `shard_fixed_s + shard_per_row_s * all lookups + dense time` (no routing, one step), so the comparison
favours the baseline. Memory utility is the bytes of distinct rows each replica reads in a replay window, summed
over replicas, divided by the bytes allocated for embeddings.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from generator.model.dlrm import TableSpec
from generator.planning.capacity import Capacity
from generator.planning.cuts import ShardStats
from generator.planning.memory import ModelShape
from generator.planning.plan import LookupStep
from generator.traffic.profile import TableAccess
from generator.triton_models.recgen_rows import bytes_per_row


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

    def to_dict(self) -> dict[str, Any]:
        """JSON-able figures for plan.json."""
        return {
            "replicas": self.replicas,
            "memory_bytes": self.memory_bytes,
            "embedding_bytes": self.embedding_bytes,
            "bytes_read_in_window": self.bytes_read,
            "memory_utility": self.memory_utility,
        }


def _times(ratio: float, better: str, worse: str) -> str:
    """'2.00x less' for a ratio above 1, '1.32x more' (its inverse) below: never '0.76x less'."""
    if ratio >= 1 or ratio <= 0:
        return f"{ratio:.2f}x {better}"
    return f"{1 / ratio:.2f}x {worse}"


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
    #: "fused": the router replicas also pool the CPU shards (their rows mapped once); "separate": shard replicas.
    lookup_step: LookupStep = "separate"

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
        return {
            "target_qps": self.target_qps,
            "batch_size": self.batch_size,
            "window_s": self.window_s,
            "planned": self.planned.to_dict(),
            "model_wise": self.model_wise.to_dict(),
            "memory_ratio": self.memory_ratio,
            "utility_ratio": self.utility_ratio,
            "lookup_step": self.lookup_step,
            "front_cache": {
                "bytes": self.front_cache_bytes,
                "cached_rows": list(self.cached_rows),
                "expected_hit_rate": self.expected_hit_rate,
            },
        }

    def __str__(self) -> str:
        lines = [
            f"planned for {self.target_qps:,.1f} queries/s x {self.batch_size} candidates ({self.capacity.source})",
            f"  {'table':<18} {'shard':>5} {'rows':>25} {'access':>8} {'replicas':>8} {'MB/replica':>11} {'device':>6}"
            f" {'dtype':>5}",
        ]
        for shard in self.shards:
            rows = f"[{shard.row_start:,}, {shard.row_end:,})"
            lines.append(
                f"  {shard.table:<18} {shard.index:>5} {rows:>25} {shard.access_share:>8.2%} {shard.replicas:>8} "
                f"{shard.bytes_per_replica / 1e6:>11.3f} {shard.device:>6} {shard.row_dtype:>5}"
            )
        pooled = ", pooling the cpu shards itself (fused lookup step; their rows mapped once)"
        lines += [
            f"  router replicas {self.router_replicas}{pooled if self.lookup_step == 'fused' else ''}, "
            f"dense replicas {self.dense_replicas}",
            f"memory allocated: model-wise {self.model_wise.memory_bytes / 1e9:.3f} GB "
            f"({self.model_wise.replicas} whole-model replicas), planned {self.planned.memory_bytes / 1e9:.3f} GB "
            f"-> {_times(self.memory_ratio, 'less', 'more')}",
            f"memory utility ({self.window_s:g} s window): model-wise {self.model_wise.memory_utility:.4f}, "
            f"planned {self.planned.memory_utility:.4f} -> {_times(self.utility_ratio, 'higher', 'lower')}",
        ]
        dtypes = sorted({shard.row_dtype for shard in self.shards})
        if dtypes != ["fp32"]:
            counts = ", ".join(f"{sum(s.row_dtype == d for s in self.shards)} {d}" for d in dtypes)
            lines.append(
                f"embedding rows planned: {self.planned.embedding_bytes / 1e6:.3f} MB as stored ({counts} shards)"
            )
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


def window_bytes_read(
    access: TableAccess, spec: TableSpec, lookups: float, shards: Sequence[ShardStats], cached_rows: int = 0
) -> float:
    """Bytes of distinct rows each replica reads in a window of `lookups` lookups, summed over replicas."""
    if not access.lookups:
        return 0.0
    probabilities = access.ranked_counts() / access.lookups
    if cached_rows:  # the router serves these; shards never read them
        probabilities = probabilities.copy()
        probabilities[:cached_rows] = 0.0
    read_bytes = 0.0  # each shard's rows in its dtype
    for shard in shards:
        within = probabilities[shard.row_start : min(shard.row_end, access.touched_rows)]
        if shard.access_share <= 0 or within.size == 0 or not within.any():
            continue
        per_replica = lookups * shard.access_share / shard.replicas
        read_bytes += (
            shard.replicas
            * _expected_unique(within / shard.access_share, per_replica)
            * bytes_per_row(spec.dim, shard.row_dtype)
        )
    return read_bytes


def model_wise_totals(
    shape: ModelShape,
    accesses: Sequence[TableAccess],
    capacity: Capacity,
    replicas: int,
    window_lookups: Sequence[float],
) -> Totals:
    """The baseline: `replicas` whole-model replicas, each one shard per table that sees 1/R of the traffic."""
    model_bytes = shape.embedding_bytes
    bytes_read = sum(
        window_bytes_read(
            access,
            spec,
            lookups,
            [ShardStats(spec.name, 0, 0, spec.num_rows, 1.0 if access.lookups else 0.0, replicas, 0, "cpu")],
        )
        for spec, access, lookups in zip(shape.tables, accesses, window_lookups, strict=True)
    )
    return Totals(
        replicas=replicas,
        memory_bytes=replicas * (model_bytes + shape.dense_bytes + capacity.replica_overhead_bytes)
        + capacity.server_overhead_bytes,
        embedding_bytes=replicas * model_bytes,
        bytes_read=bytes_read,
    )


def planned_totals(
    shape: ModelShape,
    accesses: Sequence[TableAccess],
    capacity: Capacity,
    shards: Sequence[ShardStats],
    replicas: tuple[int, int],
    router_bytes: int,
    window_lookups: Sequence[float],
    cached_rows: Sequence[int],
    *,
    pooled_by_router: bool = False,
) -> Totals:
    """The plan: every shard's replicas and rows, `replicas` = (router, dense) with their data, one server.

    `pooled_by_router` (fused lookup step): the CPU shards are no replicas of their own; their rows are mapped
    read-only by every router instance, so they are held (and read) once.
    """
    router_replicas, dense_replicas = replicas
    if pooled_by_router:
        shards = [dataclasses.replace(s, replicas=1) if s.device == "cpu" else s for s in shards]
    shard_replicas = sum(s.replicas for s in shards if not (pooled_by_router and s.device == "cpu"))
    embedding_bytes = sum(s.memory_bytes for s in shards)
    bytes_read = sum(
        window_bytes_read(access, spec, lookups, [s for s in shards if s.table == spec.name], cached)
        for spec, access, lookups, cached in zip(shape.tables, accesses, window_lookups, cached_rows, strict=True)
    )
    return Totals(
        replicas=shard_replicas + router_replicas + dense_replicas,
        memory_bytes=embedding_bytes
        + shard_replicas * capacity.lookup_overhead_bytes
        + router_replicas * (router_bytes + capacity.lookup_overhead_bytes)
        + dense_replicas * (shape.dense_bytes + capacity.replica_overhead_bytes)
        + capacity.server_overhead_bytes,
        embedding_bytes=embedding_bytes,
        bytes_read=bytes_read,
    )

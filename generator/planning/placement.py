"""Where planned models run: the GPU for the dense model and the densest-accessed shards, the router's front cache.

Both are greedy allocations by value per byte: shards go to the GPU by access share per byte while they fit, and
the front cache (FlexEMR) takes the rows with the most lookups per byte across all tables, which is a prefix of each
table's hotness order.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from generator.errors import UserInputError
from generator.planning.cuts import ShardStats
from generator.planning.memory import ModelShape
from generator.planning.plan import Device
from generator.traffic.profile import AccessProfile


def place_on_gpu(
    stats: list[ShardStats], dense_memory_bytes: int, gpu_memory_bytes: int | None
) -> tuple[list[ShardStats], Device]:
    """Dense model first, then the hottest shards (by access per byte) go to GPU while they fit."""
    if gpu_memory_bytes is None:
        return stats, "cpu"
    if gpu_memory_bytes <= 0:
        raise UserInputError(f"`gpu_memory_gb` must be > 0, got {gpu_memory_bytes / 1e9:g}")
    free = gpu_memory_bytes
    dense_device: Device = "cpu"
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
    return [int(count) for count in np.bincount(owner[taken], minlength=len(shape.tables))]

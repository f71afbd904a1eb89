"""Which cold shards to page from disk, and the bytes each copy of their rows is expected to keep in memory.

A paged shard (`ShardPlan.resident` false) holds in memory only the page-cache folios requests read. A copy of its
rows serving `draws` lookups in a window touches folio b with probability 1 - (1 - p_b)^draws, where p_b is the
share of the shard's accesses that fall in the folio's rows; its expected resident bytes are the expected touched
folios times the folio size. The planner pages a CPU shard where that is under half of its bytes. The folio size
is what a page fault reads, which the kernel picks: the capacity model's `fault_bytes`, which `recgen calibrate`
measures where it builds (`check.page_faults`); 64 KiB unless calibrated, what an isolated fault read on ext4 with
Linux 6.18 even with MADV_RANDOM (tests/native/test_paged_rows.py). Filesystems without large folios read 4 KiB.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import numpy as np

from generator.model.dlrm import TableSpec
from generator.planning.capacity import Capacity
from generator.planning.cuts import ShardStats
from generator.planning.memory import ModelShape
from generator.planning.plan import LookupStep
from generator.planning.pricing import Traffic
from generator.planning.servers import servers_needed
from generator.traffic.profile import TableAccess
from generator.triton_models.recgen_rows import bytes_per_row

#: Bytes one page fault reads into the page cache (a large folio) unless calibrated; see the module.
FAULT_BYTES = Capacity().fault_bytes
#: A shard is paged where a copy is expected to keep less than this share of its bytes resident.
PAGE_BELOW_SHARE = 0.5


def resident_bytes(
    access: TableAccess, spec: TableSpec, shard: ShardStats, draws: float, cached_rows: int, fault_bytes: int
) -> int:
    """Expected bytes of `shard` a copy keeps resident when it serves `draws` of the shard's lookups in a window."""
    row_bytes = bytes_per_row(spec.dim, shard.row_dtype)
    if draws <= 0 or not access.lookups or shard.access_share <= 0:
        return min(fault_bytes, shard.bytes_per_replica)  # the header's folio
    counts = np.zeros(shard.row_end - shard.row_start, dtype=np.float64)
    ranked = np.asarray(access.ranked_counts(), dtype=np.float64)
    within = ranked[shard.row_start : min(shard.row_end, ranked.size)].copy()
    within[: max(0, cached_rows - shard.row_start)] = 0.0  # the front cache serves those
    counts[: within.size] = within
    total = counts.sum()
    if total <= 0:
        return min(fault_bytes, shard.bytes_per_replica)
    rows_per_folio = max(1, fault_bytes // row_bytes)
    padded = np.zeros(math.ceil(counts.size / rows_per_folio) * rows_per_folio)
    padded[: counts.size] = counts / total
    per_folio = padded.reshape(-1, rows_per_folio).sum(axis=1)
    touched = float(-np.expm1(draws * np.log1p(-np.minimum(per_folio, 1.0 - 1e-12))).sum())
    return min(shard.bytes_per_replica, int((touched + 1) * fault_bytes))  # + the header's folio


def shard_copies(
    stats: Sequence[ShardStats],
    lookups: Mapping[str, float],
    load: tuple[float, float],
    server_cores: int,
    capacity: Capacity,
    lookup_step: LookupStep,
) -> dict[tuple[str, int], int]:
    """The copies of each shard's rows the plan holds: the front servers for a pooled shard, else its own.

    `load`: (queries/s, a front's seconds per query: routing, and the dense model on CPU); `lookups`: each table's
    lookups per query.
    """
    qps, front_s = load
    routers = servers_needed(qps * front_s, server_cores, capacity.target_utilization)
    copies = {}
    for shard in stats:
        if lookup_step == "fused" and shard.device == "cpu" and shard.router_pooled:
            copies[(shard.table, shard.index)] = routers
            continue
        busy = qps * capacity.shard_seconds(lookups[shard.table] * shard.access_share)
        needed = servers_needed(busy, server_cores, capacity.target_utilization)
        copies[(shard.table, shard.index)] = min(shard.replicas, needed)
    return copies


def page_cold_shards(
    stats: Sequence[ShardStats],
    shape: ModelShape,
    traffic: Traffic,
    copies: Mapping[tuple[str, int], int],
    fault_bytes: int = FAULT_BYTES,
) -> list[ShardStats]:
    """Every CPU shard paged where a copy would keep under half its bytes resident, with that expectation.

    `copies`: (table, shard) -> the copies of its rows the plan holds (`shard_copies`); a copy serves its share of
    the window's lookups. A plan whose paged shards a Python shard model would serve is refused when it is built
    (`plan_checks`).
    """
    tables = {
        spec.name: (spec, access, lookups, cached)
        for spec, access, lookups, cached in zip(
            shape.tables, traffic.accesses, traffic.window_lookups, traffic.cached_rows, strict=True
        )
    }
    paged = []
    for shard in stats:
        spec, access, window_lookups, cached = tables[shard.table]
        draws = window_lookups * shard.access_share / max(1, copies[(shard.table, shard.index)])
        expected = resident_bytes(access, spec, shard, draws, cached, fault_bytes)
        if shard.device == "cpu" and expected < PAGE_BELOW_SHARE * shard.bytes_per_replica:
            shard = dataclasses.replace(shard, resident=False, resident_bytes=expected)
        paged.append(shard)
    return paged

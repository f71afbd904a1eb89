"""What a request moves across the steps of a generated repository, against shipping raw rows (FlexEMR).

Shard groups return pooled partial sums (one `dim` vector per sample and table they hold); shipping the raw rows
instead would move one `dim` vector per id. `edge_bytes` counts both from the plan's wire layout and an access
profile; `bench/front_cache.py` also measures the real ids the router hands the groups.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from generator.planning.plan import Plan
from generator.repository import layout, wiring
from generator.traffic.profile import AccessProfile


@dataclass(frozen=True)
class EdgeBytes:
    """Bytes one request of `batch_size` candidates moves across the ensemble's step (or network) boundaries.

    `ids_to_groups` is what the router sends the groups (packed int32 blocks, padding included);
    `ids_reaching_groups` the real ids among them (expected from the profile).
    """

    batch_size: int
    ids_to_groups: int
    partials_to_dense: int
    raw_rows_instead: float
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


def _tensor_bytes(batch_size: int, spec: layout.TensorSpec) -> int:
    return batch_size * int(np.prod(spec.dims)) * 4  # INT32 ids and FP32 partial sums: 4 bytes each


def edge_bytes(plan: Plan, profile: AccessProfile, batch_size: int) -> EdgeBytes:
    """What the plan moves per request between router, shard groups and dense model, and what raw rows would."""
    tables = {t.spec.name: t for t in plan.tables}
    ids_bytes = partial_bytes = 0
    raw_bytes = real_ids = 0.0
    wire = wiring.wire_layout(plan)
    for wired in wire.groups:
        ids_bytes += sum(_tensor_bytes(batch_size, spec) for spec in wired.inputs)  # the ids, and their weights
        partial_bytes += _tensor_bytes(batch_size, wired.partial_sums)
        for shard in wired.group.shards:
            table = tables[shard.table]
            access = profile.table(shard.table)
            counts = np.asarray(access.ranked_counts(), dtype=np.float64)
            reached = counts[max(shard.row_start, table.cached_rows) : shard.row_end].sum() if access.lookups else 0
            expected = batch_size * access.mean_ids_per_sample * (reached / access.lookups if access.lookups else 0)
            real_ids += expected
            raw_bytes += expected * table.spec.bytes_per_row
    cache_bytes = sum(_tensor_bytes(batch_size, spec) for spec in wire.front_cache)
    return EdgeBytes(batch_size, ids_bytes, partial_bytes, raw_bytes, real_ids, cache_bytes)

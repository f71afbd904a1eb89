"""The capacity model the planner sizes replicas with: per-replica costs of each model kind, and memory per replica.

Every shard step runs once per request (the ensemble calls every shard), so a shard replica spends
`shard_fixed_s + shard_per_row_s * rows looked up` per request; the router spends `router_fixed_s +
router_per_id_s * ids`, plus `shard_per_row_s` per row it pools itself (the fused lookup step); the dense model
scores `dense_samples_per_s`. A replica is kept at most `target_utilization` busy. Each replica costs its data plus
an overhead: `lookup_replica_overhead_bytes` for a router or shard replica (an instance thread of the native
backend by default; a stub process with the Python models), `replica_overhead_bytes` for a dense or whole-model
replica (a Python-backend stub process); each server `server_overhead_bytes`. `recgen calibrate` measures these on
the embedded server.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from generator.errors import UserInputError

CAPACITY_FORMAT = "recgen.capacity"
CAPACITY_VERSION = 1
_CEIL_SLACK = 1e-9  # 2.0000000001 replicas is 2


@dataclass(frozen=True)
class Capacity:
    """Per-replica costs; the defaults are `recgen calibrate --batch 256` on the example model, 2-core machine.

    The median of three runs with the native lookup engine (the default) and the dense step on the Python backend's
    numpy kernels, bench/results/capacity-native-2026-12-07/: a router or shard replica is an instance thread of
    the native backend (0.09 MB), a dense replica a stub process (101 MB). For builds with `--lookup-engine python`
    calibrate with `--lookup-engine python` (a stub per router and shard replica, 74 to 95 MB).
    """

    batch_size: int = 256
    shard_fixed_s: float = 35e-6
    shard_per_row_s: float = 17e-9
    router_fixed_s: float = 52e-6
    router_per_id_s: float = 14.5e-9
    dense_samples_per_s: float = 188_000.0
    replica_overhead_bytes: int = 101_000_000
    server_overhead_bytes: int = 45_000_000
    #: A router or shard replica's overhead (None: as `replica_overhead_bytes`, a stub per replica).
    lookup_replica_overhead_bytes: int | None = 94_000
    #: Bytes one page fault of a paged shard brings into memory (the kernel's folio; `page_faults` measures it).
    fault_bytes: int = 64 * 1024
    target_utilization: float = 0.8
    source: str = "built-in defaults"

    def __post_init__(self) -> None:
        for name in ("shard_fixed_s", "shard_per_row_s", "router_fixed_s", "router_per_id_s"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and 0 <= value < 10):
                raise UserInputError(f"capacity `{name}` must be seconds in [0, 10), got {value!r}")
        if not self.dense_samples_per_s > 0:
            raise UserInputError(f"capacity `dense_samples_per_s` must be > 0, got {self.dense_samples_per_s!r}")
        if not 0 < self.target_utilization <= 1:
            raise UserInputError(f"capacity `target_utilization` must be in (0, 1], got {self.target_utilization!r}")
        overheads = (self.replica_overhead_bytes, self.server_overhead_bytes, self.lookup_overhead_bytes)
        if self.batch_size < 1 or min(overheads) < 0:
            raise UserInputError("capacity `batch_size` must be >= 1 and the overhead bytes >= 0")
        if not isinstance(self.fault_bytes, int) or not 512 <= self.fault_bytes <= 1 << 24:
            raise UserInputError(
                f"capacity `fault_bytes` must be an integer in 512..16777216, got {self.fault_bytes!r}"
            )

    @property
    def lookup_overhead_bytes(self) -> int:
        """What one more router or shard replica costs beyond its data."""
        given = self.lookup_replica_overhead_bytes
        return self.replica_overhead_bytes if given is None else given

    def replicas(self, queries_per_s: float, seconds_per_query: float) -> int:
        """Replicas that serve `queries_per_s` when one query keeps a replica busy `seconds_per_query`."""
        needed = queries_per_s * seconds_per_query / self.target_utilization
        return max(1, math.ceil(needed - _CEIL_SLACK))

    def shard_seconds(self, rows_per_query: float) -> float:
        """Busy time of one shard replica per query that looks up `rows_per_query` rows in it."""
        return self.shard_fixed_s + self.shard_per_row_s * rows_per_query

    def router_seconds(self, ids_per_query: float) -> float:
        """Busy time of one router replica per query carrying `ids_per_query` ids."""
        return self.router_fixed_s + self.router_per_id_s * ids_per_query

    def fused_seconds(self, ids_per_query: float, pooled_rows_per_query: float) -> float:
        """Busy time of a router replica that also pools `pooled_rows_per_query` rows itself (fused lookup step).

        The routing plus every pooled row; the pooled shards' fixed per-step cost (a hop, a stub's IPC) is gone.
        """
        return self.router_seconds(ids_per_query) + self.shard_per_row_s * pooled_rows_per_query

    def dense_seconds(self, samples_per_query: int) -> float:
        """Busy time of one dense replica per query of `samples_per_query` candidates."""
        return samples_per_query / self.dense_samples_per_s

    def whole_model_seconds(self, lookups_per_query: float, samples_per_query: int) -> float:
        """Busy time of a whole-model replica per query: one step doing every lookup, then the dense tower."""
        return self.shard_seconds(lookups_per_query) + self.dense_seconds(samples_per_query)

    def with_overrides(self, **overrides: Any) -> Capacity:
        """A copy with some figures replaced (None values are ignored)."""
        given = {key: value for key, value in overrides.items() if value is not None}
        if not given:
            return self
        unknown = set(given) - {field.name for field in dataclasses.fields(self)}
        if unknown:
            raise UserInputError(f"unknown capacity figures {sorted(unknown)}")
        return dataclasses.replace(self, **given, source=f"{self.source} + overrides {sorted(given)}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able figures with the format header."""
        return {"format": CAPACITY_FORMAT, "version": CAPACITY_VERSION, **dataclasses.asdict(self)}

    def save(self, path: str | Path) -> Path:
        """Write as JSON."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> Capacity:
        """Read a capacity JSON; unknown keys are an error (a typo must not be ignored)."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            raise UserInputError(f"capacity file `{path}` cannot be read: {error}") from error
        if data.pop("format", None) != CAPACITY_FORMAT or data.pop("version", None) != CAPACITY_VERSION:
            raise UserInputError(f"`{path}` is not a recgen capacity file (version {CAPACITY_VERSION})")
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise UserInputError(f"capacity file `{path}` has unknown keys {sorted(unknown)}; known: {sorted(known)}")
        return cls(**data)

    def __str__(self) -> str:
        return (
            f"capacity ({self.source}) at batch {self.batch_size}: shard {self.shard_fixed_s * 1e6:.0f} us/request "
            f"+ {self.shard_per_row_s * 1e9:.1f} ns/row; router {self.router_fixed_s * 1e6:.0f} us/request + "
            f"{self.router_per_id_s * 1e9:.1f} ns/id; dense {self.dense_samples_per_s:,.0f} samples/s; "
            f"{self.lookup_overhead_bytes / 1e6:.1f} MB per router or shard replica, "
            f"{self.replica_overhead_bytes / 1e6:.0f} MB per dense replica, {self.server_overhead_bytes / 1e6:.0f} MB "
            f"per server; a paged fault reads {self.fault_bytes / 1024:g} KiB; replicas kept <= "
            f"{self.target_utilization:.0%} busy"
        )


def load_with_overrides(
    path: Path | None,
    *,
    shard_fixed_us: float | None = None,
    shard_per_row_ns: float | None = None,
    router_fixed_us: float | None = None,
    router_per_id_ns: float | None = None,
    dense_samples_per_s: float | None = None,
    replica_overhead_mb: float | None = None,
    lookup_replica_overhead_mb: float | None = None,
    server_overhead_mb: float | None = None,
    fault_kib: float | None = None,
    target_utilization: float | None = None,
) -> Capacity:
    """A calibrated capacity file (or the built-in figures) with some figures overridden, given in the CLI's units."""

    def scaled(value: float | None, factor: float) -> float | None:
        return None if value is None else value * factor

    def megabytes(value: float | None) -> int | None:
        return None if value is None else int(value * 1e6)

    figures = Capacity.load(path) if path is not None else Capacity()
    return figures.with_overrides(
        shard_fixed_s=scaled(shard_fixed_us, 1e-6),
        shard_per_row_s=scaled(shard_per_row_ns, 1e-9),
        router_fixed_s=scaled(router_fixed_us, 1e-6),
        router_per_id_s=scaled(router_per_id_ns, 1e-9),
        dense_samples_per_s=dense_samples_per_s,
        replica_overhead_bytes=megabytes(replica_overhead_mb),
        lookup_replica_overhead_bytes=megabytes(lookup_replica_overhead_mb),
        server_overhead_bytes=megabytes(server_overhead_mb),
        fault_bytes=None if fault_kib is None else int(fault_kib * 1024),
        target_utilization=target_utilization,
    )

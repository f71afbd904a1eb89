"""What a plan is expected to cost, next to the model-wise baseline: servers, memory allocated and memory utility.

Both are priced on servers of the same size (`pricing`, `servers`). The model-wise baseline holds the whole model
once per server, with the same capacity model: one replica serves a query in `shard_fixed_s + shard_per_row_s *
all lookups + dense time` (no routing, one step), so the comparison favours the baseline. Memory utility is the
bytes of distinct rows each server reads in a window, summed over servers, divided by the bytes of rows they hold.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from generator.planning.capacity import Capacity
from generator.planning.cuts import ShardStats
from generator.planning.plan import LookupStep
from generator.planning.servers import Fleet


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
    #: The servers the plan and the model-wise baseline are placed on (None: priced without servers).
    fleet: Fleet | None = None
    model_wise_fleet: Fleet | None = None
    #: Whether the routers count accesses (each instance's counters priced), as the plan built from it does.
    count_accesses: bool = True

    def memory_parts(self, totals: Totals, fleet: Fleet | None) -> dict[str, int]:
        """Memory allocated by part: rows held, what every server runs once, what every replica adds."""
        servers = len(fleet.servers) if fleet is not None else 1
        per_server = servers * self.capacity.server_overhead_bytes
        rows = totals.embedding_bytes
        return {"rows": rows, "per server": per_server, "per replica": totals.memory_bytes - rows - per_server}

    @property
    def memory_words(self) -> str:
        """The memory ratio in the one wording the report and the figure use ('1.27x more', '2.00x less')."""
        return _times(self.memory_ratio, "less", "more")

    @property
    def utility_words(self) -> str:
        """The utility ratio in the same wording."""
        return _times(self.utility_ratio, "higher", "lower")

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
            "servers": None if self.fleet is None else self.fleet.to_dict(),
            "model_wise_servers": None if self.model_wise_fleet is None else self.model_wise_fleet.to_dict(),
        }

    def _servers(self) -> list[str]:
        """The servers of the plan, what each holds, and how many the model-wise baseline takes."""
        if self.fleet is None or self.model_wise_fleet is None:
            return []
        stated = " (the default: --server-cores, --server-memory-gb)" if self.fleet.size.is_default else ""
        fronts = sum(count for _, count in self.fleet.placements("front"))
        layout = (
            f"; served distributed: {fronts} front server(s), each its share of the routers and dense replicas and "
            "a remote step per shard step; every shard step its own pod"
            if fronts
            else "; one tritonserver serves it (the embedded build)"
        )
        return [
            f"servers of {self.fleet.size}{stated}: planned {len(self.fleet.servers)}, model-wise "
            f"{len(self.model_wise_fleet.servers)}{layout}",
            f"  {'server':>9} {'cores busy':>11} {'memory GB':>9}  replicas",
            *self.fleet.describe(),
        ]

    def __str__(self) -> str:
        lines = [
            f"planned for {self.target_qps:,.1f} queries/s x {self.batch_size} candidates ({self.capacity.source})",
            f"  {'table':<18} {'shard':>5} {'rows':>25} {'access':>8} {'replicas':>8} {'MB/replica':>11} {'device':>6}"
            f" {'dtype':>5}",
        ]
        for shard in self.shards:
            rows = f"[{shard.row_start:,}, {shard.row_end:,})"
            fused_cpu = self.lookup_step == "fused" and shard.device == "cpu"
            own_step = fused_cpu and not shard.router_pooled
            replicas = "router" if fused_cpu and shard.router_pooled else str(shard.replicas)  # the router's replicas
            lines.append(
                f"  {shard.table:<18} {shard.index:>5} {rows:>25} {shard.access_share:>8.2%} {replicas:>8} "
                f"{shard.bytes_per_replica / 1e6:>11.3f} {shard.device:>6} {shard.row_dtype:>5}"
                + ("  own step" if own_step else "")
                + (f"  paged, {shard.held_bytes / 1e6:.3f} MB expected resident" if not shard.resident else "")
            )
        pooling = ", pooling the cpu shards itself but those marked own step (fused lookup step; rows mapped once)"
        lines += [
            f"  router replicas {self.router_replicas}{pooling if self.lookup_step == 'fused' else ''}, "
            f"dense replicas {self.dense_replicas}",
            *self._servers(),
            f"memory allocated: model-wise {self.model_wise.memory_bytes / 1e9:.3f} GB "
            f"({self.model_wise.replicas} whole-model replicas), planned {self.planned.memory_bytes / 1e9:.3f} GB "
            f"-> {self.memory_words}",
            f"memory utility ({self.window_s:g} s window): model-wise {self.model_wise.memory_utility:.4f}, "
            f"planned {self.planned.memory_utility:.4f} -> {self.utility_words}",
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

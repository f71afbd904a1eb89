"""The plan: how every table is cut into row-range shards, and how many instances each model gets where.

A plain value, printed and checked before anything heavy runs (its closed sets of choices: `choices`). Boundaries
and instance counts are per-shard lists: `uniform_plan` splits evenly, the planner by hotness. Rows are addressed by
*hotness rank* (`TablePlan.row_order[rank]` is the original id there), so a permutation changes data, not code.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from generator import naming
from generator.errors import PlanError, UserInputError
from generator.model.dlrm import TableSpec
from generator.model.features import FeatureSpec
from generator.model.protocol import Model
from generator.planning import queueing
from generator.planning.choices import (
    GROUP_BY,
    LOOKUP_ENGINES,
    LOOKUP_STEPS,
    Device,
    GroupBy,
    LookupEngine,
    LookupStep,
    check_choice,
    check_placement,
)
from generator.planning.queueing import Shedding
from generator.triton_models.recgen_rows import ROW_DTYPES, RowDtype, bytes_per_row

#: Largest batch (candidates per request) a generated model accepts unless told otherwise.
DEFAULT_MAX_BATCH_SIZE = 1024


def split_rows(num_rows: int, max_shards: int) -> list[int]:
    """Boundaries of up to `max_shards` contiguous, nearly equal row ranges: [0, ..., num_rows].

    A table with fewer rows than `max_shards` gets one shard per row.
    """
    if num_rows < 1:
        raise UserInputError(f"`num_rows` must be >= 1, got {num_rows}")
    if max_shards < 1:
        raise UserInputError(f"`shards_per_table` must be >= 1, got {max_shards}")
    count = min(max_shards, num_rows)
    return [index * num_rows // count for index in range(count + 1)]


@dataclass(frozen=True)
class Placement:
    """Where a model runs, how many Triton instances (instance_group count) it gets, and how many share a server.

    The planner sizes the count; one server (the embedded build) runs them all. The distributed layout spreads them
    over `servers` servers of `instances_per_server` each, as the planner's fleet did (`deploy.topology`).
    """

    instance_count: int = 1
    device: Device = "cpu"
    #: Of its instances, how many one server of the distributed layout runs (1: a server per instance).
    instances_per_server: int = 1
    #: Cores one instance keeps busy at the planned load (None, a plan not made by the planner: the target share).
    cores_per_instance: float | None = None

    def __post_init__(self) -> None:
        check_placement(self.instance_count, self.device, "model", self.instances_per_server, self.cores_per_instance)

    @property
    def servers(self) -> int:
        """Servers of the distributed layout that run its instances."""
        return -(-self.instance_count // self.instances_per_server)


@dataclass(frozen=True)
class ShardPlan:
    """Rows [row_start, row_end) in hotness-rank order of one table, served as one Triton model."""

    table: str
    index: int
    row_start: int
    row_end: int
    placement: Placement = field(default_factory=Placement)
    #: How the shard stores its rows (`recgen_rows`): fp32, fp16, or int8 row-wise (codes plus scale and offset).
    row_dtype: RowDtype = "fp32"
    #: With the fused lookup step, whether the router pools this shard itself (on the router's device); False: the
    #: shard is a step of its own, so that its rows sit on the few servers its calls need, not on every router's.
    router_pooled: bool = True
    #: Whether the server faults the shard's pages in at load (True), or leaves them on disk until a request reads
    #: them (False: cold rows paged from disk; only the pages read occupy memory, in the page cache).
    resident: bool = True

    def __post_init__(self) -> None:
        if self.row_dtype not in ROW_DTYPES:
            raise UserInputError(
                f"table {self.table!r} shard {self.index}: `row_dtype` must be one of {', '.join(ROW_DTYPES)}, "
                f"got {self.row_dtype!r}"
            )

    @property
    def num_rows(self) -> int:
        """Rows this shard holds."""
        return self.row_end - self.row_start


@dataclass(frozen=True)
class TablePlan:
    """One table's shards (contiguous, covering every row) and its hotness order."""

    spec: TableSpec
    shards: tuple[ShardPlan, ...]
    row_order: np.ndarray | None = None
    #: The hottest `cached_rows` ranks are also held by the router (FlexEMR's front cache), which pools them itself.
    cached_rows: int = 0

    def __post_init__(self) -> None:
        name = self.spec.name
        if not isinstance(self.cached_rows, int) or not 0 <= self.cached_rows <= self.spec.num_rows:
            raise PlanError(
                f"table {name!r}: `cached_rows` must be in 0..{self.spec.num_rows}, got {self.cached_rows!r}"
            )
        if not self.shards:
            raise PlanError(f"table {name!r}: a table needs at least one shard")
        expected_start = 0
        for index, shard in enumerate(self.shards):
            if shard.table != name or shard.index != index:
                raise PlanError(f"table {name!r}: shard {index} is labelled {shard.table!r}/{shard.index}")
            if shard.row_start != expected_start or shard.row_end <= shard.row_start:
                raise PlanError(
                    f"table {name!r}: shard {index} covers rows [{shard.row_start}, {shard.row_end}); shards must "
                    f"be non-empty and contiguous, this one must start at {expected_start}"
                )
            expected_start = shard.row_end
        if expected_start != self.spec.num_rows:
            raise PlanError(f"table {name!r}: shards end at row {expected_start}, the table has {self.spec.num_rows}")
        if self.row_order is not None:
            order = np.asarray(self.row_order)
            if (
                order.shape != (self.spec.num_rows,)
                or not np.issubdtype(order.dtype, np.integer)
                or int(order.min()) < 0
                or int(order.max()) >= self.spec.num_rows
                or int(np.bincount(order, minlength=self.spec.num_rows).max()) != 1
            ):
                raise PlanError(f"table {name!r}: `row_order` must be a permutation of 0..{self.spec.num_rows - 1}")

    def shard_bytes(self, shard: ShardPlan) -> int:
        """Bytes of one shard's rows in its row dtype."""
        return shard.num_rows * bytes_per_row(self.spec.dim, shard.row_dtype)

    @property
    def embedding_bytes(self) -> int:
        """Bytes of the table's rows as its shards store them."""
        return sum(self.shard_bytes(shard) for shard in self.shards)

    @property
    def boundaries(self) -> list[int]:
        """Shard boundaries in rank space: [0, end of shard 0, ..., num_rows]."""
        return [0, *(shard.row_end for shard in self.shards)]

    def original_rows(self) -> np.ndarray:
        """Original row id at every rank (identity when the table is not permuted)."""
        if self.row_order is None:
            return np.arange(self.spec.num_rows, dtype=np.int64)
        return np.asarray(self.row_order, dtype=np.int64)

    def rank_of_row(self) -> np.ndarray | None:
        """Hotness rank of every original row id (the router's lookup table), or None for identity order."""
        if self.row_order is None:
            return None
        dtype = np.int32 if self.spec.num_rows < 2**31 else np.int64  # what planning.memory.RANK_BYTES counts
        ranks = np.empty(self.spec.num_rows, dtype=dtype)
        ranks[np.asarray(self.row_order, dtype=np.int64)] = np.arange(self.spec.num_rows, dtype=dtype)
        return ranks


@dataclass(frozen=True)
class ShardGroup:
    """Shards served together by one Triton model, with one instance group and one row dtype."""

    index: int
    placement: Placement
    shards: tuple[ShardPlan, ...]

    @property
    def row_dtype(self) -> RowDtype:
        """How every member stores its rows (groups never mix row dtypes: each slot pools one kind of stack)."""
        return self.shards[0].row_dtype

    @property
    def router_pooled(self) -> bool:
        """Whether the router may pool the group (groups never mix pooled and own-step shards)."""
        return self.shards[0].router_pooled

    @property
    def resident(self) -> bool:
        """Whether the group's pages are faulted in at load (groups never mix resident and paged shards)."""
        return self.shards[0].resident


@dataclass(frozen=True)
class Plan:
    """Everything the exporter and renderer need besides the weights."""

    model_name: str
    tables: tuple[TablePlan, ...]
    router: Placement = field(default_factory=Placement)
    dense: Placement = field(default_factory=Placement)
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    group_by: GroupBy = "placement"
    #: The request's sparse features, each pooled from one table; () means one sum-pooled feature per table.
    features: tuple[FeatureSpec, ...] = ()
    #: Latency target of one request through the ensemble; the router's shedding budget follows from it.
    latency_slo_ms: float = queueing.DEFAULT_LATENCY_SLO_MS
    shedding: Shedding = "router"  # who sheds what would queue past the budget (queueing.SHEDDING)
    #: The router rejects a NaN or infinite dense feature or weight (False: pass them on, as PyTorch would).
    check_finite: bool = True
    lookup_step: LookupStep = "separate"
    lookup_engine: LookupEngine = "native"
    #: The routers count every id they route per table and row (`recgen profile --from-server` reads them).
    count_accesses: bool = True
    #: The deployment's generation it builds (`naming.leaf_stem`): 1 for `recgen build`, +1 per `recgen update`.
    generation: int = naming.FIRST_GENERATION

    def __post_init__(self) -> None:
        queueing.check_latency_slo_ms(self.latency_slo_ms)
        if self.features:
            tables = {table.spec.name for table in self.tables}
            stray = [f.name for f in self.features if f.table not in tables]
            if stray:
                raise PlanError(f"features {stray} read tables the plan does not hold")
        if not naming.is_valid_identifier(self.model_name):
            raise UserInputError(
                f"model `name` {self.model_name!r} is not allowed: use 1-64 letters, digits and single '_', "
                "starting with a letter"
            )
        if not 1 <= self.max_batch_size <= 1 << 20:
            raise UserInputError(f"`max_batch_size` must be in 1..{1 << 20}, got {self.max_batch_size}")
        check_choice("group_by", self.group_by, GROUP_BY)
        if not naming.FIRST_GENERATION <= self.generation <= naming.MAX_GENERATION:
            raise UserInputError(
                f"`generation` must be in {naming.FIRST_GENERATION}..{naming.MAX_GENERATION}, got {self.generation}"
            )
        queueing.check_shedding(self.shedding)
        check_choice("lookup_step", self.lookup_step, LOOKUP_STEPS)
        check_choice("lookup_engine", self.lookup_engine, LOOKUP_ENGINES)
        from generator.planning.plan_checks import check_paged

        check_paged(self)

    @property
    def leaf_stem(self) -> str:
        """What this generation's router, shard groups and dense models are named after (`naming.leaf_stem`)."""
        return naming.leaf_stem(self.model_name, self.generation)

    @property
    def shards(self) -> list[ShardPlan]:
        """All shards, table by table."""
        return [shard for table in self.tables for shard in table.shards]

    @property
    def sparse_features(self) -> list[FeatureSpec]:
        """Every request feature in model order (recgen's DLRM: one sum-pooled feature per table, same name)."""
        if self.features:
            return list(self.features)
        return [
            FeatureSpec(t.spec.name, t.spec.name, t.spec.max_ids_per_sample, "sum", t.spec.side) for t in self.tables
        ]

    @property
    def has_front_cache(self) -> bool:
        """Whether the router holds a front cache of hot rows for any table."""
        return any(table.cached_rows for table in self.tables)

    def shard_groups(self) -> list[ShardGroup]:
        """Shards grouped into Triton models (see GroupBy), in order of first appearance.

        Grouped by placement, shards of different row dtypes go to different groups, so a group's slots each pool
        one kind of rows.
        """
        if self.group_by == "shard":
            return [ShardGroup(i, shard.placement, (shard,)) for i, shard in enumerate(self.shards)]
        members: dict[tuple[Placement, RowDtype, bool, bool], list[ShardPlan]] = {}
        for shard in self.shards:
            key = (shard.placement, shard.row_dtype, shard.router_pooled, shard.resident)
            members.setdefault(key, []).append(shard)
        return [ShardGroup(i, key[0], tuple(group)) for i, (key, group) in enumerate(members.items())]

    def router_pooled_groups(self) -> list[ShardGroup]:
        """The shard groups the router pools in its own step.

        With a fused lookup step: those on its device that the plan leaves to it (`ShardPlan.router_pooled`).
        """
        if self.lookup_step != "fused":
            return []
        return [
            group
            for group in self.shard_groups()
            if group.placement.device == self.router.device and group.router_pooled
        ]

    def step_groups(self) -> list[ShardGroup]:
        """The shard groups served as their own model and ensemble step."""
        pooled = {group.index for group in self.router_pooled_groups()}
        return [group for group in self.shard_groups() if group.index not in pooled]

    def check_matches(self, model: Model) -> None:
        """Raise PlanError unless the plan's tables are exactly the model's tables, in order; name what differs."""
        from generator.planning.plan_checks import check_matches  # the comparison has its own module

        check_matches(self, model)

    def __str__(self) -> str:
        from generator.planning.plan_text import describe  # the printed form has its own module

        return describe(self)


def table_plan(
    spec: TableSpec,
    boundaries: Sequence[int],
    placements: Sequence[Placement],
    row_order: np.ndarray | None = None,
    cached_rows: int = 0,
    row_dtypes: Sequence[RowDtype] | None = None,
    router_pooled: Sequence[bool] | None = None,
    resident: Sequence[bool] | None = None,
) -> TablePlan:
    """Build one table's plan from its boundaries [0, ..., num_rows], one placement (and row dtype) per shard.

    `router_pooled`: per shard, whether the fused router pools it; `resident`: whether its pages are faulted in at
    load (all of them if None).
    """
    count = len(boundaries) - 1
    if len(placements) != count or (row_dtypes is not None and len(row_dtypes) != count):
        raise PlanError(
            f"table {spec.name!r}: {count} shards need {count} placements (and row dtypes), got {len(placements)}"
        )
    dtypes: list[RowDtype] = list(row_dtypes) if row_dtypes is not None else ["fp32"] * count
    pooled = list(router_pooled) if router_pooled is not None else [True] * count
    loaded = list(resident) if resident is not None else [True] * count
    if len(pooled) != count or len(loaded) != count:
        raise PlanError(f"table {spec.name!r}: {count} shards need {count} router_pooled and resident flags")
    shards = tuple(
        ShardPlan(spec.name, index, int(start), int(end), placement, dtype, is_pooled, is_resident)
        for index, (start, end, placement, dtype, is_pooled, is_resident) in enumerate(
            zip(boundaries[:-1], boundaries[1:], placements, dtypes, pooled, loaded, strict=True)
        )
    )
    return TablePlan(spec, shards, row_order, cached_rows)


def uniform_plan(
    model: Model,
    *,
    name: str = "dlrm",
    shards_per_table: int = 2,
    device: Device = "cpu",
    instance_count: int = 1,
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
    group_by: GroupBy = "placement",
    latency_slo_ms: float = queueing.DEFAULT_LATENCY_SLO_MS,
    lookup_step: LookupStep = "fused",
    row_dtypes: Mapping[str, RowDtype] | None = None,
) -> Plan:
    """Cut every table into up to `shards_per_table` equal row ranges, one instance each, identity row order.

    The router always runs on CPU (it is numpy bookkeeping); shards and the dense model go to `device`. With the
    fused lookup step (the default) the router also pools the shards that share its device. `row_dtypes`: how
    each named table stores its rows (fp32 when not named).
    """
    check_placement(instance_count, device, "shard")
    placement = Placement(instance_count, device)
    tables = []
    for spec in model.tables:
        boundaries = split_rows(spec.num_rows, shards_per_table)
        count = len(boundaries) - 1
        dtype: RowDtype = (row_dtypes or {}).get(spec.name, "fp32")
        tables.append(table_plan(spec, boundaries, [placement] * count, row_dtypes=[dtype] * count))
    return Plan(
        model_name=name,
        tables=tuple(tables),
        router=Placement(instance_count, "cpu", instance_count),  # one front server runs them all
        dense=Placement(instance_count, device, instance_count),
        max_batch_size=max_batch_size,
        group_by=group_by,
        features=model.plan_features,
        latency_slo_ms=latency_slo_ms,
        lookup_step=lookup_step,
    )

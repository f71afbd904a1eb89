"""Typed parameters the generated Python-backend models read from their config.pbtxt: the build -> model contract.

Each spec is a frozen dataclass (`recgen_spec.Spec`) that travels as compact JSON in one config parameter (its
`PARAMETER`). The build writes it with `to_json`; the model (and any tool that inspects a served model, such as the
load-test sampler) reads it with `from_model_config`. Reading is strict: a missing or unknown key, or a value of
the wrong type, is a `ParameterError` naming the spec and the key, never a silent default, so the two sides cannot
drift apart.

Copied next to every generated model.py (like recgen_kernels.py), so it depends on the standard library only and
runs on Python 3.10.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from .recgen_spec import ParameterError as ParameterError
from .recgen_spec import Spec as Spec

# -- router --------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ShardTarget(Spec):
    """Where one shard's ids go: router output (index), its table's first column there, first row in the group."""

    output: int
    column: int
    first_row: int


@dataclasses.dataclass(frozen=True)
class RoutedTable(Spec):
    """One feature as the router sees it: its input, table, side, rows, ids per sample, shards in rank space.

    recgen's DLRM has one feature per table, named as the table; features that share a table share its shards.
    """

    table: str
    input: str
    side: str
    cached_rows: int
    num_rows: int
    ids_per_sample: int
    boundaries: tuple[int, ...]
    shards: tuple[ShardTarget, ...]
    #: Whether the router maps original ids to hotness ranks (its rank file then holds this table).
    permuted: bool
    #: Whether the router counts this feature's ids per sample (a mean-pooled feature) into `counts_output`.
    counted: bool
    #: The request tensor of this feature's per-id weights ("" = unweighted: every id weighs 1).
    weights_input: str
    #: An id the model pools as nothing (its `padding_idx`): the router drops it like -1 (-1 = none).
    padding_id: int

    def __post_init__(self) -> None:
        bounds = self.boundaries  # the compiled routing reads by these: a mismatch would read past them
        if not bounds or bounds[0] != 0 or bounds[-1] != self.num_rows or len(self.shards) != len(bounds) - 1:
            raise ParameterError(
                f"table {self.table!r}: num_rows {self.num_rows} and shard boundaries {list(bounds)} disagree"
            )


@dataclasses.dataclass(frozen=True)
class PackedOutput(Spec):
    """One packed router output: name and width (columns), and the output of its ids' weights ("" = none)."""

    name: str
    width: int
    weights: str


@dataclasses.dataclass(frozen=True)
class RoutingParams(Spec):
    """`routing`: every feature's route, the packed outputs (one per shard group) and the mean counts' output."""

    PARAMETER: ClassVar[str] = "routing"

    tables: tuple[RoutedTable, ...]
    outputs: tuple[PackedOutput, ...]
    #: [B, counted features] FP32 ids per sample of the mean-pooled features ("" = no mean-pooled feature).
    counts_output: str


@dataclasses.dataclass(frozen=True)
class RequestChecksParams(Spec):
    """`request_checks` (on a router, unless the build allows non-finite inputs): FP32 inputs that must be finite.

    The router is the first step of every ensemble, so it also reads the dense features only to check them: a NaN
    or an infinity is a request error naming the tensor, not a NaN score.
    """

    PARAMETER: ClassVar[str] = "request_checks"

    finite_inputs: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class FrontCacheParams(Spec):
    """`front_cache` (only when the router holds one): the cache's partial-sums output and each slot's table."""

    PARAMETER: ClassVar[str] = "front_cache"

    output: str
    tables: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class RankingRouterParams(Spec):
    """`ranking_router` (only on the ranking ensemble's router): one user row and N candidate rows per request."""

    PARAMETER: ClassVar[str] = "ranking_router"

    #: 1 + N must fit the shard groups' max_batch_size.
    max_rows: int


@dataclasses.dataclass(frozen=True)
class AccessCountsParams(Spec):
    """`access_counts` (unless the build turned it off): count every routed id per table and original row.

    Each router instance counts into its own files under `directory`/<server pid>/, named by `key` (the model whose
    profile model sums them), its model and its process; `tables` and `num_rows` fix the counters' layout.
    """

    PARAMETER: ClassVar[str] = "access_counts"

    directory: str
    key: str
    tables: tuple[str, ...]
    num_rows: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class AdmissionStep(Spec):
    """One step of the router's ensemble whose queue counts: its model and instances."""

    model: str
    instances: int


@dataclasses.dataclass(frozen=True)
class AdmissionParams(Spec):
    """`admission` (on every router): shed a batch when requests would queue past `budget_us` (`recgen_admission`).

    `steps` are the ensemble's leaf steps on this server, the router first; the shared estimate lives under
    `directory`/recgen-<uid>/load/<server pid>/.
    """

    PARAMETER: ClassVar[str] = "admission"

    budget_us: int
    steps: tuple[AdmissionStep, ...]
    directory: str


# -- shard groups, dense models, the monolithic baseline, remote steps ------------------------------------------------


@dataclasses.dataclass(frozen=True)
class GroupMember(Spec):
    """One member shard of a group and its rows file next to model.py (int8: codes, with a scales file beside)."""

    table: str
    shard: int
    rows_file: str
    scales_file: str  # "" unless the group's rows are int8 row-wise


@dataclasses.dataclass(frozen=True)
class GroupSlot(Spec):
    """One feature slot of a group: the table it pools and its block [first, last) of input columns."""

    table: str
    columns: tuple[int, int]


@dataclasses.dataclass(frozen=True)
class ShardGroupParams(Spec):
    """`shards`: the packed input and output, the member shards (stacked per row width, in this order), the slots.

    Each slot's output is as wide as its table's rows (read from the rows files).
    """

    PARAMETER: ClassVar[str] = "shards"

    input: str
    output: str
    shards: tuple[GroupMember, ...]
    slots: tuple[GroupSlot, ...]
    #: Every packed id's weight, in the ids' columns ("" = the group pools unweighted features only).
    weights_input: str
    #: How the members store their rows (`recgen_rows.ROW_DTYPES`); the pools are FP32 whatever it is.
    row_dtype: str
    #: Read every page of the rows at load (False: cold rows stay on disk until a request reads them).
    fault_in: bool


@dataclasses.dataclass(frozen=True)
class PooledGroup(Spec):
    """A shard group the router pools itself: the routed ids (and weights) it consumes, its partial sums, its rows.

    `stack_files` hold the group's rows stacked per row width, each ending in the zero padding row; `slot_stacks`
    says which stack each slot pools from.
    """

    ids: str
    weights: str
    output: str
    stack_files: tuple[str, ...]
    slots: tuple[GroupSlot, ...]
    slot_stacks: tuple[int, ...]
    row_dtype: str
    scale_files: tuple[str, ...]  # int8: per stack, its (scale, offset) pairs; () otherwise
    #: Read every page of the stacks at load (False: cold rows stay on disk until a request reads them).
    fault_in: bool


@dataclasses.dataclass(frozen=True)
class RouterPoolingParams(Spec):
    """`router_pooling`: the fused lookup step; the groups the router pools, and the model holding their rows.

    The rows live in one version directory (the flattened router's), which the ranking router maps too, so every
    router instance shares one copy in the page cache.
    """

    PARAMETER: ClassVar[str] = "router_pooling"

    rows_model: str
    groups: tuple[PooledGroup, ...]


@dataclasses.dataclass(frozen=True)
class PartialSlot(Spec):
    """One part of a table's pool: a packed partial-sums input and the table's slot in it."""

    input: str
    slot: int


@dataclasses.dataclass(frozen=True)
class TableParts(Spec):
    """A table (interaction order) and the parts its pool is the sum of."""

    table: str
    parts: tuple[PartialSlot, ...]


@dataclasses.dataclass(frozen=True)
class DenseParams(Spec):
    """`dense`: the dense-feature input, the output, the row width and every table's parts."""

    PARAMETER: ClassVar[str] = "dense"

    dense_input: str
    output: str
    dim: int
    tables: tuple[TableParts, ...]


@dataclasses.dataclass(frozen=True)
class SidedTableParts(Spec):
    """A table of a ranking request: its side and its parts."""

    table: str
    side: str
    parts: tuple[PartialSlot, ...]


@dataclasses.dataclass(frozen=True)
class RankingDenseParams(Spec):
    """`ranking`: the user and item dense inputs (None when that side has no dense feature) and the table parts."""

    PARAMETER: ClassVar[str] = "ranking"

    user_dense: str | None
    item_dense: str | None
    output: str
    dim: int
    dense_sides: tuple[str, ...]
    tables: tuple[SidedTableParts, ...]


@dataclasses.dataclass(frozen=True)
class WholeTable(Spec):
    """A whole table inside the monolithic model: its input, rows and rows file."""

    table: str
    input: str
    num_rows: int
    rows_file: str


@dataclasses.dataclass(frozen=True)
class MonolithicParams(Spec):
    """`tables`: the monolithic model's dense input, output and tables."""

    PARAMETER: ClassVar[str] = "tables"

    dense_input: str
    output: str
    tables: tuple[WholeTable, ...]


@dataclasses.dataclass(frozen=True)
class RemoteTensor(Spec):
    """One input the remote step forwards: its name and Triton dtype."""

    name: str
    dtype: str


@dataclasses.dataclass(frozen=True)
class RemoteParams(Spec):
    """`remote`: the front's step for a shard group served elsewhere (see remote_group_model)."""

    PARAMETER: ClassVar[str] = "remote"

    model: str
    inputs: tuple[RemoteTensor, ...]
    output: str
    endpoints: tuple[str, ...]
    deadline_s: float
    max_attempts: int
    backoff_s: float
    resolve_interval_s: float


#: Every spec a generated model reads, for tools and tests.
ALL_SPECS: tuple[type[Spec], ...] = (
    RoutingParams,
    RequestChecksParams,
    FrontCacheParams,
    RankingRouterParams,
    AccessCountsParams,
    AdmissionParams,
    ShardGroupParams,
    DenseParams,
    RankingDenseParams,
    MonolithicParams,
    RemoteParams,
)

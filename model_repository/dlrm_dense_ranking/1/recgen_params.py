"""Typed parameters the generated Python-backend models read from their config.pbtxt: the build -> model contract.

Each spec is a frozen dataclass that travels as compact JSON in one config parameter (its `PARAMETER`). The build
writes it with `to_json`; the model (and any tool that inspects a served model, such as the load-test sampler)
reads it with `from_model_config`. Reading is strict: a missing or unknown key, or a value of the wrong type, is a
`ParameterError` naming the spec and the key, never a silent default, so the two sides cannot drift apart.

Copied next to every generated model.py (like recgen_kernels.py), so it depends on the standard library only and
runs on Python 3.10.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Mapping
from typing import Any, ClassVar, TypeVar, Union

SpecT = TypeVar("SpecT", bound="Spec")


class ParameterError(ValueError):
    """A model's config parameter does not hold the spec it should: the message names the spec and the key."""


@dataclasses.dataclass(frozen=True)
class Spec:
    """Base of every parameter spec: strict JSON round trip."""

    #: The config.pbtxt parameter key that carries this spec.
    PARAMETER: ClassVar[str] = ""

    def to_json(self) -> str:
        """Compact JSON (read by the model, not by people), fields in declaration order."""
        return json.dumps(dataclasses.asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls: type[SpecT], text: str) -> SpecT:
        """Parse JSON written by `to_json`; raises ParameterError on anything else."""
        try:
            data = json.loads(text)
        except ValueError as error:
            raise ParameterError(f"{cls.__name__}: not JSON ({error})") from error
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls: type[SpecT], data: object, where: str = "") -> SpecT:
        """Build from decoded JSON: every field must be present, no other key may be."""
        where = where or cls.__name__
        if not isinstance(data, Mapping):
            raise ParameterError(f"{where}: expected an object, got {type(data).__name__}")
        hints = _field_types(cls)
        missing = [name for name in hints if name not in data]
        unknown = sorted(set(data) - set(hints))
        if missing or unknown:
            raise ParameterError(f"{where}: missing keys {missing}, unknown keys {unknown}")
        values = {name: _decode(hint, data[name], f"{where}.{name}") for name, hint in hints.items()}
        return cls(**values)

    @classmethod
    def optional_from_model_config(cls: type[SpecT], model_config: Mapping[str, Any]) -> SpecT | None:
        """The spec of an optional feature (a front cache, say): None when the config has no such parameter."""
        if cls.PARAMETER not in model_config.get("parameters", {}):
            return None
        return cls.from_model_config(model_config)

    @classmethod
    def from_model_config(cls: type[SpecT], model_config: Mapping[str, Any]) -> SpecT:
        """Read the spec from a model config as Triton hands it to `initialize` (or as the server reports it)."""
        try:
            text = model_config["parameters"][cls.PARAMETER]["string_value"]
        except (KeyError, TypeError) as error:
            raise ParameterError(f"the model config has no parameter {cls.PARAMETER!r} ({cls.__name__})") from error
        return cls.from_json(text)


_FIELD_TYPES: dict[type, dict[str, Any]] = {}


def _field_types(cls: type) -> dict[str, Any]:
    """Each field's resolved annotation, once per spec class."""
    if cls not in _FIELD_TYPES:
        hints = typing.get_type_hints(cls)
        _FIELD_TYPES[cls] = {field.name: hints[field.name] for field in dataclasses.fields(cls)}
    return _FIELD_TYPES[cls]


def _decode(hint: Any, value: object, where: str) -> Any:
    """Check `value` against the annotation `hint` and convert lists to tuples and objects to specs."""
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        (inner,) = [option for option in options if option is not type(None)]
        return _decode(inner, value, where)
    if origin is tuple:
        if not isinstance(value, list):
            raise ParameterError(f"{where}: expected a list, got {type(value).__name__}")
        arguments = typing.get_args(hint)
        if len(arguments) == 2 and arguments[1] is Ellipsis:
            return tuple(_decode(arguments[0], item, f"{where}[{i}]") for i, item in enumerate(value))
        if len(arguments) != len(value):
            raise ParameterError(f"{where}: expected {len(arguments)} items, got {len(value)}")
        return tuple(
            _decode(a, item, f"{where}[{i}]") for i, (a, item) in enumerate(zip(arguments, value, strict=True))
        )
    if isinstance(hint, type) and issubclass(hint, Spec):
        return hint.from_dict(value, where)
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint in (int, str, bool) and isinstance(value, hint) and (hint is bool or not isinstance(value, bool)):
        return value
    raise ParameterError(f"{where}: expected {getattr(hint, '__name__', hint)}, got {value!r}")


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
    ShardGroupParams,
    DenseParams,
    RankingDenseParams,
    MonolithicParams,
    RemoteParams,
)

"""Row dtypes: which shards store their rows in fp32, fp16 or int8 row-wise, and the model a build must agree with.

A table's dtype is chosen per table (`--row-dtype item_id=int8`, or one dtype for every table) or by hotness:
with a profile, the hottest rows that serve a share of the accesses keep the hot dtype and the rest use the cold
one (`RowPrecision`). The planner applies the choice per shard while it cuts (a shard is hot when the accesses of
the ranks before it are under the share), so the memory it minimises is the memory the build writes.

Reduced precision is row-wise, so the model a repository serves is the original with every row read back through
its shard's dtype (`with_rounded_rows`): served outputs are compared with that model.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from generator.errors import UserInputError
from generator.planning.plan import Model, Plan, TablePlan
from generator.triton_models import recgen_rows
from generator.triton_models.recgen_rows import ROW_DTYPES, RowDtype


def check_row_dtype(value: str, where: str = "`--row-dtype`") -> RowDtype:
    """`value` as a row dtype, or a UserInputError naming the allowed ones."""
    for dtype in ROW_DTYPES:
        if value == dtype:
            return dtype
    raise UserInputError(f"{where}: row dtype must be one of {', '.join(ROW_DTYPES)}, got {value!r}")


def parse_row_dtypes(values: Sequence[str], tables: Sequence[str]) -> dict[str, RowDtype]:
    """`--row-dtype` values (`DTYPE` for every table, `TABLE=DTYPE` for one; later ones win) -> dtype per table.

    Tables not named are absent (they keep what the plan says, fp32 without a plan).
    """
    chosen: dict[str, RowDtype] = {}
    for value in values:
        table, separator, dtype = value.rpartition("=")
        if not separator:
            chosen.update(dict.fromkeys(tables, check_row_dtype(value)))
            continue
        if table not in tables:
            raise UserInputError(
                f"`--row-dtype {value}`: the model has no table {table!r}; its tables: {', '.join(tables)}"
            )
        chosen[table] = check_row_dtype(dtype, f"`--row-dtype {value}`")
    return chosen


@dataclass(frozen=True)
class RowPrecision:
    """How the planner picks every shard's row dtype: fixed per table, else by hotness (when `hot_share` < 1).

    `hot_share`: the share of a table's accesses whose rows keep `hot` (the hottest ranks); the rest get `cold`.
    With `hot_share` 1 every shard keeps `hot`.
    """

    tables: Mapping[str, RowDtype] = field(default_factory=dict)
    hot_share: float = 1.0
    hot: RowDtype = "fp32"
    cold: RowDtype = "int8"

    def check_tables(self, tables: Sequence[str]) -> None:
        """Raise UserInputError unless every table named here is one of `tables`."""
        unknown = sorted(set(self.tables) - set(tables))
        if unknown:
            raise UserInputError(f"`--row-dtype` names tables {unknown}; the model's tables: {', '.join(tables)}")

    def __post_init__(self) -> None:
        if not 0.0 <= self.hot_share <= 1.0:
            raise UserInputError(f"`--row-dtype-by-hotness` must be a share in 0..1, got {self.hot_share:g}")
        check_row_dtype(self.hot, "`--hot-row-dtype`")
        check_row_dtype(self.cold, "`--cold-row-dtype`")
        for table, dtype in self.tables.items():
            check_row_dtype(dtype, f"`--row-dtype {table}=...`")

    @property
    def by_hotness(self) -> bool:
        """Whether shards of a table may differ in dtype."""
        return self.hot_share < 1.0 and self.hot != self.cold

    def dtypes(self, table: str, shares_before: np.ndarray) -> np.ndarray:
        """Row dtype (an index into ROW_DTYPES) of a shard starting where `shares_before` of the accesses lie."""
        if table in self.tables:
            return np.full(shares_before.shape, ROW_DTYPES.index(self.tables[table]), dtype=np.int64)
        if not self.by_hotness:
            return np.full(shares_before.shape, ROW_DTYPES.index(self.hot), dtype=np.int64)
        hot = shares_before < self.hot_share - 1e-12
        return np.where(hot, ROW_DTYPES.index(self.hot), ROW_DTYPES.index(self.cold)).astype(np.int64)


def row_precision(
    values: Sequence[str], hot_share: float | None, hot: RowDtype = "fp32", cold: RowDtype = "int8"
) -> RowPrecision:
    """`recgen plan`'s `--row-dtype` values and `--row-dtype-by-hotness` share as a RowPrecision.

    A DTYPE alone (every table) and a hotness share exclude each other; TABLE=DTYPE fixes one table either way.
    """
    everywhere = [value for value in values if "=" not in value]
    tables = {}
    for value in values:
        if "=" in value:
            table, _, dtype = value.rpartition("=")
            tables[table] = check_row_dtype(dtype, f"`--row-dtype {value}`")
    if everywhere and hot_share is not None:
        raise UserInputError(
            f"`--row-dtype {everywhere[-1]}` sets every table, `--row-dtype-by-hotness` chooses by hotness: give "
            "one of them (TABLE=DTYPE may go with either)"
        )
    if everywhere:
        return RowPrecision(tables, 1.0, check_row_dtype(everywhere[-1]), check_row_dtype(everywhere[-1]))
    return RowPrecision(tables, 1.0 if hot_share is None else hot_share, hot, cold)


def bytes_per_row_of(dim: int, dtype_indices: np.ndarray) -> np.ndarray:
    """Bytes per row for every entry of an array of row-dtype indices."""
    sizes = np.array([recgen_rows.bytes_per_row(dim, dtype) for dtype in ROW_DTYPES], dtype=np.int64)
    return sizes[dtype_indices]


def with_row_dtypes(plan: Plan, row_dtypes: Mapping[str, RowDtype]) -> Plan:
    """The same plan with every shard of each named table storing its rows in that dtype."""
    unknown = sorted(set(row_dtypes) - {table.spec.name for table in plan.tables})
    if unknown:
        raise UserInputError(
            f"`--row-dtype` names tables {unknown} the plan does not hold; its tables: "
            f"{', '.join(t.spec.name for t in plan.tables)}"
        )
    tables = tuple(
        dataclasses.replace(
            table,
            shards=tuple(dataclasses.replace(s, row_dtype=row_dtypes[table.spec.name]) for s in table.shards),
        )
        if table.spec.name in row_dtypes
        else table
        for table in plan.tables
    )
    return dataclasses.replace(plan, tables=tables)


def with_row_dtype_values(plan: Plan, values: Sequence[str]) -> Plan:
    """The plan with `--row-dtype` values applied (`parse_row_dtypes` over the plan's tables)."""
    return with_row_dtypes(plan, parse_row_dtypes(values, [table.spec.name for table in plan.tables]))


def has_reduced_rows(plan: Plan) -> bool:
    """Whether any shard stores its rows in less than fp32."""
    return any(shard.row_dtype != "fp32" for shard in plan.shards)


def dtype_summary(plan: Plan) -> str:
    """'int8 everywhere', or 'item_id: int8; user_id: fp32 x1, int8 x3': how a plan stores its rows."""
    every = {shard.row_dtype for shard in plan.shards}
    if len(every) == 1:
        return f"{every.pop()} everywhere"
    parts = []
    for table in plan.tables:
        dtypes = [shard.row_dtype for shard in table.shards]
        kinds = sorted(set(dtypes), key=dtypes.index)
        parts.append(
            f"{table.spec.name}: {kinds[0]}"
            if len(kinds) == 1
            else f"{table.spec.name}: " + ", ".join(f"{kind} x{dtypes.count(kind)}" for kind in kinds)
        )
    return "; ".join(parts)


def table_weight(model: Model, table: str) -> np.ndarray:
    """A table's FP32 rows as the model serves them (an imported model's with per-row weights folded in)."""
    return np.asarray(model.rows_of(table).detach().cpu().numpy(), dtype=np.float32)


def rounded_rank_rows(model: Model, table: TablePlan, rank_start: int, rank_end: int) -> np.ndarray:
    """The FP32 rows at hotness ranks [rank_start, rank_end), each read back through its shard's row dtype."""
    weight = table_weight(model, table.spec.name)
    original = table.original_rows()
    pieces = []
    for shard in table.shards:
        first, last = max(rank_start, shard.row_start), min(rank_end, shard.row_end)
        if first < last:
            pieces.append(recgen_rows.round_trip(weight[original[first:last]], shard.row_dtype))
    return np.concatenate(pieces) if pieces else np.zeros((0, table.spec.dim), dtype=np.float32)


def rounded_table_rows(model: Model, table: TablePlan) -> np.ndarray:
    """A whole table's FP32 rows in original row order, each read back through its shard's row dtype."""
    rounded = np.empty((table.spec.num_rows, table.spec.dim), dtype=np.float32)
    rounded[table.original_rows()] = rounded_rank_rows(model, table, 0, table.spec.num_rows)
    return rounded


def with_rounded_rows(model: Model, plan: Plan) -> Model:
    """The model a repository built from `plan` serves: every row read back through its shard's dtype.

    The model itself is untouched; with an all-fp32 plan it is returned as is.
    """
    if not has_reduced_rows(plan):
        return model
    rows = {table.spec.name: torch.from_numpy(rounded_table_rows(model, table)) for table in plan.tables}
    return model.with_rows(rows)

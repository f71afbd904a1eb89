"""Access profiles: how often every row of every table is read, from synthetic Zipf traffic or recorded traces.

A profile keeps, per table, only the rows that were touched and their access counts (hottest first), plus the
number of samples seen, so the mean pooling length (ids per sample) is known. It is saved as one .npz holding
plain arrays and a JSON header (no pickles).
"""

from __future__ import annotations

import gzip
import json
import math
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, cast

import numpy as np

from generator.errors import UserInputError
from generator.model.dlrm import PADDING_ID, TableSpec

PROFILE_FORMAT = "recgen.profile"
PROFILE_VERSION = 1


@dataclass(frozen=True)
class TableAccess:
    """Access counts of one table: `rows[i]` was read `counts[i]` times; hottest first, untouched rows omitted."""

    name: str
    num_rows: int
    rows: np.ndarray
    counts: np.ndarray
    samples: int

    def __post_init__(self) -> None:
        if self.rows.shape != self.counts.shape or self.rows.ndim != 1:
            raise UserInputError(f"table {self.name!r}: `rows` and `counts` must be 1-D arrays of the same length")
        if self.rows.size and (int(self.rows.min()) < 0 or int(self.rows.max()) >= self.num_rows):
            raise UserInputError(f"table {self.name!r}: profiled rows must lie in 0..{self.num_rows - 1}")
        if self.samples < 0:
            raise UserInputError(f"table {self.name!r}: `samples` must be >= 0")

    @property
    def lookups(self) -> int:
        """Total accesses recorded."""
        return int(self.counts.sum())

    @property
    def touched_rows(self) -> int:
        """Rows read at least once."""
        return int(self.rows.size)

    @property
    def mean_ids_per_sample(self) -> float:
        """Average pooling length: lookups per sample."""
        return self.lookups / self.samples if self.samples else 0.0

    def ranked_counts(self) -> np.ndarray:
        """Counts in hotness order for the touched rows (the rest of the table has count 0)."""
        return self.counts

    def share_of_hottest(self, fraction: float) -> float:
        """Share of all accesses that hit the hottest `fraction` of the table's rows."""
        if not self.lookups:
            return 0.0
        top = max(1, math.ceil(fraction * self.num_rows))
        return float(self.counts[:top].sum()) / self.lookups

    def row_order(self) -> np.ndarray:
        """Every row id in hotness order: touched rows by count (ties by id), then untouched rows by id."""
        dtype = np.int32 if self.num_rows < 2**31 else np.int64
        untouched = np.ones(self.num_rows, dtype=bool)
        untouched[self.rows] = False
        return np.concatenate([self.rows.astype(dtype), np.flatnonzero(untouched).astype(dtype)])


def summed(profiles: Sequence[AccessProfile], source: str) -> AccessProfile:
    """Several profiles of the same tables as one: every row's counts and every table's samples added up."""
    first = profiles[0]
    names = [(t.name, t.num_rows) for t in first.tables]
    for other in profiles[1:]:
        if [(t.name, t.num_rows) for t in other.tables] != names:
            raise UserInputError(f"profiles of other tables cannot be summed: {other.source!r} vs {first.source!r}")
    tables = []
    for index, (name, num_rows) in enumerate(names):
        parts = [profile.tables[index] for profile in profiles]
        rows = np.concatenate([part.rows for part in parts]).astype(np.int64)
        counts = np.concatenate([part.counts for part in parts]).astype(np.int64)
        touched, position = np.unique(rows, return_inverse=True)
        totals = np.bincount(position, weights=counts, minlength=touched.size).astype(np.int64)
        order = np.lexsort((touched, -totals))  # hottest first, ties by row id
        tables.append(TableAccess(name, num_rows, touched[order], totals[order], sum(p.samples for p in parts)))
    return AccessProfile(tuple(tables), source)


def table_access_from_ids(name: str, num_rows: int, ids: np.ndarray, samples: int) -> TableAccess:
    """Count the non-padding ids of one table (any shape); raises on ids outside the table."""
    flat = np.asarray(ids).reshape(-1)
    flat = flat[flat != PADDING_ID]
    if flat.size and (int(flat.min()) < 0 or int(flat.max()) >= num_rows):
        bad = int(flat[(flat < 0) | (flat >= num_rows)][0])
        raise UserInputError(f"table {name!r}: id {bad} is outside 0..{num_rows - 1} (the table's rows)")
    rows, counts = np.unique(flat, return_counts=True)
    order = np.lexsort((rows, -counts))  # hottest first, ties by row id
    return TableAccess(name, num_rows, rows[order].astype(np.int64), counts[order].astype(np.int64), samples)


@dataclass(frozen=True)
class AccessProfile:
    """Per-table access counts for a model's tables."""

    tables: tuple[TableAccess, ...]
    source: str

    def table(self, name: str) -> TableAccess:
        """The profile of one table."""
        for table in self.tables:
            if table.name == name:
                return table
        raise UserInputError(f"the profile has no table {name!r}; it has {[t.name for t in self.tables]}")

    def save(self, path: str | Path) -> Path:
        """Write as .npz: arrays per table plus a JSON header."""
        path = Path(path)
        header = {
            "format": PROFILE_FORMAT,
            "version": PROFILE_VERSION,
            "source": self.source,
            "tables": [{"name": t.name, "num_rows": t.num_rows, "samples": t.samples} for t in self.tables],
        }
        arrays: dict[str, np.ndarray] = {"header": np.array(json.dumps(header))}
        for index, table in enumerate(self.tables):
            arrays[f"rows_{index}"] = table.rows
            arrays[f"counts_{index}"] = table.counts
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as file:
            np.savez_compressed(file, **arrays)
        return path

    @classmethod
    def load(cls, path: str | Path) -> AccessProfile:
        """Read a profile written by `save`."""
        path = Path(path)
        if not path.is_file():
            raise UserInputError(f"profile `{path}` does not exist")
        try:
            with np.load(path, allow_pickle=False) as data:
                header = json.loads(str(data["header"]))
                if header.get("format") != PROFILE_FORMAT or header.get("version") != PROFILE_VERSION:
                    raise UserInputError(f"`{path}` is not a recgen profile (version {PROFILE_VERSION})")
                tables = tuple(
                    TableAccess(t["name"], int(t["num_rows"]), data[f"rows_{i}"], data[f"counts_{i}"], t["samples"])
                    for i, t in enumerate(header["tables"])
                )
        except (OSError, ValueError, KeyError) as error:
            raise UserInputError(f"profile `{path}` cannot be read: {error}") from error
        return cls(tables, header["source"])

    def __str__(self) -> str:
        lines = [
            f"access profile ({self.source}): {len(self.tables)} tables",
            f"  {'table':<18} {'rows':>11} {'touched':>11} {'samples':>9} {'ids/sample':>10} "
            f"{'top 1%':>7} {'top 10%':>8}",
        ]
        for t in self.tables:
            lines.append(
                f"  {t.name:<18} {t.num_rows:>11,} {t.touched_rows:>11,} {t.samples:>9,} "
                f"{t.mean_ids_per_sample:>10.2f} {t.share_of_hottest(0.01):>7.1%} {t.share_of_hottest(0.10):>8.1%}"
            )
        return "\n".join(lines)


@dataclass(frozen=True)
class TableShape:
    """What a synthetic profile needs to know about a table."""

    name: str
    num_rows: int
    max_ids_per_sample: int = 1


def _zipf_ranks(num_rows: int, alpha: float, size: int, rng: np.random.Generator) -> np.ndarray:
    """`size` draws of ranks 0..num_rows-1 with P(rank k) proportional to (k + 1) ** -alpha."""
    weights = np.arange(1, num_rows + 1, dtype=np.float64) ** -alpha
    cdf = np.cumsum(weights)
    return np.searchsorted(cdf, rng.random(size) * cdf[-1], side="right").clip(max=num_rows - 1)


def _scatter(ranks: np.ndarray, num_rows: int, rng: np.random.Generator) -> np.ndarray:
    """Map ranks to row ids with an affine bijection drawn from `rng`, so hot rows are not the low ids."""
    if num_rows == 1:
        return ranks
    while True:
        multiplier = int(rng.integers(1, num_rows))
        if math.gcd(multiplier, num_rows) == 1:
            break
    offset = int(rng.integers(0, num_rows))
    return (ranks.astype(np.int64) * multiplier + offset) % num_rows


def zipf_profile(
    tables: Sequence[TableShape],
    alpha: float | Mapping[str, float],
    *,
    samples: int = 100_000,
    seed: int = 0,
) -> AccessProfile:
    """Synthetic traffic: each sample reads 1..max_ids_per_sample ids (uniform) per table, Zipf(alpha) over rows.

    Which rows are hot is fixed by the table's name and size (not by `seed`), so profiles with other seeds are
    fresh samples of the same traffic: a plan made from one can be tested with another.
    """
    if samples < 1:
        raise UserInputError(f"`samples` must be >= 1, got {samples}")
    alphas = {t.name: alpha for t in tables} if not isinstance(alpha, Mapping) else dict(alpha)
    unknown = set(alphas) - {t.name for t in tables}
    if unknown:
        raise UserInputError(f"`--zipf` names unknown tables {sorted(unknown)}")
    rng = np.random.default_rng(seed)
    accesses = []
    for table in tables:
        table_alpha = alphas.get(table.name)
        if table_alpha is None:
            raise UserInputError(f"no Zipf alpha for table {table.name!r}; give a default too (e.g. --zipf 1.05)")
        if not 0 <= table_alpha <= 5:
            raise UserInputError(f"table {table.name!r}: Zipf alpha must be in 0..5, got {table_alpha!r}")
        lengths = rng.integers(1, table.max_ids_per_sample + 1, size=samples)
        ranks = _zipf_ranks(table.num_rows, float(table_alpha), int(lengths.sum()), rng)
        world = np.random.default_rng(zlib.crc32(f"{table.name}/{table.num_rows}".encode()))
        accesses.append(
            table_access_from_ids(table.name, table.num_rows, _scatter(ranks, table.num_rows, world), samples)
        )
    description = alpha if not isinstance(alpha, Mapping) else ", ".join(f"{k}={v}" for k, v in alpha.items())
    return AccessProfile(tuple(accesses), f"zipf alpha {description}, {samples:,} samples, seed {seed}")


def profile_from_npz(path: str | Path, tables: Sequence[TableShape]) -> AccessProfile:
    """A trace as .npz: one array per table name; 2-D arrays are [samples, width] with -1 padding, 1-D one id each."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
    except (OSError, ValueError) as error:
        raise UserInputError(f"trace `{path}` cannot be read as .npz: {error}") from error
    accesses = []
    for table in tables:
        if table.name not in arrays:
            raise UserInputError(f"trace `{path}` has no array for table {table.name!r}; it has {sorted(arrays)}")
        ids = arrays[table.name]
        if ids.ndim not in (1, 2) or not np.issubdtype(ids.dtype, np.integer):
            raise UserInputError(f"trace `{path}`: table {table.name!r} must be a 1-D or 2-D integer array")
        accesses.append(table_access_from_ids(table.name, table.num_rows, ids, int(ids.shape[0])))
    return AccessProfile(tuple(accesses), f"trace {path.name}")


def _load_torch_trace(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    import torch

    def load(source: Path | IO[bytes]) -> object:
        return torch.load(source, map_location="cpu", weights_only=True)

    if not path.is_file():
        raise UserInputError(f"trace `{path}` does not exist")
    try:
        try:
            with gzip.open(path) as file:
                payload = load(cast(IO[bytes], file))
        except (gzip.BadGzipFile, EOFError):  # the traces come both gzipped and plain
            payload = load(path)
    except Exception as error:  # torch raises many types for a bad file
        raise UserInputError(f"trace `{path}` cannot be read: {error}") from error
    if isinstance(payload, Mapping):
        parts = [payload.get(key) for key in ("indices", "offsets", "lengths")]
    elif isinstance(payload, (tuple, list)) and len(payload) == 3:
        parts = list(payload)
    else:
        raise UserInputError(f"trace `{path}` must hold (indices, offsets, lengths) as a tuple or a dict")
    if any(part is None for part in parts):
        raise UserInputError(f"trace `{path}` must hold `indices`, `offsets` and `lengths`")
    indices, offsets, lengths = (np.asarray(part) for part in parts)
    return indices.reshape(-1), offsets.reshape(-1), lengths


def profile_from_meta_trace(path: str | Path, tables: Sequence[TableShape]) -> AccessProfile:
    """Meta's embedding-lookup trace (dlrm_datasets): torch file of `indices`, `offsets`, `lengths` [T, B].

    The first len(tables) trace tables map to `tables` in order; a sample's ids for table t are
    indices[offsets[t * B + b] : offsets[t * B + b + 1]].
    """
    path = Path(path)
    indices, offsets, lengths = _load_torch_trace(path)
    if lengths.ndim != 2:
        raise UserInputError(f"trace `{path}`: `lengths` must be [tables, batch], got shape {lengths.shape}")
    num_tables, batch = lengths.shape
    if num_tables < len(tables):
        raise UserInputError(f"trace `{path}` has {num_tables} tables; the model has {len(tables)}")
    if offsets.size != num_tables * batch + 1:
        raise UserInputError(
            f"trace `{path}`: `offsets` must have tables * batch + 1 = {num_tables * batch + 1} "
            f"entries, got {offsets.size}"
        )
    accesses = []
    for index, table in enumerate(tables):
        start, end = int(offsets[index * batch]), int(offsets[(index + 1) * batch])
        accesses.append(table_access_from_ids(table.name, table.num_rows, indices[start:end], batch))
    return AccessProfile(tuple(accesses), f"meta trace {path.name} ({batch} samples)")


def table_shapes(tables: Sequence[TableSpec]) -> list[TableShape]:
    """What a synthetic profile needs of a model's tables."""
    return [TableShape(t.name, t.num_rows, t.max_ids_per_sample) for t in tables]


def parse_table_shape(text: str) -> TableShape:
    """`NAME:ROWS[:IDS_PER_SAMPLE]` (the `--table` option) as a TableShape."""
    parts = text.split(":")
    try:
        if len(parts) not in (2, 3):
            raise ValueError(text)
        return TableShape(parts[0], int(parts[1]), int(parts[2]) if len(parts) > 2 else 1)
    except ValueError as error:
        raise UserInputError(f"`--table` must be NAME:ROWS[:IDS_PER_SAMPLE], got {text!r}") from error


def parse_zipf(options: Sequence[str], shapes: Sequence[TableShape]) -> float | dict[str, float]:
    """`--zipf 1.05` for all tables; `--zipf user_id=1.2` for one (a bare value is the default for the rest)."""
    default: float | None = None
    per_table: dict[str, float] = {}
    for option in options:
        name, _, value = option.rpartition("=")
        try:
            alpha = float(value)
        except ValueError as error:
            raise UserInputError(f"`--zipf` must be ALPHA or TABLE=ALPHA, got {option!r}") from error
        if name:
            per_table[name] = alpha
        else:
            default = alpha
    if not per_table and default is not None:
        return default
    if default is not None:
        return {shape.name: per_table.get(shape.name, default) for shape in shapes} | per_table
    return per_table


def make_profile(
    shapes: Sequence[TableShape],
    *,
    zipf: Sequence[str] = (),
    trace: Path | None = None,
    meta_trace: Path | None = None,
    samples: int = 100_000,
    seed: int = 0,
) -> AccessProfile:
    """`recgen profile`: from exactly one source, Zipf traffic (`--zipf` options), an .npz trace or a Meta trace."""
    if sum([bool(zipf), trace is not None, meta_trace is not None]) != 1:
        raise UserInputError("give exactly one of --zipf, --trace or --meta-trace")
    if zipf:
        return zipf_profile(shapes, parse_zipf(zipf, shapes), samples=samples, seed=seed)
    if trace is not None:
        return profile_from_npz(trace, shapes)
    assert meta_trace is not None
    return profile_from_meta_trace(meta_trace, shapes)

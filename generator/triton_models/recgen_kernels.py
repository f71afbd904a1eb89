"""Numpy kernels of the generated Python-backend models: routing, pooling, the dense tower.

Copied next to every generated model.py, so it must depend on numpy only (the NGC container's Python backend
has no recgen installed) and run on Python 3.10.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

PADDING_ID = -1
#: Dense-tower weights file next to the model.py of dense and monolithic models.
DENSE_WEIGHTS_FILE = "dense.npz"


def first_bad_id(ids: np.ndarray, num_rows: int) -> int | None:
    """The first id outside [-1, num_rows), or None when every id is valid."""
    if ids.size == 0:
        return None
    bad = (ids < PADDING_ID) | (ids >= num_rows)
    if not bad.any():
        return None
    return int(ids[bad][0])


def bad_id_message(input_name: str, bad_id: int, num_rows: int, table: str) -> str:
    """The request error for an id outside a table (shared by the router and the monolithic model)."""
    return (
        f"input '{input_name}' holds id {bad_id}, outside the allowed range -1 (padding) to {num_rows - 1} "
        f"of table '{table}'"
    )


def ranks_of(ids: np.ndarray, rank_of_row: np.ndarray | None) -> np.ndarray:
    """Hotness ranks of valid ids (-1 stays -1); `rank_of_row` None means ranks equal ids."""
    if rank_of_row is None:
        return ids
    present = ids >= 0
    return np.where(present, rank_of_row[np.where(present, ids, 0)], PADDING_ID)


@dataclass(frozen=True)
class RouteLayout:
    """Where every id of several tables lands in one packed [B, width] row-id array, compiled once.

    The input is the tables' id blocks side by side ([B, C] ranks); every table's rank space is shifted by the
    rows of the tables before it, so one searchsorted over all shard starts finds each id's shard. Each shard has
    a block of columns in the packed array (shards served together share their table's block) and a first row
    (where its rows start in the stack of rows it is served from).
    """

    column_base: np.ndarray  # [C] first global rank of the column's table
    column_position: np.ndarray  # [C] index of the column within its table's block
    shard_starts: np.ndarray  # [S] first global rank of every shard, ascending
    shard_columns: np.ndarray  # [S] packed column where the shard's block starts
    shard_shift: np.ndarray  # [S] the shard's first row minus its first global rank
    width: int

    @classmethod
    def build(
        cls, tables: Sequence[tuple[int, Sequence[int], Sequence[int], Sequence[int]]], width: int
    ) -> RouteLayout:
        """From (ids per sample, boundaries in rank space, first column per shard, first row per shard) per table."""
        bases, positions, starts, columns, shifts = [], [], [], [], []
        base = 0
        for ids_per_sample, boundaries, shard_columns, shard_first_rows in tables:
            bases.append(np.full(ids_per_sample, base, dtype=np.int64))
            positions.append(np.arange(ids_per_sample, dtype=np.int64))
            starts.extend(base + int(start) for start in boundaries[:-1])
            columns.extend(int(column) for column in shard_columns)
            shifts.extend(
                int(row) - base - int(start) for row, start in zip(shard_first_rows, boundaries[:-1], strict=True)
            )
            base += int(boundaries[-1])
        empty = np.zeros(0, np.int64)
        return cls(
            np.concatenate(bases) if bases else empty,
            np.concatenate(positions) if positions else empty,
            np.asarray(starts, dtype=np.int64),
            np.asarray(columns, dtype=np.int64),
            np.asarray(shifts, dtype=np.int64),
            width,
        )


def route_packed(ranks: np.ndarray, layout: RouteLayout) -> np.ndarray:
    """Ranks [B, C] (-1 = padding) -> packed row ids [B, width] int32, -1 where no id sits.

    An id at position j of its table's block, in shard s, lands at column shard_columns[s] + j, as its rank within
    the shard plus the shard's first row. Work is proportional to the number of real ids, not to tables or shards.
    """
    batch = ranks.shape[0]
    packed = np.full((batch, layout.width), PADDING_ID, dtype=np.int32)
    present = np.flatnonzero(ranks.reshape(-1) >= 0)
    if present.size == 0:
        return packed
    columns = ranks.shape[1]
    column = present % columns
    global_rank = ranks.reshape(-1)[present] + layout.column_base[column]
    # Empty shards share their start with the next shard; side="right" picks the last, non-empty one.
    shard = np.searchsorted(layout.shard_starts, global_rank, side="right") - 1
    destination = (present // columns) * layout.width + layout.shard_columns[shard] + layout.column_position[column]
    packed.reshape(-1)[destination] = global_rank + layout.shard_shift[shard]
    return packed


def with_padding_row(rows: np.ndarray) -> np.ndarray:
    """Rows plus one trailing zero row that padding ids (-1) are pointed at, so pooling needs no mask."""
    padded = np.zeros((rows.shape[0] + 1, rows.shape[1]), dtype=rows.dtype)
    padded[:-1] = rows
    return padded


def pool(padded_rows: np.ndarray, local_ids: np.ndarray) -> np.ndarray:
    """Sum of rows[local_ids] over each sample [B, L] -> [B, dim], skipping -1 (see `with_padding_row`).

    One contiguous gather per id column: far faster than gathering [B, L, dim] at once.
    """
    padding = padded_rows.shape[0] - 1
    columns = np.ascontiguousarray(np.where(local_ids < 0, padding, local_ids).T)
    if columns.shape[0] == 0:
        return np.zeros((local_ids.shape[0], padded_rows.shape[1]), dtype=padded_rows.dtype)
    pooled = np.take(padded_rows, columns[0], axis=0)
    for column in columns[1:]:
        pooled += np.take(padded_rows, column, axis=0)
    return pooled


def _linear(x: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    return x @ weight.T + bias


def mlp(x: np.ndarray, layers: Sequence[tuple[np.ndarray, np.ndarray]], *, relu_last: bool) -> np.ndarray:
    """Linear layers with ReLU between them (and after the last one when `relu_last`)."""
    for index, (weight, bias) in enumerate(layers):
        x = _linear(x, weight, bias)
        if relu_last or index < len(layers) - 1:
            x = np.maximum(x, 0, out=x)
    return x


def mlp_layers(weights: Mapping[str, np.ndarray], prefix: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """Layers stored as `{prefix}.{i}.weight` / `{prefix}.{i}.bias`, in order of i."""
    indices = sorted({int(key.split(".")[1]) for key in weights if key.startswith(prefix + ".")})
    return [(weights[f"{prefix}.{i}.weight"], weights[f"{prefix}.{i}.bias"]) for i in indices]


def load_dense_tower(version_dir: str) -> tuple[list, list]:
    """Bottom and top MLP layers from the weights file in a version directory."""
    with np.load(f"{version_dir}/{DENSE_WEIGHTS_FILE}") as data:
        weights = dict(data)
    return mlp_layers(weights, "bottom"), mlp_layers(weights, "top")


@functools.lru_cache(maxsize=8)
def _upper_pairs(count: int) -> tuple[np.ndarray, np.ndarray]:
    """Strict upper-triangle index pairs of a count x count matrix (built once, not per request)."""
    return np.triu_indices(count, k=1)


def dense_tower(
    dense_features: np.ndarray,
    pooled: Sequence[np.ndarray],
    bottom: Sequence[tuple[np.ndarray, np.ndarray]],
    top: Sequence[tuple[np.ndarray, np.ndarray]],
) -> np.ndarray:
    """Bottom MLP, pairwise dot interaction (strict upper triangle), top MLP, sigmoid: [B, 1]."""
    bottom_out = mlp(dense_features, bottom, relu_last=True)
    vectors = np.stack([bottom_out, *pooled], axis=1)
    gram = vectors @ vectors.transpose(0, 2, 1)
    rows, cols = _upper_pairs(vectors.shape[1])
    logits = mlp(np.concatenate([bottom_out, gram[:, rows, cols]], axis=1), top, relu_last=False)
    return (1.0 / (1.0 + np.exp(-logits))).astype(np.float32, copy=False)


def stack_requests(arrays: Sequence[np.ndarray]) -> tuple[np.ndarray, list[int]]:
    """Concatenate the same input of several batched requests; returns the stack and the split points."""
    split_points = np.cumsum([array.shape[0] for array in arrays])[:-1].tolist()
    stacked = arrays[0] if len(arrays) == 1 else np.concatenate(arrays, axis=0)
    return stacked, split_points


def unstack_responses(array: np.ndarray, split_points: Sequence[int]) -> list[np.ndarray]:
    """Undo `stack_requests` on an output: one contiguous array per request."""
    if not split_points:
        return [array]
    return [np.ascontiguousarray(part) for part in np.split(array, split_points, axis=0)]

"""Numpy kernels of the generated Python-backend models: routing, pooling, the dense tower.

Copied next to every generated model.py, so it must depend on numpy only (the NGC container's Python backend
has no recgen installed) and run on Python 3.10.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

PADDING_ID = -1
#: Below this many samples, checking which samples have ids costs more than gathering the padding row.
SPARSE_ROWS_MIN_BATCH = 16
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
        bases: list[np.ndarray] = []
        positions: list[np.ndarray] = []
        starts: list[int] = []
        columns: list[int] = []
        shifts: list[int] = []
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
    packed = np.full((ranks.shape[0], layout.width), PADDING_ID, dtype=np.int32)
    _, destination, rows = _destinations(ranks, layout)
    packed.reshape(-1)[destination] = rows
    return packed


def route_packed_weighted(ranks: np.ndarray, weights: np.ndarray, layout: RouteLayout) -> tuple[np.ndarray, np.ndarray]:
    """`route_packed`, and every id's weight ([B, C] FP32, as the ranks) moved to the same place (0 where no id)."""
    packed = np.full((ranks.shape[0], layout.width), PADDING_ID, dtype=np.int32)
    packed_weights = np.zeros((ranks.shape[0], layout.width), dtype=np.float32)
    present, destination, rows = _destinations(ranks, layout)
    packed.reshape(-1)[destination] = rows
    packed_weights.reshape(-1)[destination] = weights.reshape(-1)[present]
    return packed, packed_weights


def _destinations(ranks: np.ndarray, layout: RouteLayout) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(flat positions of the real ids in `ranks`, their flat positions in the packed array, their stacked rows)."""
    present = np.flatnonzero(ranks.reshape(-1) >= 0)
    if present.size == 0:
        return present, present, present
    columns = ranks.shape[1]
    column = present % columns
    global_rank = ranks.reshape(-1)[present] + layout.column_base[column]
    # Empty shards share their start with the next shard; side="right" picks the last, non-empty one.
    shard = np.searchsorted(layout.shard_starts, global_rank, side="right") - 1
    destination = (present // columns) * layout.width + layout.shard_columns[shard] + layout.column_position[column]
    return present, destination, global_rank + layout.shard_shift[shard]


def with_padding_row(rows: np.ndarray) -> np.ndarray:
    """Rows plus one trailing zero row that padding ids (-1) are pointed at, so pooling needs no mask."""
    padded = np.zeros((rows.shape[0] + 1, rows.shape[1]), dtype=rows.dtype)
    padded[:-1] = rows
    return padded


def pool(padded_rows: np.ndarray, local_ids: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Sum of rows[local_ids] (times `weights` [B, L], if given) over each sample [B, L] -> [B, dim], skipping -1.

    One contiguous gather per id column: far faster than gathering [B, L, dim] at once. When most samples have no
    id here (the user row of a ranking batch, a cold shard group), only the samples with ids are gathered.
    """
    batch = local_ids.shape[0]
    if batch >= SPARSE_ROWS_MIN_BATCH:
        with_ids = np.flatnonzero((local_ids >= 0).any(axis=1))
        if with_ids.size * 2 < batch:
            pooled = np.zeros((batch, padded_rows.shape[1]), dtype=padded_rows.dtype)
            if with_ids.size:
                some = None if weights is None else weights[with_ids]
                pooled[with_ids] = _pool_columns(padded_rows, local_ids[with_ids], some)
            return pooled
    return _pool_columns(padded_rows, local_ids, weights)


def _pool_columns(padded_rows: np.ndarray, local_ids: np.ndarray, weights: np.ndarray | None) -> np.ndarray:
    padding = padded_rows.shape[0] - 1
    columns = np.ascontiguousarray(np.where(local_ids < 0, padding, local_ids).T)
    if columns.shape[0] == 0:
        return np.zeros((local_ids.shape[0], padded_rows.shape[1]), dtype=padded_rows.dtype)
    if weights is not None:  # the padding row is zero, so a padding id's weight does not matter
        scales = np.ascontiguousarray(weights.T, dtype=padded_rows.dtype)[:, :, np.newaxis]
        pooled = np.take(padded_rows, columns[0], axis=0) * scales[0]
        for column, scale in zip(columns[1:], scales[1:], strict=True):
            pooled += np.take(padded_rows, column, axis=0) * scale
        return pooled
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


def dot_interaction(bottom_out: np.ndarray, pooled: Sequence[np.ndarray]) -> np.ndarray:
    """[bottom output, the strict upper triangle of the pairwise dot products of it and the pools] per sample."""
    vectors = np.stack([bottom_out, *pooled], axis=1)
    gram = vectors @ vectors.transpose(0, 2, 1)
    rows, cols = _upper_pairs(vectors.shape[1])
    return np.concatenate([bottom_out, gram[:, rows, cols]], axis=1)


Interaction = Callable[[np.ndarray, Sequence[np.ndarray]], np.ndarray]


def dense_tower(
    dense_features: np.ndarray,
    pooled: Sequence[np.ndarray],
    bottom: Sequence[tuple[np.ndarray, np.ndarray]],
    top: Sequence[tuple[np.ndarray, np.ndarray]],
    interaction: Interaction = dot_interaction,
) -> np.ndarray:
    """Bottom MLP, pairwise dot interaction (strict upper triangle), top MLP, sigmoid: [B, 1]."""
    bottom_out = mlp(dense_features, bottom, relu_last=True)
    logits = mlp(interaction(bottom_out, pooled), top, relu_last=False)
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


@dataclass(frozen=True)
class RankingTower:
    """The dense tower of a ranking request (one user, N candidates), split where user and item inputs first mix.

    Everything that depends on user-side inputs only is computed once per request: the bottom MLP's first layer on
    the user's dense features, the whole bottom MLP when no dense feature is item-side, the dot products between
    user-only vectors, and their share of the top MLP's first layer. Item-dependent terms are computed per candidate
    and the user terms broadcast onto them; the sums are the flattened tower's sums, in another order.
    """

    user_dense: np.ndarray  # dense-feature positions of each side
    item_dense: np.ndarray
    bottom_first: tuple[np.ndarray, np.ndarray, np.ndarray]  # (weight over user features, over item features, bias)
    bottom_rest: list[tuple[np.ndarray, np.ndarray]]
    user_vectors: np.ndarray  # interaction-vector positions (0 = bottom output, 1 + t = table t) that are user-only
    item_vectors: np.ndarray
    user_pairs: tuple[np.ndarray, np.ndarray]  # (a, b) indices into user_vectors of the user-only dot products
    mixed_pairs: tuple[np.ndarray, np.ndarray]  # (item index, user index) of the user-item dot products
    item_pairs: tuple[np.ndarray, np.ndarray]  # (a, b) indices into item_vectors of the item-item dot products
    top_first: tuple[np.ndarray, np.ndarray, np.ndarray]  # (weight over user columns, over item columns, bias)
    top_rest: list[tuple[np.ndarray, np.ndarray]]

    @classmethod
    def build(
        cls,
        bottom: Sequence[tuple[np.ndarray, np.ndarray]],
        top: Sequence[tuple[np.ndarray, np.ndarray]],
        dense_sides: Sequence[str],
        table_sides: Sequence[str],
    ) -> RankingTower:
        """Split the flattened tower's weights by the side of every dense feature and table."""
        user_dense = np.array([i for i, side in enumerate(dense_sides) if side == "user"], dtype=np.int64)
        item_dense = np.array([i for i, side in enumerate(dense_sides) if side == "item"], dtype=np.int64)
        (weight, bias), *bottom_rest = bottom
        dim = bottom[-1][0].shape[0]
        bottom_is_user = item_dense.size == 0
        vector_sides = ["user" if bottom_is_user else "item", *table_sides]
        user_vectors = np.array([i for i, side in enumerate(vector_sides) if side == "user"], dtype=np.int64)
        item_vectors = np.array([i for i, side in enumerate(vector_sides) if side == "item"], dtype=np.int64)
        position = {int(v): k for k, v in enumerate(user_vectors)} | {int(v): k for k, v in enumerate(item_vectors)}
        # z = [bottom output (dim columns), one column per upper-triangle pair in flattened order]
        user_columns = list(range(dim)) if bottom_is_user else []
        item_columns = [] if bottom_is_user else list(range(dim))
        user_pairs: list[tuple[int, int]] = []
        mixed_pairs: list[tuple[int, int]] = []
        item_pairs: list[tuple[int, int]] = []
        mixed_columns: list[int] = []
        item_pair_columns: list[int] = []
        rows, cols = _upper_pairs(len(vector_sides))
        for column, (a, b) in enumerate(zip(rows.tolist(), cols.tolist(), strict=True), start=dim):
            sides = (vector_sides[a], vector_sides[b])
            if sides == ("user", "user"):
                user_pairs.append((position[a], position[b]))
                user_columns.append(column)
            elif sides == ("item", "item"):
                item_pairs.append((position[a], position[b]))
                item_pair_columns.append(column)
            else:
                item, user = (a, b) if sides[0] == "item" else (b, a)
                mixed_pairs.append((position[item], position[user]))
                mixed_columns.append(column)
        item_columns += mixed_columns + item_pair_columns
        (top_weight, top_bias), *top_rest = top

        def index_pair(pairs: list[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
            array = np.array(pairs, dtype=np.int64).reshape(-1, 2)
            return array[:, 0], array[:, 1]

        return cls(
            user_dense,
            item_dense,
            (weight[:, user_dense], weight[:, item_dense], bias),
            list(bottom_rest),
            user_vectors,
            item_vectors,
            index_pair(user_pairs),
            index_pair(mixed_pairs),
            index_pair(item_pairs),
            (top_weight[:, user_columns], top_weight[:, item_columns], top_bias),
            list(top_rest),
        )


def ranking_scores(
    tower: RankingTower,
    user_dense: np.ndarray,
    item_dense: np.ndarray,
    user_pooled: Sequence[np.ndarray],
    item_pooled: Sequence[np.ndarray],
    num_candidates: int,
) -> np.ndarray:
    """Scores [N, 1] of one ranking request.

    `user_dense` [1, Du] and `item_dense` [N, Di] hold the dense features of each side (model order within a side);
    `user_pooled` ([1, dim] each) and `item_pooled` ([N, dim] each) the pooled tables of each side, in model order.
    """
    weight_user, weight_item, bias = tower.bottom_first
    hidden = user_dense @ weight_user.T + bias  # once per request
    if tower.item_dense.size:
        hidden = hidden + item_dense @ weight_item.T  # broadcast: the first operation that mixes the sides
    bottom_out = np.maximum(hidden, 0)
    if tower.bottom_rest:
        bottom_out = mlp(bottom_out, tower.bottom_rest, relu_last=True)
    user_vectors = ([bottom_out] if tower.item_dense.size == 0 else []) + list(user_pooled)
    item_vectors = ([bottom_out] if tower.item_dense.size else []) + list(item_pooled)
    dim = bottom_out.shape[1]
    users = np.stack(user_vectors, axis=1) if user_vectors else np.zeros((1, 0, dim), bottom_out.dtype)  # [1, nu, d]
    items = np.stack(item_vectors, axis=1) if item_vectors else np.zeros((1, 0, dim), bottom_out.dtype)  # [N, ni, d]
    user_columns = [bottom_out] if tower.item_dense.size == 0 else []
    item_columns = [] if tower.item_dense.size == 0 else [bottom_out]
    if tower.user_pairs[0].size:
        gram = users @ users.transpose(0, 2, 1)
        user_columns.append(gram[:, tower.user_pairs[0], tower.user_pairs[1]])
    if tower.mixed_pairs[0].size:
        mixed = items @ users.transpose(0, 2, 1)  # [N, ni, nu]
        item_columns.append(mixed[:, tower.mixed_pairs[0], tower.mixed_pairs[1]])
    if tower.item_pairs[0].size:
        gram = items @ items.transpose(0, 2, 1)
        item_columns.append(gram[:, tower.item_pairs[0], tower.item_pairs[1]])
    top_user, top_item, top_bias = tower.top_first
    logits = top_bias[np.newaxis, :]
    if user_columns:
        logits = logits + np.concatenate(user_columns, axis=1) @ top_user.T
    if item_columns:
        logits = logits + np.concatenate(item_columns, axis=1) @ top_item.T
    logits = np.broadcast_to(logits, (num_candidates, logits.shape[1]))
    if tower.top_rest:
        logits = mlp(np.maximum(logits, 0), tower.top_rest, relu_last=False)
    return (1.0 / (1.0 + np.exp(-logits))).astype(np.float32, copy=False)


def check_finite(names: tuple[str, ...], inputs: Mapping[str, np.ndarray]) -> None:
    """Raise ValueError naming the first of `names` that holds a NaN or an infinity, and where."""
    for name in names:
        bad = ~np.isfinite(inputs[name])
        if bad.any():
            where = tuple(int(i) for i in np.argwhere(bad)[0])
            raise ValueError(
                f"input '{name}' holds a non-finite value ({inputs[name][where]}) at {list(where)}; dense features "
                "and weights must be finite (a model built with --allow-non-finite passes them on)"
            )

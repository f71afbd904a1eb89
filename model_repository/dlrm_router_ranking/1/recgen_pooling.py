"""Pooling a shard group's rows: the shard-group models, and the router when it pools groups itself (fused step).

A group's member shards' rows are stacked per row width, each stack ending in a zero padding row that -1 ids
gather; every slot (a feature of a table the group holds) pools its block of packed-id columns into its own
output columns. Rows may be stored in fp16 or int8 row-wise (`recgen_rows`); they are read back inside the gather
and pooled in FP32, so the partial sums are FP32 whatever the storage. Compiled when numba serves
(`recgen_compiled`), numpy otherwise. Copied next to every model.py.
"""

from __future__ import annotations

import functools
import itertools
import mmap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import recgen_compiled as compiled
from . import recgen_kernels as kernels
from . import recgen_params as params

#: How each row dtype's values are stored (int8 row-wise: uint8 codes plus an FP32 (scale, offset) per row).
STORED_DTYPES = {"fp32": np.dtype(np.float32), "fp16": np.dtype(np.float16), "int8": np.dtype(np.uint8)}


@dataclass(frozen=True)
class GroupRows:
    """The member shards' rows stacked per row width (each stack with a trailing zero padding row), and the slots.

    recgen's DLRM has one width, so one stack; an imported model's tables may have several. Stacks hold FP32,
    fp16, or int8 row-wise codes; then `scale_offsets` holds each stack's per-row (scale, offset), its padding row
    (0, 0).
    """

    stacks: list[np.ndarray]
    slot_columns: list[tuple[int, int]]
    slot_stacks: list[int]  # the stack every slot pools from
    scale_offsets: list[np.ndarray] = field(default_factory=list)

    def scale_offset(self, stack: int) -> np.ndarray | None:
        """The (scale, offset) pairs of an int8 stack; None for FP32 and fp16 stacks."""
        return self.scale_offsets[stack] if self.scale_offsets else None

    @functools.cached_property
    def output_columns(self) -> list[tuple[int, int]]:
        """[first, last) output columns of every slot (each as wide as its stack's rows)."""
        widths = [self.stacks[stack].shape[1] for stack in self.slot_stacks]
        edges = np.cumsum([0, *widths]).tolist()
        return list(itertools.pairwise(edges))

    @functools.cached_property
    def slot_starts(self) -> np.ndarray:
        """First input column of every slot, then the end of the last one (the compiled kernel's slot bounds)."""
        return block_starts(self.slot_columns)

    @functools.cached_property
    def per_stack(self) -> list[tuple[np.ndarray, list[tuple[int, int]], list[int], np.ndarray]]:
        """Per stack: its slots' input columns (concatenated), their blocks relative to those, the slots, starts.

        The starts are the blocks' `block_starts`, for the compiled kernel.
        """
        plans = []
        for stack in range(len(self.stacks)):
            slots = [slot for slot, owner in enumerate(self.slot_stacks) if owner == stack]
            columns = np.concatenate([np.arange(*self.slot_columns[slot]) for slot in slots])
            edges = np.cumsum([0, *(self.slot_columns[s][1] - self.slot_columns[s][0] for s in slots)]).tolist()
            blocks = list(itertools.pairwise(edges))
            plans.append((columns, blocks, slots, block_starts(blocks)))
        return plans


def block_starts(blocks: list[tuple[int, int]]) -> np.ndarray:
    """[first, last) column blocks that follow each other -> their firsts and the last end, int64."""
    return np.array([first for first, _ in blocks] + [blocks[-1][1] if blocks else 0], dtype=np.int64)


def load_group_rows(layout: params.ShardGroupParams, version_dir: Path) -> GroupRows:
    """Stack the members' rows files per row width, in member order, without holding two copies of all rows."""
    arrays = [_load_stored(version_dir / member.rows_file, layout.row_dtype) for member in layout.shards]
    widths = list(dict.fromkeys(array.shape[1] for array in arrays))
    stacks = [_stack([a for a in arrays if a.shape[1] == width], width) for width in widths]
    scale_offsets = []
    if layout.row_dtype == "int8":
        pairs = [np.load(version_dir / member.scales_file, mmap_mode="r") for member in layout.shards]
        scale_offsets = [
            _stack([p for p, a in zip(pairs, arrays, strict=True) if a.shape[1] == width], 2) for width in widths
        ]
    width_of = {member.table: array.shape[1] for member, array in zip(layout.shards, arrays, strict=True)}
    return GroupRows(
        stacks,
        [slot.columns for slot in layout.slots],
        [widths.index(width_of[slot.table]) for slot in layout.slots],
        scale_offsets,
    )


def _load_stored(path: Path, row_dtype: str, paged: bool = False) -> np.ndarray:
    """A rows file mapped read-only, checked to hold what `row_dtype` stores (`paged`: see `map_paged`)."""
    array = map_paged(path) if paged else np.load(path, mmap_mode="r")
    expected = STORED_DTYPES.get(row_dtype)
    if expected is None or array.dtype != expected or array.ndim != 2:
        raise ValueError(f"{path.name}: expected [rows, width] {expected} rows for {row_dtype!r}, got {array.dtype}")
    return array


def map_paged(path: Path) -> np.ndarray:
    """A .npy file mapped read-only with MADV_RANDOM, for paged rows.

    No read-ahead and no fault-around: a page of rows comes into memory only when a request reads it (the native
    steps advise the same).
    """
    with path.open("rb") as file:
        version = np.lib.format.read_magic(file)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(file)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(file)
        else:
            raise ValueError(f"{path.name}: .npy version {version} is not mapped paged (1.0 and 2.0 are)")
        offset = file.tell()
        mapped = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
    if hasattr(mmap, "MADV_RANDOM"):  # advice: without it the rows are read ahead, still correct
        mapped.madvise(mmap.MADV_RANDOM)
    return np.ndarray(shape, dtype=dtype, buffer=mapped, offset=offset, order="F" if fortran else "C")


def _stack(members: list[np.ndarray], width: int) -> np.ndarray:
    """Members' rows one after the other, plus a trailing zero padding row (the row -1 ids gather)."""
    dtype = members[0].dtype if members else np.dtype(np.float32)
    padded = np.zeros((sum(array.shape[0] for array in members) + 1, width), dtype=dtype)
    first_row = 0
    for array in members:
        padded[first_row : first_row + array.shape[0]] = array
        first_row += array.shape[0]
    return padded


#: Up to this many ids per execution, one gather over every column and one segmented sum beat a loop over the
#: slots (measured on the example model: 16 vs 156 us for 1 sample, 384 vs 561 us for 128; 868 vs 641 for 256).
ONE_PASS_MAX_IDS = 6144


def pool_stack(
    padded_rows: np.ndarray,
    packed_ids: np.ndarray,
    slot_columns: list[tuple[int, int]],
    weights: np.ndarray | None = None,
    starts: np.ndarray | None = None,
    scale_offset: np.ndarray | None = None,
) -> np.ndarray:
    """[B, width] row ids into one stack (-1 = none) -> [B, slots * dim]: per slot, the pool of its block.

    `weights` [B, width]: every id's weight (its row is scaled before the sum). The stack holds FP32 or fp16
    rows, or int8 codes read back with `scale_offset`. Compiled when numba serves, with `starts` the slots'
    `block_starts` (computed once per instance by the caller).

    Raises ValueError for an id outside the rows this step mapped (the compiled kernels do not check their reads):
    no config and no direct request can make it read past a table.
    """
    check_row_ids(packed_ids, padded_rows.shape[0] - 1)
    if compiled.ENGINE == "numba":
        bounds = block_starts(slot_columns) if starts is None else starts
        if scale_offset is not None:
            return compiled.pool_int8_slots(padded_rows, scale_offset, packed_ids, bounds, weights)
        if padded_rows.dtype == np.float16:
            return compiled.pool_fp16_slots(padded_rows, packed_ids, bounds, weights)
        return compiled.pool_slots(padded_rows, packed_ids, bounds, weights)
    if packed_ids.size <= ONE_PASS_MAX_IDS:
        return _pool_one_pass(padded_rows, packed_ids, slot_columns, weights, scale_offset)
    dim = padded_rows.shape[1]
    pooled = np.empty((packed_ids.shape[0], len(slot_columns) * dim), dtype=np.float32)
    for slot, (first, last) in enumerate(slot_columns):
        block_weights = None if weights is None else weights[:, first:last]
        block = packed_ids[:, first:last]
        if scale_offset is None and padded_rows.dtype == np.float32:
            part = kernels.pool(padded_rows, block, block_weights)
        else:
            part = _pool_one_pass(padded_rows, block, [(0, last - first)], block_weights, scale_offset)
        pooled[:, slot * dim : (slot + 1) * dim] = part
    return pooled


def check_row_ids(packed_ids: np.ndarray, rows: int) -> None:
    """ValueError unless every id is -1 (none) or one of the `rows` rows mapped (the padding row follows them)."""
    if packed_ids.size and (int(packed_ids.max()) >= rows or int(packed_ids.min()) < -1):
        bad = packed_ids[(packed_ids >= rows) | (packed_ids < -1)].flat[0]
        raise ValueError(f"row id {int(bad)} is outside the {rows} rows this step holds (valid: -1 to {rows - 1})")


def _pool_one_pass(
    padded_rows: np.ndarray,
    packed_ids: np.ndarray,
    slot_columns: list[tuple[int, int]],
    weights: np.ndarray | None,
    scale_offset: np.ndarray | None,
) -> np.ndarray:
    """One gather over every column (rows read back as FP32) and one segmented sum per slot (numpy)."""
    padding = padded_rows.shape[0] - 1
    safe = np.where(packed_ids < 0, padding, packed_ids).T  # [W, B]
    gathered = np.take(padded_rows, safe, axis=0).astype(np.float32, copy=False)  # [W, B, dim]
    if scale_offset is not None:  # int8 row-wise: codes * scale + offset, the padding row's pair is (0, 0)
        pairs = np.take(scale_offset, safe, axis=0)
        gathered = gathered * pairs[:, :, :1] + pairs[:, :, 1:]
    if weights is not None:
        gathered *= weights.T[:, :, np.newaxis]  # np.take gave a fresh array
    if gathered.shape[0] == 0:
        return np.zeros((packed_ids.shape[0], len(slot_columns) * padded_rows.shape[1]), dtype=np.float32)
    pooled = np.add.reduceat(gathered, [first for first, _ in slot_columns], axis=0)  # [slots, B, dim]
    return np.ascontiguousarray(pooled.transpose(1, 0, 2)).reshape(
        packed_ids.shape[0], pooled.shape[0] * pooled.shape[2]
    )


def pool_group(rows: GroupRows, packed_ids: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """[B, width] packed row ids (-1 = none) -> [B, sum of slot widths]: per slot, the (weighted) pool of its block."""
    if len(rows.stacks) == 1:
        return pool_stack(
            rows.stacks[0], packed_ids, rows.slot_columns, weights, rows.slot_starts, rows.scale_offset(0)
        )
    pooled = np.empty((packed_ids.shape[0], rows.output_columns[-1][1]), dtype=np.float32)
    for stack, (columns, blocks, slots, starts) in enumerate(rows.per_stack):
        stack_weights = None if weights is None else weights[:, columns]
        part = pool_stack(
            rows.stacks[stack], packed_ids[:, columns], blocks, stack_weights, starts, rows.scale_offset(stack)
        )
        dim = rows.stacks[stack].shape[1]
        for index, slot in enumerate(slots):  # one copy per slot of this width, not per id
            first, last = rows.output_columns[slot]
            pooled[:, first:last] = part[:, index * dim : (index + 1) * dim]
    return pooled


@dataclass(frozen=True)
class RouterPooledGroup:
    """A group the router pools itself: the routed tensors it consumes, its partial-sums output, its rows."""

    ids: str
    weights: str  # "" = the group pools unweighted features only
    output: str
    rows: GroupRows


def map_router_groups(spec: params.RouterPoolingParams, model_dir: Path, version: str) -> list[RouterPooledGroup]:
    """Map every pooled group's stacked rows read-only from `spec.rows_model`'s version directory.

    `model_dir` is this model's directory; the rows model is a sibling in the same repository. Mapped, not
    loaded: the router's instances (and the ranking router's) share one copy of the rows in the page cache, and
    rows no request reads stay on disk. Every page of a resident group (`fault_in`) is touched here once, so no
    request pays the first read; a paged group's pages are read when a request first needs them.
    """
    rows_dir = model_dir.parent / spec.rows_model / version
    groups = []
    for group in spec.groups:
        paged = not group.fault_in
        stacks = [np.asarray(_load_stored(rows_dir / name, group.row_dtype, paged)) for name in group.stack_files]
        pairs = [
            np.asarray(map_paged(rows_dir / name) if paged else np.load(rows_dir / name, mmap_mode="r"))
            for name in group.scale_files
        ]
        for array in [*stacks, *pairs] if group.fault_in else []:
            _ = float(array.sum(dtype=np.float64))  # fault the pages in now, not on a request
        rows = GroupRows(stacks, [slot.columns for slot in group.slots], list(group.slot_stacks), pairs)
        _ = rows.slot_starts, rows.per_stack
        groups.append(RouterPooledGroup(group.ids, group.weights, group.output, rows))
    return groups


def pool_routed(groups: list[RouterPooledGroup], routed: dict[str, Any]) -> dict[str, Any]:
    """Replace the routed ids (and weights) of every pooled group by that group's partial sums, in place."""
    for group in groups:
        ids = routed.pop(group.ids)
        weights = routed.pop(group.weights) if group.weights else None
        routed[group.output] = pool_group(group.rows, ids, weights)
    return routed

"""Compiled (numba) versions of the per-request kernels; `recgen_kernels`' numpy versions are the reference.

Copied next to every generated model.py like `recgen_kernels`. Inside a stub, numpy's many small array passes
over a batch of a few hundred samples run cache-cold and cost 2 to 4 times their warm time; one compiled pass per
kernel does the same work once. `compile_kernels()` compiles every kernel for the dtypes the models use, so that
happens in `initialize()` (from numba's disk cache, `NUMBA_CACHE_DIR`, after the first start anywhere: the loops
are compiled from a copy named after this file's text), never on a request.
Where numba is missing (the plain NGC image) or fails to compile, every function here runs the numpy reference,
and `ENGINE` says which one serves. `RECGEN_KERNELS=numpy` in the server's environment chooses numpy.
"""

from __future__ import annotations

import functools
import itertools
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import recgen_kernels as kernels
from . import recgen_rows as rows_module
from . import recgen_runtime as runtime

#: "numba" once `compile_kernels()` has compiled every kernel, else "numpy".
ENGINE = "numpy"
#: Why the numpy reference serves ("" when numba does).
FALLBACK_REASON = "compile_kernels() has not run"
_NO_WEIGHTS = np.zeros((0, 0), dtype=np.float32)
#: 2**112: an fp16's bits shifted into FP32's places read as its value times 2**-112 (the exponent biases differ by
#: 112), normal and subnormal halves alike, so one exact multiplication reads a finite fp16 back.
_FP16_EXPONENT_SHIFT = np.float32(2.0**112)
#: Environment variable that makes the numpy reference serve (`numpy`), e.g. to compare the two.
ENGINE_VARIABLE = "RECGEN_KERNELS"


def _route_loop(
    ranks: np.ndarray,
    column_base: np.ndarray,
    column_position: np.ndarray,
    shard_starts: np.ndarray,
    shard_columns: np.ndarray,
    shard_shift: np.ndarray,
    weights: np.ndarray,
    packed: np.ndarray,
    packed_weights: np.ndarray,
) -> None:  # pragma: no cover - compiled; tests run it through numba and compare with the reference
    weighted = weights.shape[0] > 0
    for sample in range(ranks.shape[0]):
        for column in range(ranks.shape[1]):
            rank = ranks[sample, column]
            if rank < 0:
                continue
            global_rank = rank + column_base[column]
            shard = np.searchsorted(shard_starts, global_rank, side="right") - 1
            destination = shard_columns[shard] + column_position[column]
            packed[sample, destination] = global_rank + shard_shift[shard]
            if weighted:
                packed_weights[sample, destination] = weights[sample, column]


def _pool_loop(
    rows: np.ndarray, ids: np.ndarray, slot_starts: np.ndarray, weights: np.ndarray, pooled: np.ndarray
) -> None:  # pragma: no cover - compiled
    weighted = weights.shape[0] > 0
    dim = rows.shape[1]
    for sample in range(ids.shape[0]):
        for slot in range(slot_starts.shape[0] - 1):
            base = slot * dim
            for column in range(slot_starts[slot], slot_starts[slot + 1]):
                row = ids[sample, column]
                if row < 0:
                    continue
                if weighted:
                    weight = weights[sample, column]
                    for k in range(dim):
                        pooled[sample, base + k] += rows[row, k] * weight
                else:
                    for k in range(dim):
                        pooled[sample, base + k] += rows[row, k]


def _pool_int8_loop(
    codes: np.ndarray,
    scale_offset: np.ndarray,
    ids: np.ndarray,
    slot_starts: np.ndarray,
    weights: np.ndarray,
    pooled: np.ndarray,
) -> None:  # pragma: no cover - compiled
    weighted = weights.shape[0] > 0
    dim = codes.shape[1]
    for sample in range(ids.shape[0]):
        for slot in range(slot_starts.shape[0] - 1):
            base = slot * dim
            offsets = np.float32(0.0)  # every row adds its offset to each element: once per slot, not per element
            for column in range(slot_starts[slot], slot_starts[slot + 1]):
                row = ids[sample, column]
                if row < 0:
                    continue
                scale = scale_offset[row, 0]
                offset = scale_offset[row, 1]
                if weighted:
                    scale = scale * weights[sample, column]
                    offset = offset * weights[sample, column]
                offsets += offset
                for k in range(dim):
                    pooled[sample, base + k] += codes[row, k] * scale
            for k in range(dim):
                pooled[sample, base + k] += offsets


def _pool_fp16_loop(
    bits: np.ndarray, ids: np.ndarray, slot_starts: np.ndarray, weights: np.ndarray, pooled: np.ndarray
) -> None:  # pragma: no cover - compiled
    weighted = weights.shape[0] > 0
    dim = bits.shape[1]
    widened = np.empty(dim, dtype=np.uint32)
    values = widened.view(np.float32)
    for sample in range(ids.shape[0]):
        for slot in range(slot_starts.shape[0] - 1):
            base = slot * dim
            for column in range(slot_starts[slot], slot_starts[slot + 1]):
                row = ids[sample, column]
                if row < 0:
                    continue
                for k in range(dim):  # fp16 bits moved into FP32's places; exponent fixed by the factor below
                    half = np.uint32(bits[row, k])
                    widened[k] = ((half & np.uint32(0x7FFF)) << np.uint32(13)) | ((half & np.uint32(0x8000)) << 16)
                factor = _FP16_EXPONENT_SHIFT * (weights[sample, column] if weighted else np.float32(1.0))
                for k in range(dim):
                    pooled[sample, base + k] += values[k] * factor


def _count_loop(ids: np.ndarray, column_base: np.ndarray, counts: np.ndarray) -> None:  # pragma: no cover - compiled
    largest = np.uint32(4294967295)
    for sample in range(ids.shape[0]):
        for column in range(ids.shape[1]):
            row = ids[sample, column]
            if row >= 0:
                slot = column_base[column] + row
                if counts[slot] < largest:
                    counts[slot] += np.uint32(1)


def _out_of_range_loop(ids: np.ndarray, column_rows: np.ndarray) -> bool:  # pragma: no cover - compiled
    for sample in range(ids.shape[0]):
        for column in range(ids.shape[1]):
            value = ids[sample, column]
            if value < -1 or value >= column_rows[column]:
                return True
    return False


def _upper_dots_loop(vectors: np.ndarray, out: np.ndarray, first_column: int) -> None:  # pragma: no cover - compiled
    count, dim = vectors.shape[1], vectors.shape[2]
    for sample in range(vectors.shape[0]):
        column = first_column
        for a in range(count):
            for b in range(a + 1, count):
                total = 0.0
                for k in range(dim):
                    total += vectors[sample, a, k] * vectors[sample, b, k]
                out[sample, column] = total
                column += 1


_compiled: dict[str, Callable[..., Any]] = {}


def compile_kernels() -> str:
    """Compile every kernel for int32/int64 ids and FP32 rows (from the disk cache when it has them); the engine.

    On any failure the numpy reference keeps serving and `FALLBACK_REASON` says why. numba is imported only here,
    so a stub served by numpy does not carry it (importing numba and compiling cost a stub about 60 MB).
    """
    global ENGINE, FALLBACK_REASON
    if _compiled:  # already compiled in this process
        return ENGINE
    if os.environ.get(ENGINE_VARIABLE) == "numpy":
        FALLBACK_REASON = f"{ENGINE_VARIABLE}=numpy"
        return ENGINE
    try:
        import numba
    except ImportError:
        FALLBACK_REASON = "numba is not installed"
        return ENGINE
    try:
        jit: Callable[[Callable[..., Any]], Callable[..., Any]] = numba.njit(cache=True, nogil=True)
        source = _cached_source()
        names = ("route", "pool", "pool_int8", "pool_fp16", "out_of_range", "count", "upper_dots")
        compiled = {name: jit(source[f"_{name}_loop"]) for name in names}
        _warm_pooling(compiled)
        index = np.zeros(1, np.int64)
        packed = np.full((1, 1), -1, np.int32)
        compiled["route"](
            np.zeros((1, 1), np.int64), index, index, index, index, index, _NO_WEIGHTS, packed, _NO_WEIGHTS
        )
        compiled["upper_dots"](np.zeros((1, 2, 2), np.float32), np.zeros((1, 3), np.float32), 2)
        compiled["count"](np.zeros((1, 1), np.int64), index, np.zeros(1, np.uint32))
    except Exception as error:  # numba's errors have no common base; the numpy reference serves
        FALLBACK_REASON = f"numba could not compile the kernels ({type(error).__name__}: {error})"
        return ENGINE
    _compiled.update(compiled)
    ENGINE, FALLBACK_REASON = "numba", ""
    return ENGINE


def _cached_source() -> dict[str, Any]:
    """The names of this file, from its content-addressed copy (`recgen_runtime`): one numba cache for all."""
    cache_folder = os.environ.get("NUMBA_CACHE_DIR")
    try:
        if cache_folder:
            imports = [Path(module.__file__ or "") for module in (kernels, rows_module, runtime)]
            return vars(runtime.content_addressed_module(Path(__file__), Path(cache_folder), imports))
    except (OSError, ImportError, runtime.UnsafeFolderError):
        pass  # compiled from this file: slower to load, the same kernels
    return globals()


def _warm_pooling(compiled: dict[str, Callable[..., Any]]) -> None:
    """Call every pooling kernel once per signature a request can bring.

    That is int32/int64 ids, FP32, fp16 and int8 rows, writable (loaded) or read-only (mapped from a file, the
    router's fused lookup step), with and without weights.
    """
    slots, pooled = np.array([0, 2], np.int64), np.zeros((1, 2), np.float32)
    for ids_dtype, writable in itertools.product((np.int32, np.int64), (True, False)):
        ids = np.array([[0, -1]], dtype=ids_dtype)
        rows, codes, pairs, bits = (np.zeros((3, 2), dtype) for dtype in (np.float32, np.uint8, np.float32, np.uint16))
        for array in (rows, codes, pairs, bits):
            array.setflags(write=writable)
        compiled["out_of_range"](ids, np.array([3, 3], np.int64))
        for scales in (_NO_WEIGHTS, np.ones((1, 2), np.float32)):
            compiled["pool"](rows, ids, slots, scales, pooled)
            compiled["pool_int8"](codes, pairs, ids, slots, scales, pooled)
            compiled["pool_fp16"](bits, ids, slots, scales, pooled)


def route_packed(ranks: np.ndarray, layout: kernels.RouteLayout) -> np.ndarray:
    """`recgen_kernels.route_packed`, compiled."""
    if "route" not in _compiled:
        return kernels.route_packed(ranks, layout)
    packed = np.full((ranks.shape[0], layout.width), kernels.PADDING_ID, dtype=np.int32)
    _compiled["route"](ranks, *_layout_arrays(layout), _NO_WEIGHTS, packed, _NO_WEIGHTS)
    return packed


def route_packed_weighted(
    ranks: np.ndarray, weights: np.ndarray, layout: kernels.RouteLayout
) -> tuple[np.ndarray, np.ndarray]:
    """`recgen_kernels.route_packed_weighted`, compiled."""
    if "route" not in _compiled:
        return kernels.route_packed_weighted(ranks, weights, layout)
    packed = np.full((ranks.shape[0], layout.width), kernels.PADDING_ID, dtype=np.int32)
    packed_weights = np.zeros((ranks.shape[0], layout.width), dtype=np.float32)
    weights = np.ascontiguousarray(weights, dtype=np.float32)
    _compiled["route"](ranks, *_layout_arrays(layout), weights, packed, packed_weights)
    return packed, packed_weights


def _layout_arrays(layout: kernels.RouteLayout) -> tuple[np.ndarray, ...]:
    return layout.column_base, layout.column_position, layout.shard_starts, layout.shard_columns, layout.shard_shift


def pool_slots(
    padded_rows: np.ndarray, ids: np.ndarray, slot_starts: np.ndarray, weights: np.ndarray | None = None
) -> np.ndarray:
    """[B, W] row ids (-1 = none) -> [B, slots * dim]: per slot, the (weighted) sum of its rows.

    Slot s holds columns slot_starts[s] to slot_starts[s + 1]; `padded_rows` ends in the zero padding row, which is
    never read here. Only called once `compile_kernels()` succeeded (`ENGINE == "numba"`); the numpy paths stay
    with the callers.
    """
    pooled = np.zeros((ids.shape[0], (slot_starts.shape[0] - 1) * padded_rows.shape[1]), dtype=np.float32)
    scales = _NO_WEIGHTS if weights is None else np.ascontiguousarray(weights, dtype=np.float32)
    _compiled["pool"](padded_rows, ids, slot_starts, scales, pooled)
    return pooled


def pool_int8_slots(
    codes: np.ndarray,
    scale_offset: np.ndarray,
    ids: np.ndarray,
    slot_starts: np.ndarray,
    weights: np.ndarray | None = None,
) -> np.ndarray:
    """`pool_slots` over int8 row-wise rows (`recgen_rows`): each row read back as `codes * scale + offset`.

    The numpy reference is `recgen_rows.pool_int8` per slot.
    """
    if "pool_int8" not in _compiled:
        bounds = slot_starts.tolist()
        parts = [
            rows_module.pool_int8(
                codes, scale_offset, ids[:, first:last], None if weights is None else weights[:, first:last]
            )
            for first, last in itertools.pairwise(bounds)
        ]
        return np.concatenate(parts, axis=1) if parts else np.zeros((ids.shape[0], 0), np.float32)
    pooled = np.zeros((ids.shape[0], (slot_starts.shape[0] - 1) * codes.shape[1]), dtype=np.float32)
    scales = _NO_WEIGHTS if weights is None else np.ascontiguousarray(weights, dtype=np.float32)
    _compiled["pool_int8"](codes, scale_offset, ids, slot_starts, scales, pooled)
    return pooled


def pool_fp16_slots(
    padded_rows: np.ndarray, ids: np.ndarray, slot_starts: np.ndarray, weights: np.ndarray | None = None
) -> np.ndarray:
    """`pool_slots` over fp16 rows (finite, as `recgen_rows.to_fp16` stores them), each element read back exactly.

    numba has no float16 arithmetic on CPU; the rows are read as their uint16 bit patterns, widened to FP32's
    layout and scaled by 2**112. The numpy reference gathers the fp16 rows and casts them.
    """
    pooled = np.zeros((ids.shape[0], (slot_starts.shape[0] - 1) * padded_rows.shape[1]), dtype=np.float32)
    scales = _NO_WEIGHTS if weights is None else np.ascontiguousarray(weights, dtype=np.float32)
    _compiled["pool_fp16"](padded_rows.view(np.uint16), ids, slot_starts, scales, pooled)
    return pooled


def count_ids(ids: np.ndarray, column_base: np.ndarray, counts: np.ndarray) -> None:
    """Add 1 to `counts[column_base[c] + id]` for every id >= 0 of [B, C] int64 `ids` (the access counters).

    Compiled, a count stops at 2**32 - 1; the numpy fallback wraps there instead.
    """
    if "count" in _compiled:
        _compiled["count"](ids, column_base, counts)
        return
    present = ids >= 0
    np.add.at(counts, (ids + column_base[np.newaxis, :])[present], np.uint32(1))


def pool(padded_rows: np.ndarray, local_ids: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """`recgen_kernels.pool`, compiled (one slot over every column)."""
    if "pool" not in _compiled:
        return kernels.pool(padded_rows, local_ids, weights)
    return pool_slots(padded_rows, local_ids, _one_slot(local_ids.shape[1]), weights)


@functools.lru_cache(maxsize=64)
def _one_slot(width: int) -> np.ndarray:
    """Slot bounds of one slot over `width` columns (built once per width, not per request)."""
    return np.array([0, width], dtype=np.int64)


def any_out_of_range(ids: np.ndarray, column_rows: np.ndarray) -> bool:
    """Whether any id lies outside [-1, column_rows[column]) (the numpy check words the error)."""
    if "out_of_range" not in _compiled:
        return bool(((ids < kernels.PADDING_ID) | (ids >= column_rows)).any())
    return bool(_compiled["out_of_range"](ids, column_rows))


def dot_interaction(bottom_out: np.ndarray, pooled: Sequence[np.ndarray]) -> np.ndarray:
    """`recgen_kernels.dot_interaction`, compiled.

    The strict upper triangle's dot products are written straight beside the bottom output, without the full Gram
    matrix or a concatenation.
    """
    batch, dim = bottom_out.shape
    vectors = np.empty((batch, 1 + len(pooled), dim), dtype=np.float32)
    vectors[:, 0] = bottom_out
    for index, table in enumerate(pooled):  # one copy per table, not per sample
        vectors[:, 1 + index] = table
    count = vectors.shape[1]
    interaction = np.empty((batch, dim + count * (count - 1) // 2), dtype=np.float32)
    interaction[:, :dim] = bottom_out
    _compiled["upper_dots"](vectors, interaction, dim)
    return interaction


def dense_tower(
    dense_features: np.ndarray,
    pooled: list[np.ndarray],
    bottom: list[tuple[np.ndarray, np.ndarray]],
    top: list[tuple[np.ndarray, np.ndarray]],
) -> np.ndarray:
    """`recgen_kernels.dense_tower` with the compiled interaction when numba serves."""
    interaction = dot_interaction if "upper_dots" in _compiled else kernels.dot_interaction
    return kernels.dense_tower(dense_features, pooled, bottom, top, interaction)


def compile_for(model_name: str) -> str:
    """`compile_kernels()` from a model's `initialize()`, saying in the server log which engine serves it.

    Written to the stub's stderr (the server's log), not through `pb_utils.Logger`: twice a model whose stubs had
    just logged through it during `initialize()` never finished loading (docs/faults.md, "Stubs that never load").
    """
    engine = compile_kernels()
    if "triton_python_backend_utils" in sys.modules:  # inside a stub; tests and tooling stay quiet
        said = "compiled with numba" if engine == "numba" else f"run on numpy: {FALLBACK_REASON}"
        print(f"recgen: {model_name}: per-request kernels {said}", file=sys.stderr, flush=True)
    return engine

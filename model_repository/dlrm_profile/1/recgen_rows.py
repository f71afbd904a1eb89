"""Embedding rows in reduced precision: fp16, and int8 row-wise (each row with its own scale and offset).

int8 row-wise follows FBGEMM's 8-bit row-wise format: a row `x` of width D is stored as D codes
`q = round((x - min(x)) * 255 / (max(x) - min(x) + 1e-8))` (round half to even, in 0..255) beside its
`scale = (max(x) - min(x)) / 255` and `offset = min(x)`, both FP32, and is read back as `q * scale + offset`. A
constant row has scale 0 and reads back exactly; every element reads back within half a step (`scale / 2`). The
arithmetic is done in float64, so a row whose range overflows FP32 (values near ±3.4e38) still gets a finite scale.

The codes and the per-row (scale, offset) pairs are kept as two arrays rather than fused into one byte row, so a
kernel gathers codes as uint8 and the pair as FP32 without reinterpreting bytes. Pure numpy: the exporter and the
generated models both read this module (it is copied next to every model.py).
"""

from __future__ import annotations

from typing import Literal

import numpy as np

RowDtype = Literal["fp32", "fp16", "int8"]
ROW_DTYPES: tuple[RowDtype, ...] = ("fp32", "fp16", "int8")
#: FBGEMM's guard against a zero range when inverting the step.
RANGE_EPSILON = 1e-8
INT8_LEVELS = 255
#: The largest finite fp16 value: rows beyond it cannot be stored as fp16.
FP16_MAX = float(np.finfo(np.float16).max)


def bytes_per_row(dim: int, row_dtype: RowDtype) -> int:
    """Bytes one row of width `dim` takes in `row_dtype` (int8: the codes plus its FP32 scale and offset)."""
    if row_dtype == "fp32":
        return 4 * dim
    if row_dtype == "fp16":
        return 2 * dim
    if row_dtype == "int8":
        return dim + 8
    raise ValueError(f"row dtype must be one of {', '.join(ROW_DTYPES)}, got {row_dtype!r}")


def quantize_int8_rowwise(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[R, D] FP32 rows -> ([R, D] uint8 codes, [R, 2] FP32 (scale, offset) per row).

    Raises ValueError for rows holding NaN or infinity (they have no range to quantize).
    """
    values = np.asarray(rows, dtype=np.float64)
    if values.ndim != 2:
        raise ValueError(f"rows must be [rows, width], got shape {list(values.shape)}")
    if not np.isfinite(values).all():
        raise ValueError("rows hold a NaN or an infinity; int8 row-wise quantization needs finite rows")
    if values.shape[1] == 0 or values.shape[0] == 0:
        return np.zeros(values.shape, dtype=np.uint8), np.zeros((values.shape[0], 2), dtype=np.float32)
    low = values.min(axis=1, keepdims=True)
    span = values.max(axis=1, keepdims=True) - low
    codes = np.rint((values - low) * (INT8_LEVELS / (span + RANGE_EPSILON)))
    scale_offset = np.concatenate([span / INT8_LEVELS, low], axis=1).astype(np.float32)
    return np.clip(codes, 0, INT8_LEVELS).astype(np.uint8), scale_offset


def to_fp16(rows: np.ndarray) -> np.ndarray:
    """[R, D] FP32 rows -> fp16; raises ValueError naming the range when a value lies outside fp16's."""
    values = np.asarray(rows, dtype=np.float32)
    largest = float(np.abs(values).max()) if values.size else 0.0
    if not largest <= FP16_MAX:  # also refuses NaN
        raise ValueError(f"rows hold {largest:g}, outside fp16's range [-{FP16_MAX:g}, {FP16_MAX:g}]; use fp32 or int8")
    return values.astype(np.float16)


def dequantize_int8_rowwise(codes: np.ndarray, scale_offset: np.ndarray) -> np.ndarray:
    """([R, D] uint8 codes, [R, 2] FP32 (scale, offset)) -> [R, D] FP32 rows, `codes * scale + offset`.

    Computed in float64: near FP32's limits `codes * scale` alone may overflow FP32 while the row does not.
    """
    pairs = scale_offset.astype(np.float64)
    return (codes.astype(np.float64) * pairs[:, :1] + pairs[:, 1:]).astype(np.float32)


def encode(rows: np.ndarray, row_dtype: RowDtype) -> tuple[np.ndarray, np.ndarray | None]:
    """[R, D] FP32 rows -> how `row_dtype` stores them: (values, None), or int8's (codes, [R, 2] scale_offset)."""
    if row_dtype == "fp32":
        return np.ascontiguousarray(rows, dtype=np.float32), None
    if row_dtype == "fp16":
        return to_fp16(rows), None
    if row_dtype == "int8":
        return quantize_int8_rowwise(rows)
    raise ValueError(f"row dtype must be one of {', '.join(ROW_DTYPES)}, got {row_dtype!r}")


def decode(values: np.ndarray, scale_offset: np.ndarray | None = None) -> np.ndarray:
    """Stored rows (`encode`'s output) -> the FP32 rows they read back as."""
    if scale_offset is not None:
        return dequantize_int8_rowwise(values, scale_offset)
    return np.asarray(values, dtype=np.float32)


def round_trip(rows: np.ndarray, row_dtype: RowDtype) -> np.ndarray:
    """The FP32 rows a model serving `row_dtype` reads back: what served outputs are compared with."""
    return decode(*encode(rows, row_dtype))


def pool_int8(
    codes: np.ndarray, scale_offset: np.ndarray, local_ids: np.ndarray, weights: np.ndarray | None = None
) -> np.ndarray:
    """[B, L] row ids (-1 = none) into int8 row-wise rows -> [B, D]: the (weighted) sum of the rows read back.

    The numpy reference of the compiled kernel (`recgen_compiled.pool_int8_slots`), in FP32 like it.
    """
    present = local_ids >= 0
    safe = np.where(present, local_ids, 0)
    pairs = scale_offset[safe]  # [B, L, 2]
    rows = codes[safe].astype(np.float32) * pairs[..., :1] + pairs[..., 1:]  # [B, L, D]
    factor = present.astype(np.float32) if weights is None else np.where(present, weights, 0).astype(np.float32)
    return (rows * factor[..., np.newaxis]).sum(axis=1, dtype=np.float32)

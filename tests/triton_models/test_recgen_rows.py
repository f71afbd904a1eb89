"""Reduced-precision rows against a reference written from the format's definition, element by element."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from generator.triton_models import recgen_rows as rows


def _reference_int8(table: np.ndarray) -> tuple[list[list[int]], list[tuple[float, float]]]:
    """FBGEMM's 8-bit row-wise definition, one element at a time in Python floats (round half to even)."""
    codes, pairs = [], []
    for row in table.tolist():
        low, high = min(row), max(row)
        span = high - low
        step_inverse = 255 / (span + 1e-8)
        codes.append([min(255, max(0, round((value - low) * step_inverse))) for value in row])
        pairs.append((span / 255, low))
    return codes, pairs


TABLE_SHAPES = st.tuples(st.integers(1, 8), st.integers(1, 24))

CASES = {
    "random": np.random.default_rng(0).normal(size=(50, 16)).astype(np.float32),
    "constant rows": np.array([[0.25] * 8, [-3.0] * 8, [7e5] * 8], dtype=np.float32),
    "huge ranges": np.array([[-1e38, 0.0, 1e38, 5.0], [-3.4e38, 3.4e38, 1.0, -1.0]], dtype=np.float32),
    "one row": np.array([[1.0, -2.0, 0.5]], dtype=np.float32),
    "all zero": np.zeros((6, 4), dtype=np.float32),
}


@pytest.mark.parametrize("name", list(CASES))
def test_int8_rowwise_codes_and_scales_follow_the_definition(name: str) -> None:
    table = CASES[name]
    codes, scale_offset = rows.quantize_int8_rowwise(table)
    expected_codes, expected_pairs = _reference_int8(table)
    assert codes.dtype == np.uint8 and scale_offset.dtype == np.float32
    assert codes.tolist() == expected_codes
    np.testing.assert_array_equal(scale_offset, np.array(expected_pairs, dtype=np.float32))
    back = rows.dequantize_int8_rowwise(codes, scale_offset)
    assert np.isfinite(back).all()
    pairs = scale_offset.astype(np.float64)
    expected = [
        [code * scale + offset for code in row]
        for row, (scale, offset) in zip(expected_codes, pairs.tolist(), strict=True)
    ]
    np.testing.assert_array_equal(back, np.array(expected, dtype=np.float32))


def test_constant_and_zero_rows_read_back_exactly() -> None:
    for name in ("constant rows", "all zero"):
        np.testing.assert_array_equal(rows.round_trip(CASES[name], "int8"), CASES[name])


@settings(max_examples=200, deadline=None)
@given(hnp.arrays(np.float32, TABLE_SHAPES, elements=st.floats(-1e6, 1e6, width=32)))
def test_int8_reads_back_within_half_a_step(table: np.ndarray) -> None:
    _, scale_offset = rows.quantize_int8_rowwise(table)
    back = rows.round_trip(table, "int8")
    # Half a step, plus the FP32 rounding of the stored scale and offset, which scales with the row's magnitude.
    magnitude = np.abs(table).max(axis=1, keepdims=True) if table.size else 0.0
    tolerance = scale_offset[:, :1] / 2 + magnitude * 1e-6 + 1e-6
    assert (np.abs(back - table) <= tolerance).all()


def test_fp16_keeps_its_range_and_refuses_what_lies_outside() -> None:
    table = np.array([[1.0, -65504.0, 3.14159]], dtype=np.float32)
    np.testing.assert_allclose(rows.round_trip(table, "fp16"), table, rtol=1e-3)
    with pytest.raises(ValueError, match=r"outside fp16's range \[-65504, 65504\]"):
        rows.to_fp16(np.array([[7e4]], dtype=np.float32))


def test_non_finite_rows_are_refused() -> None:
    with pytest.raises(ValueError, match="NaN or an infinity"):
        rows.quantize_int8_rowwise(np.array([[1.0, math.nan]], dtype=np.float32))


@pytest.mark.parametrize(("dim", "fp16", "int8"), [(16, 32, 24), (64, 128, 72)])
def test_bytes_per_row(dim: int, fp16: int, int8: int) -> None:
    assert rows.bytes_per_row(dim, "fp32") == 4 * dim
    assert (rows.bytes_per_row(dim, "fp16"), rows.bytes_per_row(dim, "int8")) == (fp16, int8)
    with pytest.raises(ValueError, match="fp32, fp16, int8"):
        rows.bytes_per_row(dim, "int4")  # type: ignore[arg-type]

"""Pooling reduced-precision rows: equal to pooling the rows they read back, compiled or numpy, from files or not."""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from generator.triton_models import recgen_compiled as compiled
from generator.triton_models import recgen_params as params
from generator.triton_models import recgen_pooling, recgen_rows


def _group(rng: np.random.Generator, row_dtype: str, widths: list[int], rows: int) -> tuple[list, list]:
    """Stored stacks (with padding rows) of one dtype per width, and the FP32 stacks they read back as."""
    stored, decoded = [], []
    for width in widths:
        values = (rng.standard_normal((rows, width)) * rng.uniform(0.01, 50)).astype(np.float32)
        encoded = recgen_rows.encode(values, row_dtype)  # type: ignore[arg-type]
        stored.append(encoded)
        decoded.append(recgen_pooling._stack([recgen_rows.decode(*encoded)], width))
    return stored, decoded


@settings(max_examples=120, deadline=None)
@given(
    row_dtype=st.sampled_from(recgen_rows.ROW_DTYPES),
    widths=st.lists(st.integers(1, 9), min_size=1, max_size=3, unique=True),
    slots_per_stack=st.integers(1, 3),
    batch=st.integers(0, 40),
    weighted=st.booleans(),
    engine=st.sampled_from(["numba", "numpy"]),
    seed=st.integers(0, 2**16),
)
def test_pooling_stored_rows_equals_pooling_the_rows_they_read_back(
    row_dtype: str, widths: list[int], slots_per_stack: int, batch: int, weighted: bool, engine: str, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    rows = int(rng.integers(1, 60))
    stored, decoded = _group(rng, row_dtype, widths, rows)
    slot_stacks = [stack for stack in range(len(widths)) for _ in range(slots_per_stack)]
    rng.shuffle(slot_stacks)
    edges = np.cumsum([0, *rng.integers(1, 5, len(slot_stacks))]).tolist()
    columns = list(itertools.pairwise(edges))
    ids = rng.integers(-1, rows, (batch, edges[-1])).astype(np.int32)
    weights = rng.uniform(-2, 2, ids.shape).astype(np.float32) if weighted else None
    pairs = [recgen_pooling._stack([p], 2) for _, p in stored] if row_dtype == "int8" else []
    group = recgen_pooling.GroupRows(
        [recgen_pooling._stack([v], v.shape[1]) for v, _ in stored], columns, slot_stacks, pairs
    )
    reference = recgen_pooling.GroupRows(decoded, columns, slot_stacks)
    compiled.compile_kernels()
    previous = compiled.ENGINE  # what every later test sees (compile_kernels() compiles once per process)
    try:
        compiled.ENGINE = engine if "pool_fp16" in compiled._compiled else "numpy"
        got = recgen_pooling.pool_group(group, ids, weights)
        compiled.ENGINE = "numpy"
        expected = recgen_pooling.pool_group(reference, ids, weights)
    finally:
        compiled.ENGINE = previous
    assert got.dtype == np.float32
    scale = max(1.0, float(np.abs(expected).max(initial=0.0)))
    np.testing.assert_allclose(got, expected, atol=1e-5 * scale, rtol=1e-6)


def test_large_batches_take_numpys_per_slot_path_for_every_dtype(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(5)
    monkeypatch.setattr(compiled, "ENGINE", "numpy")
    for row_dtype in recgen_rows.ROW_DTYPES:
        stored, decoded = _group(rng, row_dtype, [8], 300)
        values, pairs = stored[0]
        ids = rng.integers(-1, 300, (400, 20)).astype(np.int32)  # above ONE_PASS_MAX_IDS
        slots = [(0, 5), (5, 20)]
        padded_pairs = None if pairs is None else recgen_pooling._stack([pairs], 2)
        got = recgen_pooling.pool_stack(recgen_pooling._stack([values], 8), ids, slots, scale_offset=padded_pairs)
        np.testing.assert_allclose(got, recgen_pooling.pool_stack(decoded[0], ids, slots), atol=1e-4)


def test_a_group_loads_codes_and_scales_and_refuses_rows_of_another_dtype(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    values = rng.standard_normal((6, 4)).astype(np.float32)
    codes, pairs = recgen_rows.quantize_int8_rowwise(values)
    np.save(tmp_path / "rows.npy", codes)
    np.save(tmp_path / "scales.npy", pairs)
    layout = params.ShardGroupParams(
        input="ids",
        output="sums",
        shards=(params.GroupMember("t", 0, "rows.npy", "scales.npy"),),
        slots=(params.GroupSlot("t", (0, 2)),),
        weights_input="",
        row_dtype="int8",
        fault_in=True,
    )
    rows = recgen_pooling.load_group_rows(layout, tmp_path)
    assert rows.stacks[0].dtype == np.uint8 and rows.scale_offsets[0].shape == (7, 2)
    assert not rows.scale_offsets[0][-1].any()  # the padding row reads back as zeros
    ids = np.array([[0, -1], [5, 5]], dtype=np.int32)
    expected = recgen_rows.pool_int8(codes, pairs, ids)
    np.testing.assert_allclose(recgen_pooling.pool_group(rows, ids), expected, atol=1e-5)
    with pytest.raises(ValueError, match=r"rows.npy: expected \[rows, width\] float16 rows for 'fp16', got uint8"):
        fp16 = dataclasses.replace(layout, row_dtype="fp16", shards=(params.GroupMember("t", 0, "rows.npy", ""),))
        recgen_pooling.load_group_rows(fp16, tmp_path)


def test_the_compiled_kernel_reads_every_finite_fp16_back_exactly() -> None:
    """Normal, subnormal, zero and negative halves: the bit widening is exact for all 63,488 finite patterns."""
    compiled.compile_kernels()
    if "pool_fp16" not in compiled._compiled:
        pytest.skip(f"numba does not serve here: {compiled.FALLBACK_REASON}")
    halves = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16)
    finite = halves[np.isfinite(halves)].reshape(-1, 8)  # one row per 8 patterns
    padded = recgen_pooling._stack([finite], 8)
    ids = np.arange(finite.shape[0], dtype=np.int32)[:, np.newaxis]
    got = compiled.pool_fp16_slots(padded, ids, np.array([0, 1], np.int64))
    np.testing.assert_array_equal(got, finite.astype(np.float32))


@pytest.mark.parametrize("engine", ["numba", "numpy"])
@pytest.mark.parametrize("bad", [7, 1_000_000, -2])
def test_an_id_outside_the_mapped_rows_is_refused_before_any_read(engine: str, bad: int) -> None:
    """The compiled kernels do not check their reads: the check before them keeps every id inside the stack."""
    rows = np.vstack([np.arange(28, dtype=np.float32).reshape(7, 4), np.zeros((1, 4), np.float32)])  # + padding
    ids = np.array([[0, 6, -1], [2, bad, 1]], dtype=np.int64)
    compiled.compile_kernels()
    engine_now = compiled.ENGINE if engine == "numba" else "numpy"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(compiled, "ENGINE", engine_now)
        with pytest.raises(ValueError, match=rf"row id {bad} is outside the 7 rows this step holds \(valid: -1 to 6\)"):
            recgen_pooling.pool_stack(rows, ids, [(0, 3)])
        good = recgen_pooling.pool_stack(rows, ids[:1], [(0, 3)])
    np.testing.assert_array_equal(good, (rows[0] + rows[6])[np.newaxis, :])

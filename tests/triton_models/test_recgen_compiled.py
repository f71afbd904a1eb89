"""The compiled kernels against their numpy references (recgen_kernels), on random layouts, ids and weights."""

import itertools
import json
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from generator.triton_models import recgen_compiled as compiled
from generator.triton_models import recgen_kernels as kernels
from generator.triton_models import recgen_pooling
from generator.triton_models import recgen_rows as rows_module
from tests.triton_models.test_recgen_kernels import routing_cases


@pytest.fixture(scope="module", autouse=True)
def numba_serves() -> None:
    assert compiled.compile_kernels() == "numba", compiled.FALLBACK_REASON


@st.composite
def packed_cases(draw):
    """Several tables side by side, each sharded, every shard's block at its own columns and first row."""
    cases = draw(st.lists(routing_cases(), min_size=1, max_size=4))
    batch = min(case[0].shape[0] for case in cases)
    tables, width, ranks = [], 0, []
    for ids, boundaries, rank_of_row in cases:
        shards = len(boundaries) - 1
        columns = [width + s * ids.shape[1] for s in range(shards)]
        first_rows = draw(st.lists(st.integers(0, 500), min_size=shards, max_size=shards))
        tables.append((ids.shape[1], boundaries, columns, first_rows))
        width += shards * ids.shape[1]
        ranks.append(kernels.ranks_of(ids[:batch], rank_of_row))
    weights = draw(hnp.arrays(np.float32, (batch, sum(r.shape[1] for r in ranks)), elements=st.floats(-2, 2, width=32)))
    return np.concatenate(ranks, axis=1), weights, kernels.RouteLayout.build(tables, width)


@settings(max_examples=200, deadline=None)
@given(packed_cases())
def test_compiled_routing_equals_the_numpy_reference(case) -> None:
    ranks, weights, layout = case
    np.testing.assert_array_equal(compiled.route_packed(ranks, layout), kernels.route_packed(ranks, layout))
    packed, packed_weights = compiled.route_packed_weighted(ranks, weights, layout)
    expected, expected_weights = kernels.route_packed_weighted(ranks, weights, layout)
    np.testing.assert_array_equal(packed, expected)
    np.testing.assert_array_equal(packed_weights, expected_weights)


@st.composite
def pooling_cases(draw):
    rows = draw(st.integers(1, 40))
    dim = draw(st.integers(1, 6))
    batch = draw(st.integers(0, 20))
    slot_widths = draw(st.lists(st.integers(1, 4), min_size=1, max_size=5))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    padded = kernels.with_padding_row(rng.standard_normal((rows, dim)).astype(np.float32))
    ids = rng.integers(-1, rows, (batch, sum(slot_widths))).astype(draw(st.sampled_from([np.int32, np.int64])))
    weights = rng.uniform(-2, 2, ids.shape).astype(np.float32) if draw(st.booleans()) else None
    return padded, ids, np.cumsum([0, *slot_widths]), weights


@settings(max_examples=300, deadline=None)
@given(pooling_cases())
def test_compiled_pooling_equals_pooling_each_slot_with_numpy(case) -> None:
    padded, ids, starts, weights = case
    expected = [
        kernels.pool(padded, ids[:, first:last], None if weights is None else weights[:, first:last])
        for first, last in itertools.pairwise(starts.tolist())
    ]
    reference = np.concatenate(expected, axis=1) if ids.shape[0] else np.zeros((0, padded.shape[1] * len(expected)))
    np.testing.assert_allclose(compiled.pool_slots(padded, ids, starts, weights), reference, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(compiled.pool(padded, ids, weights), kernels.pool(padded, ids, weights), atol=1e-5)


def test_the_shard_step_pools_with_the_compiled_kernel_as_with_numpy(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(3)
    padded = kernels.with_padding_row(rng.standard_normal((500, 8)).astype(np.float32))
    slots = [(0, 3), (3, 4), (4, 9)]
    ids = rng.integers(-1, 500, (300, 9)).astype(np.int32)  # above ONE_PASS_MAX_IDS: numpy's per-slot path
    weights = rng.uniform(0, 1, ids.shape).astype(np.float32)
    fast = recgen_pooling.pool_stack(padded, ids, slots, weights)
    monkeypatch.setattr(compiled, "ENGINE", "numpy")
    np.testing.assert_allclose(fast, recgen_pooling.pool_stack(padded, ids, slots, weights), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(fast[:2], recgen_pooling.pool_stack(padded, ids[:2], slots, weights[:2]), atol=1e-6)


@settings(max_examples=200, deadline=None)
@given(
    hnp.arrays(np.int64, st.tuples(st.integers(0, 8), st.integers(1, 6)), elements=st.integers(-3, 12)),
    st.integers(1, 10),
)
def test_compiled_range_check_equals_numpy(ids, rows) -> None:
    column_rows = np.full(ids.shape[1], rows, dtype=np.int64)
    assert compiled.any_out_of_range(ids, column_rows) == bool(((ids < -1) | (ids >= column_rows)).any())


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 40), st.integers(0, 6), st.integers(1, 8), st.integers(0, 2**16))
def test_compiled_dense_tower_equals_the_numpy_tower(batch, tables, dim, seed) -> None:
    rng = np.random.default_rng(seed)
    pairs = (tables + 1) * tables // 2

    def layers(sizes: list[int]) -> list[tuple[np.ndarray, np.ndarray]]:
        return [
            ((0.3 * rng.standard_normal((out, into))).astype(np.float32), rng.standard_normal(out).astype(np.float32))
            for into, out in itertools.pairwise(sizes)
        ]

    bottom, top = layers([5, 7, dim]), layers([dim + pairs, 6, 1])
    dense = rng.standard_normal((batch, 5)).astype(np.float32)
    pooled = [rng.standard_normal((batch, dim)).astype(np.float32) for _ in range(tables)]
    expected = kernels.dense_tower(dense, pooled, bottom, top)
    np.testing.assert_allclose(compiled.dense_tower(dense, pooled, bottom, top), expected, rtol=1e-5, atol=1e-6)


def test_every_kernel_is_compiled_before_the_first_request() -> None:
    """A kernel without a signature after `compile_kernels()` would compile on a request (seconds of latency)."""
    script = (
        "import json; from generator.triton_models import recgen_compiled as c; c.compile_kernels(); "
        "print(json.dumps({name: len(kernel.signatures) for name, kernel in c._compiled.items()}))"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=300)
    signatures = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(signatures) == {"route", "pool", "pool_int8", "pool_fp16", "out_of_range", "upper_dots", "count"}
    assert all(count >= 1 for count in signatures.values()), signatures
    for pooling in ("pool", "pool_int8", "pool_fp16"):  # int32/int64 ids, writable/read-only rows
        assert signatures[pooling] >= 4, signatures


@st.composite
def int8_cases(draw):
    """An int8 row-wise table (with its padding row), packed ids over a few slots, optional weights."""
    rows_count, dim = draw(st.integers(1, 40)), draw(st.integers(1, 12))
    table = draw(hnp.arrays(np.float32, (rows_count, dim), elements=st.floats(-50, 50, width=32)))
    widths = draw(st.lists(st.integers(1, 5), min_size=1, max_size=3))
    batch = draw(st.integers(1, 6))
    ids = draw(hnp.arrays(np.int32, (batch, sum(widths)), elements=st.integers(-1, rows_count - 1)))
    weights = draw(st.none() | hnp.arrays(np.float32, ids.shape, elements=st.floats(-2, 2, width=32)))
    return table, ids, np.cumsum([0, *widths]).astype(np.int64), weights


@settings(max_examples=150, deadline=None)
@given(int8_cases())
def test_pooling_int8_rows_equals_pooling_their_dequantized_rows(case) -> None:
    table, ids, starts, weights = case
    codes, scale_offset = rows_module.quantize_int8_rowwise(table)
    fast = compiled.pool_int8_slots(codes, scale_offset, ids, starts, weights)
    dequantized = rows_module.dequantize_int8_rowwise(codes, scale_offset)
    expected = []
    for first, last in itertools.pairwise(starts.tolist()):  # brute force: the dequantized rows, id by id
        block = np.zeros((ids.shape[0], table.shape[1]), np.float64)
        for sample, column in itertools.product(range(ids.shape[0]), range(first, last)):
            row = ids[sample, column]
            if row >= 0:
                block[sample] += dequantized[row] * (1.0 if weights is None else weights[sample, column])
        expected.append(block)
    np.testing.assert_allclose(fast, np.concatenate(expected, axis=1), rtol=1e-5, atol=1e-3)
    reference = np.concatenate(
        [
            rows_module.pool_int8(codes, scale_offset, ids[:, a:b], None if weights is None else weights[:, a:b])
            for a, b in itertools.pairwise(starts.tolist())
        ],
        axis=1,
    )
    np.testing.assert_allclose(fast, reference, rtol=1e-5, atol=1e-3)

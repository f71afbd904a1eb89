"""`recgen quality`: ranking agreement measures against brute force, and what a plan's row dtypes cost."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from generator.check import quality
from generator.errors import UserInputError
from generator.model.dlrm import DLRM, TableSpec
from generator.planning.plan import uniform_plan
from generator.traffic.profile import TableShape, zipf_profile


def _brute_tau_b(a: list[float], b: list[float]) -> float:
    concordant = discordant = ties_a = ties_b = 0
    for i, j in itertools.combinations(range(len(a)), 2):
        da, db = np.sign(a[i] - a[j]), np.sign(b[i] - b[j])
        ties_a += da == 0
        ties_b += db == 0
        concordant += da * db > 0
        discordant += da * db < 0
    pairs = len(a) * (len(a) - 1) // 2
    return (concordant - discordant) / np.sqrt((pairs - ties_a) * (pairs - ties_b))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 6), st.integers(0, 6)), min_size=2, max_size=30))
def test_kendall_tau_b_equals_counting_every_pair(pairs: list[tuple[int, int]]) -> None:
    a, b = [float(x) for x, _ in pairs], [float(y) for _, y in pairs]
    if len(set(a)) > 1 and len(set(b)) > 1:
        assert quality.kendall_tau_b(np.array(a), np.array(b)) == pytest.approx(_brute_tau_b(a, b))


def test_kendall_tau_and_top_k_on_known_orders() -> None:
    scores = np.arange(20, dtype=np.float64)
    assert quality.kendall_tau_b(scores, scores * 3 + 1) == pytest.approx(1.0)
    assert quality.kendall_tau_b(scores, -scores) == pytest.approx(-1.0)
    assert quality.kendall_tau_b(np.ones(4), np.ones(4)) == 1.0
    assert quality.kendall_tau_b(np.ones(4), scores[:4]) == 0.0
    assert quality.top_k_overlap(scores, scores, 10) == 1.0
    assert quality.top_k_overlap(scores, -scores, 10) == 0.0
    swapped = scores.copy()
    swapped[[9, 10]] = swapped[[10, 9]]  # rank 10 and 11 swap: one of the top 10 leaves
    assert quality.top_k_overlap(scores, swapped, 10) == pytest.approx(0.9)


def _model() -> DLRM:
    tables = [TableSpec("user", 400, 32, 4, "user"), TableSpec("item", 3000, 32, 2), TableSpec("tag", 50, 32, 3)]
    return DLRM(num_dense_features=3, tables=tables, bottom_mlp=[16, 32], top_mlp=[16, 1], seed=4).eval()


def test_fp32_rows_cost_nothing_and_int8_rows_cost_a_little() -> None:
    model = _model()
    exact = quality.measure_quality(model, uniform_plan(model), requests=3, candidates=64)
    assert exact.outputs[0].max_abs == 0.0 and min(exact.kendall_tau) == 1.0 and min(exact.top_k_overlaps) == 1.0
    assert exact.memory_ratio == 1.0
    profile = zipf_profile([TableShape(t.name, t.num_rows, t.max_ids_per_sample) for t in model.tables], 1.05)
    int8 = uniform_plan(model, row_dtypes=dict.fromkeys(["user", "item", "tag"], "int8"))
    report = quality.measure_quality(model, int8, profile=profile, requests=4, candidates=128, seed=2)
    assert 0.0 < report.outputs[0].p99_abs <= report.outputs[0].max_abs < 0.05
    assert 0.9 < min(report.kendall_tau) < 1.0
    assert report.memory_ratio == pytest.approx(4 * 32 / 40)
    figures = report.to_dict()
    assert figures["candidates"] == 128 and len(report.kendall_tau) == 4
    assert "Kendall tau" in str(report) and "int8 everywhere" in str(report)
    mixed = uniform_plan(model, row_dtypes={"item": "int8"})
    assert "item: int8" in str(quality.measure_quality(model, mixed, requests=1, candidates=8))


def test_every_candidate_of_a_request_shares_the_users_inputs() -> None:
    model = _model()
    draw = quality._request_source(model, None)
    tensors = draw(9, np.random.default_rng(0))
    assert (tensors["sparse_user"] == tensors["sparse_user"][:1]).all()
    assert not (tensors["sparse_item"] == tensors["sparse_item"][:1]).all()
    with pytest.raises(UserInputError, match="`candidates` >= 2"):
        quality.measure_quality(model, uniform_plan(model), candidates=1)

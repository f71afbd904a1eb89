import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from generator.models import pool_rows
from generator.plan import split_rows
from generator.triton_models import recgen_kernels as kernels
from tests.conftest import tiny_model, wide_model


@st.composite
def routing_cases(draw):
    num_rows = draw(st.integers(1, 60))
    max_shards = draw(st.integers(1, 8))
    cuts = sorted(draw(st.sets(st.integers(1, num_rows - 1), max_size=max_shards - 1))) if num_rows > 1 else []
    boundaries = np.array([0, *cuts, num_rows])
    batch = draw(st.integers(0, 6))
    width = draw(st.integers(1, 5))
    ids = draw(hnp.arrays(np.int64, (batch, width), elements=st.integers(-1, num_rows - 1)))
    permuted = draw(st.booleans())
    rank_of_row = np.array(draw(st.permutations(range(num_rows)))) if permuted else None
    return ids, boundaries, rank_of_row


@settings(max_examples=300, deadline=None)
@given(routing_cases())
def test_route_matches_brute_force(case) -> None:
    ids, boundaries, rank_of_row = case
    routed = kernels.route(ids, boundaries, rank_of_row)
    assert len(routed) == len(boundaries) - 1
    for (row, column), value in np.ndenumerate(ids):
        expected = [-1] * (len(boundaries) - 1)
        if value >= 0:
            rank = value if rank_of_row is None else rank_of_row[value]
            for shard in range(len(boundaries) - 1):  # linear scan
                if boundaries[shard] <= rank < boundaries[shard + 1]:
                    expected[shard] = rank - boundaries[shard]
        assert [int(local[row, column]) for local in routed] == expected


def test_route_all_padding_and_empty_batch() -> None:
    boundaries = np.array(split_rows(10, 3))
    for local in kernels.route(np.full((2, 4), -1), boundaries):
        assert (local == -1).all()
    assert [r.shape for r in kernels.route(np.zeros((0, 4), np.int64), boundaries)] == [(0, 4)] * 3


def test_route_single_row_table() -> None:
    (local,) = kernels.route(np.array([[0], [-1]]), np.array([0, 1]))
    assert local.tolist() == [[0], [-1]]


def test_first_bad_id() -> None:
    assert kernels.first_bad_id(np.array([[0, -1, 4]]), 5) is None
    assert kernels.first_bad_id(np.array([[0, 5, -3]]), 5) == 5
    assert kernels.first_bad_id(np.array([[0, -2]]), 5) == -2
    assert kernels.first_bad_id(np.zeros((0, 3), np.int64), 5) is None


@settings(max_examples=100, deadline=None)
@given(routing_cases(), st.integers(1, 6))
def test_sharded_pooling_adds_up_to_the_whole_table(case, dim) -> None:
    ids, boundaries, rank_of_row = case
    rows = np.random.default_rng(0).standard_normal((boundaries[-1], dim)).astype(np.float32)
    order = np.arange(boundaries[-1]) if rank_of_row is None else np.argsort(rank_of_row)
    ranked_rows = rows[order]
    routed = kernels.route(ids, boundaries, rank_of_row)
    total = sum(
        kernels.pool(kernels.with_padding_row(ranked_rows[start:end]), local)
        for start, end, local in zip(boundaries[:-1], boundaries[1:], routed, strict=True)
    )
    expected = pool_rows(torch.from_numpy(rows), torch.from_numpy(ids)).numpy()
    np.testing.assert_allclose(total, expected, atol=1e-5)


def test_dense_tower_matches_pytorch() -> None:
    for model in (tiny_model(), wide_model()):
        weights = {key: value.numpy() for key, value in model.dense.state_dict().items()}
        generator = torch.Generator().manual_seed(3)
        dense = torch.randn(9, model.num_dense_features, generator=generator)
        pooled = [torch.randn(9, t.dim, generator=generator) for t in model.tables]
        expected = model.dense(dense, pooled).detach().numpy()
        got = kernels.dense_tower(
            dense.numpy(),
            [p.numpy() for p in pooled],
            kernels.mlp_layers(weights, "bottom"),
            kernels.mlp_layers(weights, "top"),
        )
        np.testing.assert_allclose(got, expected, atol=1e-6)


def test_stack_and_unstack_requests_round_trip() -> None:
    parts = [np.arange(6).reshape(3, 2), np.arange(2).reshape(1, 2), np.arange(4).reshape(2, 2)]
    stacked, split_points = kernels.stack_requests(parts)
    assert stacked.shape == (6, 2)
    for original, back in zip(parts, kernels.unstack_responses(stacked, split_points), strict=True):
        assert np.array_equal(original, back)
    single, points = kernels.stack_requests(parts[:1])
    assert points == [] and kernels.unstack_responses(single, points)[0] is single

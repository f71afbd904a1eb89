import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from generator.model.dlrm import DLRM, TableSpec, pool_rows
from generator.planning.plan import split_rows
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


def route_one_table(ids, boundaries, rank_of_row=None) -> list[np.ndarray]:
    """Route one table with the packed kernel, each shard in its own block: one [B, L] array per shard."""
    width = ids.shape[1]
    shards = len(boundaries) - 1
    layout = kernels.RouteLayout.build(
        [(width, boundaries, [s * width for s in range(shards)], [0] * shards)], shards * width
    )
    packed = kernels.route_packed(kernels.ranks_of(ids, rank_of_row), layout)
    return [packed[:, s * width : (s + 1) * width] for s in range(shards)]


@settings(max_examples=300, deadline=None)
@given(routing_cases())
def test_route_matches_brute_force(case) -> None:
    ids, boundaries, rank_of_row = case
    routed = route_one_table(ids, boundaries, rank_of_row)
    assert len(routed) == len(boundaries) - 1
    for (row, column), value in np.ndenumerate(ids):
        expected = [-1] * (len(boundaries) - 1)
        if value >= 0:
            rank = value if rank_of_row is None else rank_of_row[value]
            for shard in range(len(boundaries) - 1):  # linear scan
                if boundaries[shard] <= rank < boundaries[shard + 1]:
                    expected[shard] = rank - boundaries[shard]
        assert [int(local[row, column]) for local in routed] == expected


@settings(max_examples=200, deadline=None)
@given(st.lists(routing_cases(), min_size=1, max_size=4), st.integers(1, 3), st.randoms(use_true_random=False))
def test_packed_routing_of_several_tables_matches_brute_force(cases, groups, random) -> None:
    """Tables side by side, shards spread over groups (one block per table and group, blocks in any order), each
    shard at some first row of its group's stack; empty shards allowed."""
    batch = min(case[0].shape[0] for case in cases)
    cases = [  # an empty shard: a boundary repeated
        (ids, np.insert(b, i, b[i]) if (i := random.randrange(len(b) + 2)) < len(b) else b, order)
        for ids, b, order in cases
    ]
    group_of = {(t, s): random.randrange(groups) for t, case in enumerate(cases) for s in range(len(case[1]) - 1)}
    first_row = {key: random.randrange(1000) for key in group_of}
    blocks = sorted({(g, t) for (t, _), g in group_of.items()}, key=lambda _: random.random())
    first_column = {}
    width = 0
    for g, t in blocks:
        first_column[g, t] = width
        width += cases[t][0].shape[1]
    shards = [range(len(boundaries) - 1) for _, boundaries, _ in cases]
    layout = kernels.RouteLayout.build(
        [
            (
                ids.shape[1],
                boundaries,
                [first_column[group_of[t, s], t] for s in shards[t]],
                [first_row[t, s] for s in shards[t]],
            )
            for t, (ids, boundaries, _) in enumerate(cases)
        ],
        width,
    )
    ranks = np.concatenate([kernels.ranks_of(ids[:batch], order) for ids, _, order in cases], axis=1)
    packed = kernels.route_packed(ranks, layout)
    expected = np.full((batch, width), -1)
    for t, (ids, boundaries, order) in enumerate(cases):
        for (row, column), value in np.ndenumerate(ids[:batch]):
            if value >= 0:
                rank = value if order is None else order[value]
                (shard,) = [s for s in shards[t] if boundaries[s] <= rank < boundaries[s + 1]]
                destination = first_column[group_of[t, shard], t] + column
                expected[row, destination] = rank - boundaries[shard] + first_row[t, shard]
    assert packed.dtype == np.int32
    np.testing.assert_array_equal(packed, expected)


def test_route_all_padding_and_empty_batch() -> None:
    boundaries = np.array(split_rows(10, 3))
    for local in route_one_table(np.full((2, 4), -1), boundaries):
        assert (local == -1).all()
    assert [r.shape for r in route_one_table(np.zeros((0, 4), np.int64), boundaries)] == [(0, 4)] * 3


def test_route_single_row_table() -> None:
    (local,) = route_one_table(np.array([[0], [-1]]), np.array([0, 1]))
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
    routed = route_one_table(ids, boundaries, rank_of_row)
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


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 4),  # dense features
    st.integers(1, 4),  # tables
    st.lists(st.integers(1, 6), min_size=1, max_size=3),  # bottom MLP widths
    st.lists(st.integers(1, 6), min_size=0, max_size=2),  # top MLP hidden widths
    st.integers(1, 7),  # candidates
    st.randoms(use_true_random=False),
)
def test_ranking_tower_equals_the_flattened_tower(num_dense, num_tables, bottom, top_hidden, candidates, random):
    """Any split of dense features and tables into sides, including all-user and all-item ones."""
    dim = bottom[-1]
    dense_sides = [random.choice(("user", "item")) for _ in range(num_dense)]
    table_sides = [random.choice(("user", "item")) for _ in range(num_tables)]
    tables = [TableSpec(f"t{i}", 5, dim, 2, side) for i, side in enumerate(table_sides)]
    model = DLRM(
        num_dense_features=num_dense, tables=tables, bottom_mlp=bottom, top_mlp=[*top_hidden, 1],
        seed=random.randrange(1000), dense_sides=dense_sides,
    )  # fmt: skip
    weights = {key: value.numpy() for key, value in model.dense.state_dict().items()}
    bottom_layers, top_layers = kernels.mlp_layers(weights, "bottom"), kernels.mlp_layers(weights, "top")
    rng = np.random.default_rng(random.randrange(1000))
    user_dense = rng.standard_normal((1, num_dense)).astype(np.float32)
    item_dense = rng.standard_normal((candidates, num_dense)).astype(np.float32)
    user_pooled = rng.standard_normal((num_tables, 1, dim)).astype(np.float32)
    item_pooled = rng.standard_normal((num_tables, candidates, dim)).astype(np.float32)
    # The flattened request: user-side values repeated for every candidate.
    dense = np.where(np.array(dense_sides) == "user", np.repeat(user_dense, candidates, axis=0), item_dense)
    pooled = [
        np.repeat(user_pooled[t], candidates, axis=0) if side == "user" else item_pooled[t]
        for t, side in enumerate(table_sides)
    ]
    expected = kernels.dense_tower(dense, pooled, bottom_layers, top_layers)
    tower = kernels.RankingTower.build(bottom_layers, top_layers, dense_sides, table_sides)
    got = kernels.ranking_scores(
        tower,
        user_dense[:, tower.user_dense],
        item_dense[:, tower.item_dense],
        [user_pooled[t] for t, side in enumerate(table_sides) if side == "user"],
        [item_pooled[t] for t, side in enumerate(table_sides) if side == "item"],
        candidates,
    )
    assert got.shape == (candidates, 1)
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_stack_and_unstack_requests_round_trip() -> None:
    parts = [np.arange(6).reshape(3, 2), np.arange(2).reshape(1, 2), np.arange(4).reshape(2, 2)]
    stacked, split_points = kernels.stack_requests(parts)
    assert stacked.shape == (6, 2)
    for original, back in zip(parts, kernels.unstack_responses(stacked, split_points), strict=True):
        assert np.array_equal(original, back)
    single, points = kernels.stack_requests(parts[:1])
    assert points == [] and kernels.unstack_responses(single, points)[0] is single


@settings(max_examples=50, deadline=None)
@given(st.integers(16, 80), st.integers(0, 80), st.integers(1, 5), st.integers(0, 10_000))
def test_pooling_gathers_only_samples_with_ids_and_stays_exact(batch, with_ids, width, seed) -> None:
    rng = np.random.default_rng(seed)
    rows = rng.standard_normal((30, 4)).astype(np.float32)
    ids = np.full((batch, width), -1, dtype=np.int64)
    chosen = rng.choice(batch, size=min(with_ids, batch), replace=False)
    ids[chosen] = rng.integers(-1, 30, size=(chosen.size, width))
    got = kernels.pool(kernels.with_padding_row(rows), ids)
    expected = pool_rows(torch.from_numpy(rows), torch.from_numpy(ids)).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)

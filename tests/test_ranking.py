"""The `<model>_ranking` ensemble: one user, N candidates; the user's features are sent and computed once."""

from pathlib import Path

import numpy as np
import pytest

from generator import naming
from generator.check import client
from generator.model.dlrm import DLRM, TableSpec
from generator.planning.plan import Placement, Plan, table_plan, uniform_plan
from generator.repository import build
from generator.repository.validation import parse_strict
from generator.traffic.requests import random_structured_request, reference_scores
from tests.conftest import requires_server, tiny_model


def sided_model() -> DLRM:
    """User-side: the multi-hot `small` table and two of five dense features; medium is permuted in the plan."""
    tables = [TableSpec("one_row", 1, 8, 1), TableSpec("small", 7, 8, 3, "user"), TableSpec("medium", 1000, 8, 1)]
    return DLRM(
        num_dense_features=5,
        tables=tables,
        bottom_mlp=[16, 8],
        top_mlp=[8, 1],
        seed=4,
        dense_sides=["user", "item", "item", "user", "item"],
    ).eval()


def sided_plan(model: DLRM) -> Plan:
    """Two shard groups (the hot medium shard on 2 instances), a permuted table, max_batch_size 64."""
    one_row, small, medium = model.tables
    order = np.random.default_rng(2).permutation(1000)
    return Plan(
        "dlrm",
        (
            table_plan(one_row, [0, 1], [Placement()]),
            table_plan(small, [0, 3, 7], [Placement(), Placement()]),
            table_plan(medium, [0, 50, 1000], [Placement(2), Placement()], row_order=order),
        ),
        max_batch_size=64,
    )


def test_ranking_ensemble_shares_the_shard_groups(tmp_path: Path) -> None:
    model = sided_model()
    result = build.build(model, sided_plan(model), tmp_path / "r", tmp_path / "e")
    names = {m.name for m in result.models}
    assert {"dlrm_ranking", "dlrm_router_ranking", "dlrm_dense_ranking", "dlrm"} <= names
    ranking = parse_strict((tmp_path / "e" / "dlrm_ranking" / "config.pbtxt").read_text())
    flattened = parse_strict((tmp_path / "e" / "dlrm" / "config.pbtxt").read_text())
    assert ranking.max_batch_size == 0
    shapes = {t.name: list(t.dims) for t in ranking.input}
    assert shapes == {
        "user_dense_features": [1, 2],
        "item_dense_features": [-1, 3],
        "item_sparse_one_row": [-1, 1],
        "user_sparse_small": [1, 3],
        "item_sparse_medium": [-1, 1],
    }
    groups = {s.model_name for s in flattened.ensemble_scheduling.step[1:-1]}
    assert groups == {s.model_name for s in ranking.ensemble_scheduling.step[1:-1]} and len(groups) == 2
    # An all-item model has nothing to compute once per request: no ranking ensemble.
    plain = build.build(tiny_model(), uniform_plan(tiny_model()), tmp_path / "r2", tmp_path / "e2")
    assert not any("ranking" in m.name for m in plain.models)


def test_structured_request_flattens_to_the_same_samples() -> None:
    model = sided_model()
    request = random_structured_request(model, 4, np.random.default_rng(0))
    flat = request.flattened(model)
    assert flat.dense_features.shape == (4, 5)
    np.testing.assert_array_equal(flat.dense_features[:, [0, 3]], np.repeat(request.user_dense, 4, axis=0))
    np.testing.assert_array_equal(flat.dense_features[:, [1, 2, 4]], request.item_dense)
    assert (flat.sparse["small"] == request.user_sparse["small"]).all()
    assert set(request.tensors()) == {
        naming.USER_DENSE_FEATURES, naming.ITEM_DENSE_FEATURES, "user_sparse_small", "item_sparse_one_row",
        "item_sparse_medium",
    }  # fmt: skip


@requires_server
@pytest.mark.parametrize("backend", ["python", "onnx"])
def test_ranking_scores_equal_the_flattened_forward(tmp_path: Path, server_factory, backend: str) -> None:
    model = sided_model()
    server = server_factory(build.build(model, sided_plan(model), tmp_path / "r", tmp_path / "e", backend=backend))
    for protocol, url in (("grpc", server.grpc_url), ("http", server.http_url)):
        for candidates in (1, 5, 63):
            report = client.check(
                model, url, protocol=protocol, model_name="dlrm_ranking", requests=2, batch_size=candidates,
                seed=candidates, structured=True,
            )  # fmt: skip
            assert report.passed, report
        assert client.check(model, url, protocol=protocol, requests=2, batch_size=16).passed  # the flattened one


@requires_server
def test_bad_ranking_requests_fail_alone(tmp_path: Path, server_factory) -> None:
    model = sided_model()
    server = server_factory(build.build(model, sided_plan(model), tmp_path / "r", tmp_path / "e"))
    rng = np.random.default_rng(0)
    good = random_structured_request(model, 8, rng)
    with client.RankingClient(server.grpc_url, "grpc", "dlrm_ranking") as ranking:
        tensors = good.tensors()
        cases = [
            # Triton checks the user's fixed first dimension itself.
            ({"user_sparse_small": np.zeros((2, 3), np.int64)}, r"input 'user_sparse_small'.*Expected \[1,3\]"),
            ({"item_sparse_medium": np.zeros((3, 1), np.int64)}, "disagree on the number of candidates"),
            ({"item_sparse_medium": np.full((8, 1), 1000)}, "'item_sparse_medium' holds id 1000"),
            ({"user_dense_features": np.zeros((2, 2), np.float32)}, r"'user_dense_features'.*Expected \[1,2\]"),
            ({"item_dense_features": np.zeros((7, 3), np.float32)}, "'item_dense_features' holds 7 candidates"),
        ]
        for change, message in cases:
            with pytest.raises(Exception, match=message):
                ranking.infer({**tensors, **change})
        too_many = random_structured_request(model, 64, rng)
        with pytest.raises(Exception, match="at most 63 candidates"):
            ranking.infer(too_many.tensors())
        served = ranking.infer(tensors)
    np.testing.assert_allclose(served, reference_scores(model, good.flattened(model)), atol=1e-5)

"""The one model protocol: recgen's DLRM and an imported model answer the same questions the same way."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from generator import naming
from generator.model.examples import example_model, tiny_example_model
from generator.model.imported import import_module
from generator.planning.memory import ModelShape, dense_bytes
from tests.model import zoo


@pytest.mark.parametrize("make", [tiny_example_model, example_model])
def test_a_dlrm_describes_itself_through_the_protocol(make) -> None:  # type: ignore[no-untyped-def]
    model = make()
    assert model.dense_parameter_bytes == dense_bytes(
        model.num_dense_features, len(model.tables), model.bottom_mlp, model.top_mlp
    )
    assert ModelShape.of(model).dense_bytes == model.dense_parameter_bytes
    assert [(f.name, f.table, f.side) for f in model.features] == [(t.name, t.name, t.side) for t in model.tables]
    assert model.plan_features == () and model.outputs == [(naming.SCORE, (1,))]
    widths = {side: len(model.dense_indices(side)) for side in ("user", "item")}
    assert model.ranking_dense_tensors() == [
        (naming.USER_DENSE_FEATURES, "user", widths["user"]),
        (naming.ITEM_DENSE_FEATURES, "item", widths["item"]),
    ]
    tower = model.numpy_tower()
    assert tower.dense_sides == tuple(model.dense_sides) and set(tower.weights) == set(model.dense.state_dict())
    assert model.user_split() is None  # its numpy ranking model splits the tower by hand


def test_a_dlrm_dense_graph_is_its_tower() -> None:
    model = tiny_example_model()
    dense = torch.randn(5, model.num_dense_features)
    pools = [torch.randn(5, t.dim) for t in model.tables]
    (score,) = model.dense_graph(dense, *pools)
    torch.testing.assert_close(score, model.dense(dense, pools))


def test_an_imported_model_describes_itself_through_the_protocol() -> None:
    model = import_module(zoo.HeavyUser("dot").eval(), zoo.heavy_user_example(), max_ids={"*": 6})
    model = model.with_user_side(["user_dense", "history", "user_ids"])
    assert model.plan_features == tuple(model.features) and model.numpy_tower() is None and not model.numpy_dense
    assert model.ranking_dense_tensors() == [("user_user_dense", "user", 24), ("item_item_dense", "item", 4)]
    assert model.dense_parameter_bytes == sum(t.numel() * 4 for t in model.cut.remainder.buffers())
    assert model.user_split() is not None


@pytest.mark.parametrize("kind", ["dlrm", "imported"])
def test_with_rows_serves_the_new_rows_and_leaves_the_model_alone(kind: str) -> None:
    if kind == "dlrm":
        model = tiny_example_model()
    else:
        model = import_module(zoo.DcnV2().eval(), zoo.dcn_example(), max_ids={"*": 5})
    table = model.tables[0].name
    before = model.rows_of(table).detach().clone()
    changed = model.with_rows({table: torch.zeros_like(before)})
    assert torch.equal(model.rows_of(table), before) and not changed.rows_of(table).any()
    if kind == "imported":  # the reference becomes the remainder over the new rows
        request = changed.random_request(3, seed=1)
        np.testing.assert_array_equal(changed.reference_outputs(request)[0], changed.served_outputs(request)[0])

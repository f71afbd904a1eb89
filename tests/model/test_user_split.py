"""The user/candidate split of imported dense graphs: what runs once, what crosses, and that it changes nothing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from generator.model.imported import ImportedModel, import_module
from tests.model import zoo

USER_SIDE = ["user_dense", "history", "user_ids"]


def _heavy_user(head: str) -> ImportedModel:
    return import_module(zoo.HeavyUser(head).eval(), zoo.heavy_user_example(), max_ids={"*": 6}).with_user_side(
        USER_SIDE
    )


def _ranking_outputs(model: ImportedModel, candidates: int, seed: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The split's outputs for a ranking request, and the module's for the same request flattened."""
    split = model.user_split()
    assert split is not None
    _, flattened = model.random_ranking_request(candidates, seed)
    dense = [torch.from_numpy(flattened[name]) for name, _ in model.dense_inputs]
    inputs = [*dense, *model.pooled(flattened)]
    inputs = [tensor[:1] if i in split.user_inputs else tensor for i, tensor in enumerate(inputs)]
    with torch.no_grad():
        ours = [tensor.numpy() for tensor in split(inputs)]
    return ours, model.reference_outputs(flattened)


@pytest.mark.parametrize("head", [h for h in zoo.HEAVY_USER_HEADS if h != "batch_normalized"])
def test_the_user_tower_runs_once_and_the_outputs_equal_the_module(head: str) -> None:
    model = _heavy_user(head)
    split = model.user_split()
    assert split is not None
    # user MLP (3 linears, 2 relus), history projection and tanh, the concatenation and its projection
    assert split.user_ops >= 8 and split.user_ops < split.total_ops, str(split)
    # a head over cat([user, item]) has its first layer's user columns computed once too (a second boundary)
    # what crosses: the user vector [1, 16] where the candidates read it, the split layer's user half [1, out]
    crossing = {"mlp": [(16,)], "dot": [(16,)], "cross": [(16,), (32,)], "towers": [(16,), (16,)]}[head]
    assert split.split_linears == (head != "dot"), str(split)
    assert [boundary.dims for boundary in split.boundaries] == crossing, str(split)
    assert not split.stops and split.max_abs_diff <= 1e-5
    for candidates in (1, 2, 40):
        ours, theirs = _ranking_outputs(model, candidates, seed=candidates)
        for got, expected in zip(ours, theirs, strict=True):
            assert got.shape == expected.shape == (candidates, *expected.shape[1:])
            np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)


def test_a_node_that_reads_other_rows_of_the_batch_stops_the_user_side_and_is_named() -> None:
    model = _heavy_user("batch_normalized")
    split = model.user_split()
    assert split is not None
    assert len(split.stops) == 1, str(split)
    stop = split.stops[0]
    assert "norm" in stop.target and stop.source.startswith("zoo.py:") and "rows" in stop.reason
    assert "stopped at" in str(split) and split.max_abs_diff <= 1e-5
    ours, theirs = _ranking_outputs(model, 9, seed=3)  # normalized over the 9 flattened rows, as the module does
    np.testing.assert_allclose(ours[0], theirs[0], atol=1e-5, rtol=0)


def test_a_cross_over_user_and_item_parts_computes_its_projections_user_columns_once() -> None:
    model = import_module(zoo.DcnV2().eval(), zoo.dcn_example(), max_ids={"*": 5}).with_user_side(
        ["user_ids", "features"]
    )
    split = model.user_split()  # x0 = cat(features, user, item, tags); the first cross layer projects x0
    assert split is not None and split.split_linears == 1, str(split)
    # the user columns of that projection [1, 34] cross, and so do the user's parts of x0 (x0 * projection + x0)
    assert {(b.node, b.dims) for b in split.boundaries} == {
        ("features", (6,)),
        ("pooled_user_ids", (16,)),
        ("linear_user_columns", (34,)),
    }, str(split)
    for candidates in (1, 5):
        ours, theirs = _ranking_outputs(model, candidates, seed=candidates)
        np.testing.assert_allclose(ours[0], theirs[0], atol=1e-5, rtol=0)


class _Reshaping(torch.nn.Module):
    """The user's features reshaped with the batch size read from a candidate's pool, and a batch of zeros."""

    def __init__(self) -> None:
        super().__init__()
        self.items = torch.nn.EmbeddingBag(50, 3, mode="sum")

    def forward(self, user: torch.Tensor, item_ids: torch.Tensor, item_offsets: torch.Tensor) -> torch.Tensor:
        item = self.items(item_ids, item_offsets)
        rows = user.reshape(item.shape[0], 2, 3).sum(1)
        return (rows * item).sum(1, keepdim=True) + torch.zeros(user.shape[0], 1)


def test_sizes_read_from_the_batch_are_recomputed_on_each_side() -> None:
    example = (torch.randn(3, 6), torch.tensor([1, 2, 3]), torch.tensor([0, 1, 2]))
    model = import_module(_Reshaping().eval(), example, max_ids={"*": 2}).with_user_side(["user"])
    split = model.user_split()
    assert split is not None
    assert split.user_ops == 2 and [boundary.node for boundary in split.boundaries] == ["sum_1"], str(split)
    batch_reads = [n for n in split.user_graph.graph.nodes if n.target is torch.ops.aten.sym_size.int]
    assert [n.args[0].name for n in batch_reads] == ["user"]  # the user graph reads its own batch of 1
    ours, theirs = _ranking_outputs(model, 6, seed=2)
    np.testing.assert_allclose(ours[0], theirs[0], atol=1e-5, rtol=0)


class _TupleResults(torch.nn.Module):
    """User-side operations with several results (a chunk, a max with its indices) and an integer tensor."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.history = torch.nn.EmbeddingBag(100, 8, mode="sum")
        self.items = torch.nn.EmbeddingBag(50, 8, mode="sum")
        self.user = torch.nn.Linear(6, 16)
        self.out = torch.nn.Linear(8 + 4 + 4 + 8, 1)

    def forward(self, user_dense: torch.Tensor, *ids_and_offsets: torch.Tensor) -> torch.Tensor:
        history_ids, history_offsets, item_ids, item_offsets = ids_and_offsets
        first, second = self.user(user_dense).chunk(2, dim=1)
        peak, where = torch.max(first.view(-1, 2, 4), dim=1)
        history, item = self.history(history_ids, history_offsets), self.items(item_ids, item_offsets)
        mixed = where.float() + item[:, :4].sum(1, keepdim=True)
        return torch.sigmoid(self.out(torch.cat([second * history, peak, mixed, item], 1)))


def test_operations_with_several_results_stay_on_the_user_side() -> None:
    ids, offsets = torch.tensor([1, 2, 3]), torch.tensor([0, 1, 2])
    module = _TupleResults().eval()
    example = (torch.randn(3, 6), ids, offsets, ids.clone(), offsets.clone())  # distinct tensors: distinct inputs
    model = import_module(module, example, max_ids={"*": 3})
    model = model.with_user_side(["user_dense", "ids_and_offsets_0"])
    split = model.user_split()
    assert split is not None and not split.stops and split.user_ops >= 8, str(split)
    for candidates in (1, 5, 33):
        ours, theirs = _ranking_outputs(model, candidates, seed=candidates)
        np.testing.assert_allclose(ours[0], theirs[0], atol=1e-5, rtol=0)


def test_every_input_on_the_user_side_is_refused() -> None:
    model = import_module(zoo.HeavyUser("dot").eval(), zoo.heavy_user_example(), max_ids={"*": 6})
    with pytest.raises(Exception, match="every input"):
        model.with_user_side([*USER_SIDE, "item_ids", "item_categories", "item_dense"])


class _Interleaved(torch.nn.Module):
    """A linear layer over parts that alternate sides ([u, i, u, i]), with or without a bias."""

    def __init__(self, bias: bool) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.bags = torch.nn.ModuleList(torch.nn.EmbeddingBag(40, width, mode="sum") for width in (3, 5, 2, 4))
        self.layer = torch.nn.Linear(3 + 5 + 2 + 4, 6, bias=bias)

    def forward(self, *ids_and_offsets: torch.Tensor) -> torch.Tensor:
        pairs = zip(ids_and_offsets[::2], ids_and_offsets[1::2], strict=True)
        parts = [bag(ids, offsets) for bag, (ids, offsets) in zip(self.bags, pairs, strict=True)]
        return torch.tanh(self.layer(torch.cat(parts, 1)))


@pytest.mark.parametrize("bias", [True, False])
def test_a_linear_layer_over_interleaved_sides_is_split_by_its_columns_exactly(bias: bool) -> None:
    example = [t for _ in range(4) for t in (torch.tensor([1, 2, 3]), torch.tensor([0, 1, 2]))]
    example = [t.clone() for t in example]  # a distinct tensor per input
    model = import_module(_Interleaved(bias).eval(), example, max_ids={"*": 3})
    model = model.with_user_side([model.features[0].name, model.features[2].name])
    split = model.user_split()
    assert split is not None and split.split_linears == 1, str(split)
    assert [boundary.dims for boundary in split.boundaries] == [(6,)], str(split)  # only the user columns' product
    for candidates in (1, 4, 19):
        ours, theirs = _ranking_outputs(model, candidates, seed=candidates)
        np.testing.assert_allclose(ours[0], theirs[0], atol=1e-6, rtol=0)

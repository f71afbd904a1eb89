import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from google.protobuf import json_format
from hypothesis import given, settings
from hypothesis import strategies as st
from tritonclient.utils import InferenceServerException

from generator import naming
from generator.check.client import RankingClient
from generator.errors import ModelLoadError
from generator.model.dlrm import pool_rows
from generator.planning.plan import Placement, Plan, table_plan, uniform_plan
from generator.repository import build, configs, layout, params, wiring
from generator.traffic.requests import random_request, reference_scores
from generator.triton_models import recgen_kernels as kernels
from generator.triton_models import recgen_pooling, router_model
from tests.conftest import requires_server, tiny_model


def _routing(plan: Plan, tmp_path: Path, dense: layout.DenseSignature = ()) -> router_model.Routing:
    """The router of `plan`; it checks the dense tensors of `dense` (none by default)."""
    router = configs.router_config(plan, wiring.wire_layout(plan), dense)
    config = json.loads(json_format.MessageToJson(router, preserving_proto_field_name=True))
    return router_model.load_routing(config, tmp_path)


INPUTS = {
    "sparse_one_row": np.array([[0], [-1]]),
    "sparse_small": np.array([[0, 6, -1], [-1, -1, -1]]),
    "sparse_medium": np.array([[999], [0]]),
}


def test_route_request_packs_every_group(tmp_path: Path) -> None:
    plan = uniform_plan(tiny_model(), shards_per_table=3, group_by="shard")
    outputs = router_model.route_request(_routing(plan, tmp_path), INPUTS)
    assert set(outputs) == {naming.group_local_ids(g.index) for g in plan.shard_groups()}
    # groups: 0 one_row/0, 1-3 small/0-2, 4-6 medium/0-2
    assert outputs["local_ids__g1"].tolist() == [[0, -1, -1], [-1, -1, -1]]
    assert outputs["local_ids__g3"].tolist() == [[-1, 2, -1], [-1, -1, -1]]
    assert outputs["local_ids__g6"].tolist() == [[333], [-1]]


def test_grouped_routing_then_pooling_equals_whole_tables(tmp_path: Path) -> None:
    model = tiny_model()
    plan = uniform_plan(model, shards_per_table=3)
    (group,) = plan.shard_groups()
    (packed,) = router_model.route_request(_routing(plan, tmp_path), INPUTS).values()
    tables = {t.spec.name: t for t in plan.tables}
    wired = wiring.wire_layout(plan).of(group)
    slots = wired.columns.tables
    description = params.shard_group(wired)
    for s, member in zip(group.shards, description.shards, strict=True):
        np.save(tmp_path / member.rows_file, model.embeddings[s.table].detach().numpy()[s.row_start : s.row_end])
    pooled = recgen_pooling.pool_group(recgen_pooling.load_group_rows(description, tmp_path), packed)
    for table in model.tables:
        slot = slots.index(table.name)
        total = pooled[:, slot * 8 : (slot + 1) * 8]
        ids = INPUTS[f"sparse_{table.name}"]
        weight = model.embeddings[table.name].detach().numpy()
        expected = np.stack([weight[row[row >= 0]].sum(axis=0) for row in ids])
        np.testing.assert_allclose(total, expected, atol=1e-6)
    assert tables["medium"].boundaries == [0, 333, 666, 1000]


@pytest.mark.parametrize(("value", "shown"), [(7, "id 7"), (-2, "id -2")])
def test_bad_id_names_tensor_value_and_range(tmp_path: Path, value: int, shown: str) -> None:
    routing = _routing(uniform_plan(tiny_model()), tmp_path)
    inputs = dict(INPUTS, sparse_small=np.array([[0, value, -1], [1, 2, 3]]))
    with pytest.raises(ValueError, match=rf"'sparse_small' holds {shown}.*-1 \(padding\) to 6"):
        router_model.route_request(routing, inputs)


def test_permuted_table_reads_ranks_file(tmp_path: Path) -> None:
    model = tiny_model()
    base = uniform_plan(model, shards_per_table=2, group_by="shard")
    order = np.arange(1000)[::-1].copy()  # hottest = highest id
    medium = table_plan(model.tables[2], [0, 10, 1000], [Placement(), Placement()], row_order=order)
    plan = Plan("dlrm", (base.tables[0], base.tables[1], medium), group_by="shard")
    np.save(tmp_path / router_model.ranks_file("medium"), medium.rank_of_row())
    outputs = router_model.route_request(_routing(plan, tmp_path), dict(INPUTS, sparse_medium=np.array([[999], [0]])))
    # groups: 0 one_row, 1-2 small, 3-4 medium
    assert outputs["local_ids__g3"].tolist() == [[0], [-1]]
    assert outputs["local_ids__g4"].tolist() == [[-1], [989]]


def test_ranking_request_becomes_one_batch_with_the_user_in_row_zero(tmp_path: Path) -> None:
    from tests.test_ranking import sided_model, sided_plan

    plan = sided_plan(sided_model())
    config = json.loads(
        json_format.MessageToJson(
            configs.ranking_router_config(plan, wiring.wire_layout(plan), sided_model()),
            preserving_proto_field_name=True,
        )
    )
    for table in plan.tables:
        if table.row_order is not None:
            np.save(tmp_path / router_model.ranks_file(table.spec.name), table.rank_of_row())
    routing = router_model.load_routing(config, tmp_path)
    inputs = {
        "item_sparse_one_row": np.array([[0], [-1]]),
        "user_sparse_small": np.array([[6, 2, -1]]),
        "item_sparse_medium": np.array([[1], [2]]),
    }
    combined = router_model.combine_ranking_request(routing, inputs)
    assert combined["user_sparse_small"].tolist() == [[6, 2, -1], [-1, -1, -1], [-1, -1, -1]]
    assert combined["item_sparse_medium"].tolist() == [[-1], [1], [2]]
    with pytest.raises(ValueError, match="'user_sparse_small' holds 2 rows"):
        router_model.combine_ranking_request(routing, {**inputs, "user_sparse_small": np.zeros((2, 3), np.int64)})


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 400), st.integers(0, 1000), st.booleans(), st.booleans())
def test_group_pooling_is_the_same_on_both_paths(batch: int, seed: int, mixed_widths: bool, weighted: bool) -> None:
    """Small executions pool in one pass, large ones slot by slot, mixed row widths stack by stack, with or without
    per-id weights: all equal the reference pooling of each slot's own table."""
    rng = np.random.default_rng(seed)
    tables = [rng.standard_normal((150, 4)).astype(np.float32), rng.standard_normal((90, 8)).astype(np.float32)]
    slot_tables = [0, 1, 0] if mixed_widths else [0, 0, 0]
    stacks = [kernels.with_padding_row(table) for table in (tables if mixed_widths else tables[:1])]
    rows = recgen_pooling.GroupRows(stacks, [(0, 1), (1, 4), (4, 24)], slot_tables)
    packed = np.concatenate(
        [
            rng.integers(-1, len(tables[table]), size=(batch, last - first))
            for (first, last), table in zip(rows.slot_columns, slot_tables, strict=True)
        ],
        axis=1,
    ).astype(np.int32)
    weights = rng.uniform(-1.0, 2.0, packed.shape).astype(np.float32) if weighted else None
    expected = np.concatenate(
        [
            pool_rows(
                torch.from_numpy(tables[table]),
                torch.from_numpy(packed[:, a:b].astype(np.int64)),
                None if weights is None else torch.from_numpy(weights[:, a:b]),
            ).numpy()
            for (a, b), table in zip(rows.slot_columns, slot_tables, strict=True)
        ],
        axis=1,
    )
    np.testing.assert_allclose(recgen_pooling.pool_group(rows, packed, weights), expected, atol=1e-5)


class _WeightedAndPadded(torch.nn.Module):
    """A weighted sum bag and a mean bag with a padding_idx, sharing nothing."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.clicks = torch.nn.EmbeddingBag(30, 4, mode="sum")
        self.tags = torch.nn.EmbeddingBag(12, 4, mode="mean", padding_idx=0)

    def forward(
        self, x: torch.Tensor, ids: torch.Tensor, offsets: torch.Tensor, seconds: torch.Tensor, tags: torch.Tensor
    ) -> torch.Tensor:
        return x + self.clicks(ids, offsets, per_sample_weights=seconds) + self.tags(tags)


def test_router_packs_id_weights_beside_the_ids_and_drops_padding_ids(tmp_path: Path) -> None:
    from generator.model.imported import import_module

    example = (
        torch.randn(2, 4),
        torch.tensor([1, 2, 3]),
        torch.tensor([0, 2]),
        torch.tensor([0.5, 2.0, 1.5]),
        torch.tensor([[1, 0], [3, 4]]),
    )
    imported = import_module(_WeightedAndPadded().eval(), example, max_ids={"*": 3})
    assert [(f.name, f.weighted, f.padding_id) for f in imported.features] == [("ids", True, -1), ("tags", False, 0)]
    plan = uniform_plan(imported, shards_per_table=2, group_by="shard")
    routing = _routing(plan, tmp_path)
    assert routing.input_names == ["sparse_ids", "sparse_tags", "weights_ids"]
    inputs = {
        "sparse_ids": np.array([[1, 20, -1], [-1, -1, -1]]),
        "weights_ids": np.array([[0.5, 3.0, 9.0], [7.0, 7.0, 7.0]], np.float32),
        "sparse_tags": np.array([[0, 5, 0], [7, 0, -1]]),
    }
    outputs = router_model.route_request(routing, inputs)
    # groups: 0 clicks/0 (rows 0-14), 1 clicks/1 (15-29), 2 tags/0, 3 tags/1; only clicks' groups get weights
    assert outputs["local_ids__g0"].tolist() == [[1, -1, -1], [-1, -1, -1]]
    assert outputs["id_weights__g0"].tolist() == [[0.5, 0, 0], [0, 0, 0]]
    assert outputs["local_ids__g1"].tolist() == [[-1, 5, -1], [-1, -1, -1]]
    assert outputs["id_weights__g1"].tolist() == [[0, 3.0, 0], [0, 0, 0]]
    assert "id_weights__g2" not in outputs and "id_weights__g3" not in outputs
    assert outputs["local_ids__g2"].tolist() == [[-1, 5, -1], [-1, -1, -1]]  # the padding id 0 is dropped
    assert outputs[naming.POOL_COUNTS].tolist() == [[1.0], [1.0]]  # and counts for no mean
    with pytest.raises(ValueError, match=r"'weights_ids' is shaped \[2, 2\].*'sparse_ids' \[2, 3\]"):
        router_model.route_request(routing, {**inputs, "weights_ids": np.ones((2, 2), np.float32)})


def test_the_router_checks_dense_features_for_finite_values_unless_the_plan_allows_them(tmp_path: Path) -> None:
    model = tiny_model()
    checked = uniform_plan(model, shards_per_table=1)
    config = json.loads(
        json_format.MessageToJson(
            configs.router_config(checked, wiring.wire_layout(checked), model.num_dense_features),
            preserving_proto_field_name=True,
        )
    )
    routing = router_model.load_routing(config, tmp_path)
    assert routing.finite_inputs == (naming.DENSE_FEATURES,)
    assert routing.input_names[-1] == naming.DENSE_FEATURES
    assert [i["name"] for i in config["input"]][-1] == naming.DENSE_FEATURES
    dense = np.zeros((2, model.num_dense_features), np.float32)
    kernels.check_finite(routing.finite_inputs, {**INPUTS, naming.DENSE_FEATURES: dense})
    for value, shown in ((np.nan, "nan"), (np.inf, "inf"), (-np.inf, "-inf")):
        dense[1, 3] = value
        with pytest.raises(ValueError, match=rf"'dense_features' holds a non-finite value \({shown}\) at \[1, 3\]"):
            kernels.check_finite(routing.finite_inputs, {**INPUTS, naming.DENSE_FEATURES: dense})
    allowed = dataclasses.replace(checked, check_finite=False)
    config = json.loads(
        json_format.MessageToJson(
            configs.router_config(allowed, wiring.wire_layout(allowed), model.num_dense_features),
            preserving_proto_field_name=True,
        )
    )
    assert router_model.load_routing(config, tmp_path).finite_inputs == ()
    assert naming.DENSE_FEATURES not in [i["name"] for i in config["input"]]


@requires_server
@pytest.mark.server
@pytest.mark.parametrize("lookup_step", ["fused", "separate"])
def test_a_config_that_claims_more_rows_cannot_make_a_request_read_past_the_table(
    tmp_path: Path, server_factory, lookup_step: str
) -> None:
    """num_rows raised alone: the router refuses to load. With its last shard too: the id fails its own request."""
    model = tiny_model()
    plan = dataclasses.replace(uniform_plan(model, shards_per_table=1, lookup_step=lookup_step), count_accesses=False)
    result = build.build(model, plan, tmp_path / "r", tmp_path / "e")
    config_path = tmp_path / "r" / "dlrm_router" / naming.CONFIG_FILE
    text = config_path.read_text()
    assert text.count('\\"num_rows\\":1000,') == 1 and text.count('\\"boundaries\\":[0,1000]') == 1
    config_path.write_text(text.replace('\\"num_rows\\":1000,', '\\"num_rows\\":6000,'))
    with pytest.raises(
        ModelLoadError, match=r"table 'medium': num_rows 6000 and shard boundaries \[0, 1000\] disagree"
    ):
        server_factory(result)
    config_path.write_text(
        text.replace('\\"num_rows\\":1000,', '\\"num_rows\\":6000,').replace(
            '\\"boundaries\\":[0,1000]', '\\"boundaries\\":[0,6000]'
        )
    )
    server = server_factory(result)
    request = random_request(model, 4, np.random.default_rng(0))
    hostile = dataclasses.replace(request, sparse={**request.sparse, "medium": np.full((4, 1), 5000, np.int64)})
    with RankingClient(server.grpc_url, "grpc") as client:
        with pytest.raises(InferenceServerException, match=r"row id 50\d\d is outside the \d+ rows this step holds"):
            client.score(hostile)
        np.testing.assert_allclose(client.score(request), reference_scores(model, request), atol=1e-5)

"""The fused lookup step: the router pools the shard groups on its own device, in a two-step ensemble."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from google.protobuf import json_format
from hypothesis import given, settings
from hypothesis import strategies as st

from generator import naming
from generator.check import client
from generator.deploy.distributed import build_distributed
from generator.errors import UserInputError
from generator.model.dlrm import DLRM, TableSpec, pool_rows
from generator.planning.plan import Placement, Plan, table_plan, uniform_plan
from generator.repository import validation, wiring
from generator.repository.build import build
from generator.triton_models import recgen_params as params
from generator.triton_models import router_model
from tests.conftest import requires_server, tiny_model


def _skewed_plan(model: DLRM, gpu_table: str) -> Plan:
    """Hot shards with more instances than cold ones (several groups), `gpu_table`'s shards on GPU."""
    tables = []
    for spec in model.tables:
        boundaries = [0, max(1, spec.num_rows // 4), spec.num_rows] if spec.num_rows > 1 else [0, 1]
        counts = [3, 1][: len(boundaries) - 1]
        device = "gpu" if spec.name == gpu_table else "cpu"
        placements = [Placement(count, device) for count in counts]
        tables.append(table_plan(spec, boundaries, placements))
    return Plan("dlrm", tuple(tables), router=Placement(2), lookup_step="fused")


def test_the_router_pools_the_groups_on_its_device_and_leaves_the_others_apart() -> None:
    plan = _skewed_plan(tiny_model(), "small")
    pooled, apart = plan.router_pooled_groups(), plan.step_groups()
    assert {g.placement.device for g in pooled} == {"cpu"} and len(pooled) == 2  # 3 and 1 instances
    assert {g.placement.device for g in apart} == {"gpu"}
    assert sorted(g.index for g in [*pooled, *apart]) == [g.index for g in plan.shard_groups()]
    assert dataclasses.replace(plan, lookup_step="separate").router_pooled_groups() == []
    assert uniform_plan(tiny_model(), device="gpu").router_pooled_groups() == []
    with pytest.raises(UserInputError, match="`lookup_step` must be one of fused, separate"):
        dataclasses.replace(plan, lookup_step="merged")  # type: ignore[arg-type]


def test_fused_build_has_two_steps_and_the_stacked_rows_in_the_router(tmp_path: Path) -> None:
    model = tiny_model()
    plan = uniform_plan(model, shards_per_table=3)
    result = build(model, plan, tmp_path / "repo", tmp_path / "ens")
    models = ["dlrm_dense", "dlrm_profile", "dlrm_router"]
    assert sorted(p.name for p in (tmp_path / "repo").iterdir() if p.is_dir()) == models
    ensemble = validation.parse_strict((tmp_path / "ens" / "dlrm" / naming.CONFIG_FILE).read_text())
    assert [step.model_name for step in ensemble.ensemble_scheduling.step] == ["dlrm_router", "dlrm_dense"]
    assert "fused lookup step" in str(result)
    (group,) = plan.shard_groups()
    stack = np.load(tmp_path / "repo" / "dlrm_router" / "1" / naming.router_rows_file(group.index, 0))
    weights = [model.embeddings[s.table].detach().numpy()[s.row_start : s.row_end] for s in group.shards]
    np.testing.assert_array_equal(stack, np.concatenate([*weights, np.zeros((1, 8), np.float32)]))


def test_the_ranking_router_maps_the_flattened_routers_rows(fused_repository: tuple[DLRM, Plan, Path]) -> None:
    _, plan, repository = fused_repository
    ranking_dir = repository / "dlrm_router_ranking"
    assert not list(ranking_dir.glob("1/group_rows__*"))
    config = validation.parse_strict((ranking_dir / naming.CONFIG_FILE).read_text())
    assert params.RouterPoolingParams.from_json(config.parameters["router_pooling"].string_value).rows_model == (
        "dlrm_router"
    )
    flattened, ranking = _router(repository, "dlrm_router"), _router(repository, "dlrm_router_ranking")
    assert len(flattened.pooled) == len(ranking.pooled) == len(plan.router_pooled_groups()) == 2
    for ours, theirs in zip(flattened.pooled, ranking.pooled, strict=True):
        for a, b in zip(ours.rows.stacks, theirs.rows.stacks, strict=True):
            assert not a.flags.writeable and not b.flags.writeable and np.array_equal(a, b)


def test_the_distributed_layout_serves_the_fused_plan_it_is_given(tmp_path: Path) -> None:
    """The front's routers pool what the plan leaves to them; only the shards of their own step are services."""
    model = tiny_model()
    plan = uniform_plan(model, shards_per_table=2)
    big = plan.tables[-1]  # the tiny model's largest table takes both shards
    own = big.shards[1]
    table = dataclasses.replace(big, shards=(big.shards[0], dataclasses.replace(own, router_pooled=False)))
    plan = dataclasses.replace(plan, tables=(*plan.tables[:-1], table))
    result = build_distributed(model, plan, tmp_path / "dist")
    assert result.plan.lookup_step == "fused"
    steps = wiring.wire_layout(result.plan).steps
    assert [group.model for group in result.topology.groups] == [wired.model_name for wired in steps]
    assert len(result.topology.groups) == 1
    pooled_bytes = sum(t.embedding_bytes for t in plan.tables) - big.shard_bytes(own)
    assert result.topology.front.rows_bytes == pooled_bytes
    separate = build_distributed(model, dataclasses.replace(plan, lookup_step="separate"), tmp_path / "separate")
    assert len(separate.topology.groups) == len(plan.shards) and separate.topology.front.rows_bytes == 0


def _router(repository: Path, name: str) -> router_model.TritonPythonModel:
    """The router model as Triton initializes it (its config as JSON, its directory and version)."""
    config = validation.parse_strict((repository / name / naming.CONFIG_FILE).read_text())
    args = {
        "model_name": name,
        "model_config": json_format.MessageToJson(config, preserving_proto_field_name=True),
        "model_repository": str(repository / name),
        "model_version": naming.MODEL_VERSION,
    }
    model = router_model.TritonPythonModel()
    with mock.patch.object(router_model, "_cache_metrics", lambda name: None):  # Prometheus needs the server
        model.initialize(args)
    return model


def _sided_model() -> DLRM:
    """A user-side history, a 1-row table, an item table (so a ranking ensemble is built too)."""
    tables = [TableSpec("history", 300, 4, 6, "user"), TableSpec("one_row", 1, 4, 1), TableSpec("item", 50, 4, 2)]
    return DLRM(num_dense_features=2, tables=tables, bottom_mlp=[4], top_mlp=[4, 1], seed=3).eval()


def _with_front_cache(plan: Plan, rows: int) -> Plan:
    """The plan with each table's hottest `rows` ranks (at most all of them) in the router's front cache."""
    tables = tuple(dataclasses.replace(t, cached_rows=min(rows, t.spec.num_rows)) for t in plan.tables)
    return dataclasses.replace(plan, tables=tables)


@pytest.fixture(scope="module")
def fused_repository(tmp_path_factory: pytest.TempPathFactory) -> tuple[DLRM, Plan, Path]:
    model = _sided_model()
    plan = _skewed_plan(model, "item")
    plan = _with_front_cache(plan, 3)
    root = tmp_path_factory.mktemp("fused")
    build(model, plan, root / "repo", root / "ens")
    return model, plan, root / "repo"


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), batch=st.integers(1, 9))
def test_every_table_pool_is_the_sum_of_its_parts(
    fused_repository: tuple[DLRM, Plan, Path], seed: int, batch: int
) -> None:
    """Fused partial sums, the GPU group's packed ids (pooled here by brute force) and the front cache add up."""
    model, plan, repository = fused_repository
    router = _router(repository, "dlrm_router")
    generator = np.random.default_rng(seed)
    inputs = {
        naming.sparse_input(t.name): generator.integers(-1, t.num_rows, (batch, t.max_ids_per_sample))
        for t in model.tables
    }
    inputs[naming.DENSE_FEATURES] = generator.normal(size=(batch, model.num_dense_features)).astype(np.float32)
    outputs = router._flattened(inputs)
    pooled = {group.index for group in plan.router_pooled_groups()}
    for group in plan.shard_groups():
        assert (naming.group_partial_sums(group.index) in outputs) == (group.index in pooled)
        assert (naming.group_local_ids(group.index) in outputs) == (group.index not in pooled)
    stacked = {  # brute force for the GPU group: its stacked rows, indexed by the packed ids
        group.index: np.concatenate([model.embeddings[s.table].detach().numpy()[s.row_start : s.row_end]
                                     for s in group.shards])
        for group in plan.step_groups()
    }  # fmt: skip
    for group in plan.step_groups():
        ids = outputs.pop(naming.group_local_ids(group.index))
        group_layout = wiring.wire_layout(plan).of(group).columns
        parts = [np.where((ids[:, first:last] >= 0)[..., None], stacked[group.index][ids[:, first:last]], 0).sum(1)
                 for first, last in group_layout.columns]  # fmt: skip
        outputs[naming.group_partial_sums(group.index)] = np.concatenate(parts, axis=1)
    for feature, columns in zip(plan.sparse_features, wiring.wire_layout(plan).part_columns, strict=True):
        total = sum(outputs[tensor][:, first:last] for tensor, first, last in columns)
        expected = pool_rows(
            model.embeddings[feature.table].detach(), torch.from_numpy(inputs[naming.sparse_input(feature.name)])
        )
        np.testing.assert_allclose(total, expected.numpy(), atol=1e-6)


@requires_server
@pytest.mark.parametrize("lookup_step", ["fused", "separate"])
def test_both_lookup_steps_serve_pytorch_scores(tmp_path: Path, server_factory, lookup_step: str) -> None:
    model = _sided_model()
    plan = uniform_plan(model, shards_per_table=3, instance_count=2, lookup_step=lookup_step)  # type: ignore[arg-type]
    plan = _with_front_cache(plan, 2)
    server = server_factory(build(model, plan, tmp_path / "repo", tmp_path / "ens"))
    ensemble = validation.parse_strict((tmp_path / "ens" / "dlrm" / naming.CONFIG_FILE).read_text())
    assert len(ensemble.ensemble_scheduling.step) == (2 if lookup_step == "fused" else 3)
    for protocol, url in (("grpc", server.grpc_url), ("http", server.http_url)):
        report = client.check(model, url, protocol=protocol, requests=3, batch_size=17)
        assert report.passed, report
        ranking = client.check(
            model, url, protocol=protocol, model_name="dlrm_ranking", requests=2, batch_size=9, structured=True
        )
        assert ranking.passed, ranking

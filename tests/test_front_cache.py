"""The front cache (FlexEMR): the router keeps the hottest rows, pools them itself, and the plan accounts for it."""

import json
import re
import urllib.request
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import json_format

from generator.check import client
from generator.planning.memory import ModelShape
from generator.planning.placement import allocate_front_cache
from generator.planning.plan_file import load_plan, save_plan
from generator.planning.planner import plan_from_report, plan_model
from generator.repository import build, configs, export, wiring
from generator.traffic.profile import TableShape, zipf_profile
from generator.traffic.requests import random_request
from generator.triton_models import recgen_access, router_model
from tests.conftest import requires_server
from tests.test_ranking import sided_model, sided_plan


def _profile(model, alpha=1.2):
    shapes = [TableShape(t.name, t.num_rows, t.max_ids_per_sample) for t in model.tables]
    return zipf_profile(shapes, alpha, samples=20_000, seed=3)


def test_cache_takes_the_rows_with_the_most_lookups_per_byte() -> None:
    model = sided_model()
    shape, profile = ModelShape.of(model), _profile(model)
    assert allocate_front_cache(shape, profile, 0) == [0, 0, 0]
    cached = allocate_front_cache(shape, profile, 40 * 32)  # 40 rows of dim 8
    assert sum(cached) == 40 and all(c <= t.num_rows for c, t in zip(cached, model.tables, strict=True))
    # Brute force: the 40 largest counts over all tables (rows have the same size here).
    everything = sorted(
        (count for spec in model.tables for count in profile.table(spec.name).ranked_counts()), reverse=True
    )
    chosen = sum(
        float(profile.table(spec.name).ranked_counts()[:rows].sum())
        for spec, rows in zip(model.tables, cached, strict=True)
    )
    assert chosen == pytest.approx(sum(everything[:40]))


def test_plan_with_a_cache_expects_hits_and_needs_no_more_shard_replicas(tmp_path: Path) -> None:
    model = sided_model()
    shape, profile = ModelShape.of(model), _profile(model)
    without = plan_model(shape, profile, target_qps=20_000, max_shards_per_table=3)
    with_cache = plan_model(shape, profile, target_qps=20_000, max_shards_per_table=3, front_cache_bytes=64 * 32)
    assert without.expected_hit_rate == 0 and 0.3 < with_cache.expected_hit_rate < 1
    assert sum(s.replicas for s in with_cache.shards) <= sum(s.replicas for s in without.shards)
    assert "front cache" in str(with_cache) and with_cache.to_dict()["front_cache"]["bytes"] == 64 * 32
    plan = plan_from_report(with_cache, shape, profile)
    assert [t.cached_rows for t in plan.tables] == list(with_cache.cached_rows)
    save_plan(plan, tmp_path / "plan.json")
    assert [t.cached_rows for t in load_plan(tmp_path / "plan.json").tables] == list(with_cache.cached_rows)


def cached_plan(model):
    plan = sided_plan(model)
    one_row, small, medium = plan.tables
    return replace(plan, tables=(one_row, replace(small, cached_rows=2), replace(medium, cached_rows=30)))


def test_router_pools_cached_ids_itself_and_hides_them_from_the_shards(tmp_path: Path) -> None:
    model = sided_model()
    plan = cached_plan(model)
    wire = wiring.wire_layout(plan)
    export.export_router(model, plan, wire, tmp_path)
    config = json.loads(
        json_format.MessageToJson(configs.router_config(plan, wire, ()), preserving_proto_field_name=True)
    )
    routing = router_model.load_routing(config, tmp_path)
    medium = plan.tables[2]
    hot_id, cold_id = int(medium.original_rows()[5]), int(medium.original_rows()[500])
    inputs = {
        "sparse_one_row": np.array([[0], [0]]),
        "sparse_small": np.array([[0, 1, 6], [-1, -1, -1]]),  # ranks 0, 1 cached (identity order), 6 not
        "sparse_medium": np.array([[hot_id], [cold_id]]),
    }
    counts = recgen_access.CacheCounts()
    outputs = router_model.route_request(routing, inputs, counts)
    assert (counts.lookups, counts.hits) == (5, 3)
    partials = outputs["partial_sums__cache"]  # slots: small, medium
    weights = {t.name: model.embeddings[t.name].detach().numpy() for t in model.tables}
    np.testing.assert_allclose(partials[0, :8], weights["small"][0] + weights["small"][1], atol=1e-6)
    np.testing.assert_allclose(partials[0, 8:], weights["medium"][hot_id], atol=1e-6)
    assert not partials[1].any()
    packed = np.concatenate([outputs[name] for name, _ in routing.outputs], axis=1)
    assert (packed >= 0).sum() == 4  # 7 ids, 3 served by the cache: one_row x2, small's id 6, the cold medium id
    assert (packed[1] >= 0).sum() == 2


def _metric(text: str, name: str) -> float:
    match = re.search(rf'^{name}{{model="dlrm_router"}} ([0-9.e+]+)$', text, re.MULTILINE)
    assert match, f"{name} not in /metrics"
    return float(match.group(1))


@requires_server
@pytest.mark.parametrize("backend", ["python", "onnx"])
def test_cached_repository_serves_pytorch_scores_and_reports_its_hit_rate(
    tmp_path: Path, server_factory, backend: str
) -> None:
    model = sided_model()
    plan = cached_plan(model)
    server = server_factory(build.build(model, plan, tmp_path / "r", tmp_path / "e", backend=backend))
    for protocol, url in (("grpc", server.grpc_url), ("http", server.http_url)):
        assert client.check(model, url, protocol=protocol, requests=3, batch_size=32).passed
        assert client.check(
            model, url, protocol=protocol, model_name="dlrm_ranking", requests=2, batch_size=20, structured=True
        ).passed
    rng = np.random.default_rng(7)
    request = random_request(model, 40, rng)
    rank_of = {t.spec.name: t.rank_of_row() for t in plan.tables}
    expected_hits = expected_lookups = 0
    for table in plan.tables:
        if table.cached_rows:
            ids = request.sparse[table.spec.name]
            ranks = ids if rank_of[table.spec.name] is None else rank_of[table.spec.name][np.maximum(ids, 0)]
            expected_lookups += int((ids >= 0).sum())
            expected_hits += int(((ids >= 0) & (ranks < table.cached_rows)).sum())
    with urllib.request.urlopen(server.metrics_url) as response:
        before = response.read().decode()
    with client.RankingClient(server.grpc_url, "grpc") as ranking:
        ranking.score(request)
    with urllib.request.urlopen(server.metrics_url) as response:
        after = response.read().decode()
    lookups = _metric(after, "recgen_front_cache_lookups_total") - _metric(before, "recgen_front_cache_lookups_total")
    hits = _metric(after, "recgen_front_cache_hits_total") - _metric(before, "recgen_front_cache_hits_total")
    assert (lookups, hits) == (expected_lookups, expected_hits) and 0 < hits < lookups


def test_edge_bytes_pooled_partials_vs_raw_rows() -> None:
    from generator.repository.edges import edge_bytes

    model = sided_model()
    profile = _profile(model)
    plan = sided_plan(model)
    plain = edge_bytes(plan, profile, 100)
    # One group per placement: [1 + 3 + 1] id columns and 3 slots in group 0, medium's hot shard alone in group 1.
    assert plain.ids_to_groups == 100 * (5 + 1) * 4
    assert plain.partials_to_dense == 100 * (3 + 1) * 8 * 4
    lookups_per_sample = sum(profile.table(t.name).mean_ids_per_sample for t in model.tables)
    assert plain.ids_reaching_groups == pytest.approx(100 * lookups_per_sample)
    assert plain.raw_rows_instead == pytest.approx(plain.ids_reaching_groups * 8 * 4)
    cached = edge_bytes(cached_plan(model), profile, 100)
    assert cached.ids_reaching_groups < plain.ids_reaching_groups and cached.cache_partials == 100 * 2 * 8 * 4
    assert "pooled partials" in str(cached)

"""The native router against router_model.py's numpy reference, through a real server: permuted tables and the
front cache, every row dtype, mean pooling, padding ids and weights, fused and separate lookup steps, flattened and
ranking requests; the same request errors; the access counters and cache metrics the Python router keeps."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import pytest
import tritonclient.grpc as grpc_client
from google.protobuf import json_format
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tritonclient.utils import InferenceServerException

from generator import naming, native
from generator.check import client
from generator.deploy import server as serve
from generator.model.dlrm import DLRM, TableSpec
from generator.model.imported import import_module
from generator.planning import precision
from generator.planning.plan import Placement, Plan, table_plan, uniform_plan
from generator.repository import native_models, validation
from generator.repository.build import build
from generator.triton_models import recgen_access as access
from generator.triton_models import recgen_compiled as compiled
from generator.triton_models import recgen_kernels as kernels
from generator.triton_models import recgen_params as params
from generator.triton_models import recgen_pooling as pooling
from generator.triton_models import router_model
from tests.conftest import SERVER_READY_TIMEOUT_S, requires_server, tiny_model
from tests.model import zoo
from tests.native.conftest import STOP_GRACE_S, assert_refused

ROUTERS = ("router", "router_ranking")


def _permuted_cached_plan(model: DLRM) -> Plan:
    """Every table in hotness order (a reversed id order), hot and cold shards, the hottest ranks front-cached."""
    tables = []
    for spec in model.tables:
        boundaries = [0, max(1, spec.num_rows // 3), spec.num_rows] if spec.num_rows > 1 else [0, 1]
        order = np.arange(spec.num_rows)[::-1].copy()
        placements = [Placement(2), Placement(1)][: len(boundaries) - 1]
        tables.append(table_plan(spec, boundaries, placements, row_order=order))
    tables = [dataclasses.replace(t, cached_rows=min(3, t.spec.num_rows)) for t in tables]
    return Plan("cached", tuple(tables), router=Placement(2), lookup_step="fused")


def _cases() -> dict[str, tuple[Any, Any]]:
    """name -> (model, plan)."""
    sided = DLRM(
        num_dense_features=2,
        tables=[TableSpec("history", 300, 4, 6, "user"), TableSpec("one_row", 1, 4, 1), TableSpec("item", 50, 4, 2)],
        bottom_mlp=[4],
        top_mlp=[4, 1],
        seed=3,
    ).eval()
    tiny = tiny_model()
    dtypes = dict(zip([t.name for t in tiny.tables], ["fp32", "fp16", "int8"], strict=True))
    widths = import_module(zoo.DcnV2().eval(), zoo.dcn_example(), max_ids={"tag_ids": 3, "*": 4})
    towers = import_module(
        zoo.TwoTower(weighted=True).eval(), zoo.two_tower_example(weighted=True), max_ids={"*": 4}
    ).with_user_side(["viewed"])
    return {
        "cached": (sided, _permuted_cached_plan(sided)),
        "dtypes": (tiny, uniform_plan(tiny, name="dtypes", shards_per_table=3, row_dtypes=dtypes)),
        "widths": (widths, uniform_plan(widths, name="widths", shards_per_table=2)),
        "weighted": (towers, uniform_plan(towers, name="weighted", lookup_step="separate")),
    }


def _router_dirs(repository: Path) -> list[Path]:
    configs = repository.glob(f"*/{naming.CONFIG_FILE}")
    routing = params.RoutingParams.PARAMETER
    return sorted(path.parent for path in configs if routing in validation.parse_strict(path.read_text()).parameters)


@pytest.fixture(scope="module")
def served(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, native_library: Path
) -> Iterator[Any]:
    root = tmp_path_factory.mktemp("native_routers")
    cases = _cases()
    repositories: list[Path] = []
    for name, (model, plan) in cases.items():
        result = build(model, plan, root / f"{name}_models", root / f"{name}_ens")
        for router in _router_dirs(result.repositories[0]):
            native_models.use_native_step(router, "router", native_library)
        repositories += result.repositories
    log = root / "tritonserver.log"
    failed_before = request.session.testsfailed
    try:
        with serve.running_server(
            repositories, timeout_s=SERVER_READY_TIMEOUT_S, log_path=log, stop_grace_s=STOP_GRACE_S
        ) as server:
            yield cases, root, server
    finally:
        if request.session.testsfailed > failed_before and log.exists():
            print(f"\n===== {log} =====\n{log.read_text(errors='replace')[-20000:]}")


class Reference:
    """router_model.py's routing and pooling on numpy, read from a router's config and files (no counters)."""

    def __init__(self, router_dir: Path):
        parsed = validation.parse_strict((router_dir / naming.CONFIG_FILE).read_text())
        config = json.loads(json_format.MessageToJson(parsed, preserving_proto_field_name=True))
        self.routing = router_model.load_routing(config, router_dir / naming.MODEL_VERSION)
        spec = params.RouterPoolingParams.optional_from_model_config(config)
        self.pooled = [] if spec is None else pooling.map_router_groups(spec, router_dir, naming.MODEL_VERSION)
        self.inputs = {tensor["name"]: tensor for tensor in config["input"]}

    def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        kernels.check_finite(self.routing.finite_inputs, inputs)
        if self.routing.mode == "ranking":
            inputs = router_model.combine_ranking_request(self.routing, inputs)
        return pooling.pool_routed(self.pooled, router_model.route_request(self.routing, inputs))


def _infer(server: Any, model: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    connection = grpc_client.InferenceServerClient(server.grpc_url)
    try:
        tensors = []
        for name, array in inputs.items():
            datatype = "INT64" if array.dtype == np.int64 else "FP32"
            tensors.append(grpc_client.InferInput(name, list(array.shape), datatype))
            tensors[-1].set_data_from_numpy(array)
        result = connection.infer(model, tensors)
        outputs = result.get_response().outputs
        return {output.name: result.as_numpy(output.name) for output in outputs}
    finally:
        connection.close()


def _draw_request(data: st.DataObject, reference: Reference) -> dict[str, np.ndarray]:
    """Random valid inputs for a router: ids in [-1, rows) (padding ids included), weights, dense features."""
    ranking = reference.routing.mode == "ranking"
    candidates = data.draw(st.integers(1, 6))
    rows = {True: 1, False: candidates} if ranking else {True: candidates, False: candidates}
    inputs: dict[str, np.ndarray] = {}
    for route in reference.routing.tables:
        count = rows[route.side == "user"]
        ids = data.draw(st.lists(st.integers(-1, route.num_rows - 1), min_size=count * route.ids_per_sample,
                                 max_size=count * route.ids_per_sample))  # fmt: skip
        inputs[route.input_name] = np.array(ids, dtype=np.int64).reshape(count, route.ids_per_sample)
        if route.weights_name:
            size = count * route.ids_per_sample
            weights = data.draw(st.lists(st.floats(-2, 2, width=32), min_size=size, max_size=size))
            inputs[route.weights_name] = np.array(weights, dtype=np.float32).reshape(count, route.ids_per_sample)
    for name in reference.routing.finite_inputs:
        if name in inputs:
            continue
        dims = reference.inputs[name]["dims"]
        shape = [int(d) for d in dims]
        if not ranking:
            shape = [candidates, *shape]
        elif shape[0] == -1:
            shape[0] = candidates
        inputs[name] = np.ones(shape, dtype=np.float32)
    return inputs


@requires_server
def test_the_routers_are_native_and_the_ensembles_equal_pytorch(served: Any) -> None:
    cases, root, server = served
    for name, (built, plan) in cases.items():
        model = precision.with_rounded_rows(built, plan)
        routers = _router_dirs(root / f"{name}_models")
        configs = [validation.parse_strict((router / naming.CONFIG_FILE).read_text()) for router in routers]
        assert configs and all(config.backend == native.BACKEND_NAME for config in configs), name
        for protocol, url in (("grpc", server.grpc_url), ("http", server.http_url)):
            report = client.check(model, url, protocol=protocol, model_name=name, requests=2, batch_size=9)  # type: ignore[arg-type]
            assert report.passed and report.max_abs_diff < 1e-5, f"{name} {protocol}: {report}"
        if (root / f"{name}_models" / naming.ranking_router_model(name)).exists():
            ranking = client.check(model, server.grpc_url, protocol="grpc", model_name=naming.ranking_ensemble(name),
                                   requests=2, batch_size=7, structured=True)  # fmt: skip
            assert ranking.passed and ranking.max_abs_diff < 1e-5, f"{name} ranking: {ranking}"


@requires_server
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_native_routing_equals_the_numpy_reference(
    served: Any, data: st.DataObject, monkeypatch: pytest.MonkeyPatch
) -> None:
    cases, root, server = served
    monkeypatch.setattr(compiled, "ENGINE", "numpy")  # the reference
    name = data.draw(st.sampled_from(sorted(cases)))
    router = data.draw(st.sampled_from(_router_dirs(root / f"{name}_models")))
    reference = Reference(router)
    inputs = _draw_request(data, reference)
    expected = reference(inputs)
    served_outputs = _infer(server, router.name, inputs)
    assert sorted(served_outputs) == sorted(expected), router.name
    for output, array in expected.items():
        if array.dtype == np.int32:
            np.testing.assert_array_equal(served_outputs[output], array, err_msg=f"{router.name} {output}")
        else:
            np.testing.assert_allclose(served_outputs[output], array, rtol=1e-6, atol=1e-6, err_msg=output)


def _bad_requests(reference: Reference, good: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
    """Requests the reference refuses: an id past its table, below -1, a NaN and an infinity, candidates disagreeing."""
    first = reference.routing.tables[0]
    too_big, negative = dict(good), dict(good)
    too_big[first.input_name] = good[first.input_name].copy()
    too_big[first.input_name].flat[-1] = first.num_rows
    negative[first.input_name] = np.full_like(good[first.input_name], -7)
    bad = [too_big, negative]
    for name in reference.routing.finite_inputs:
        for value in (np.nan, -np.inf):
            broken = dict(good)
            broken[name] = good[name].copy()
            broken[name].flat[-1] = value
            bad.append(broken)
    items = [route for route in reference.routing.tables if route.side == "item"]
    if reference.routing.mode == "ranking" and len(items) > 1:  # (two user rows: Triton refuses those itself)
        disagreeing = dict(good)
        disagreeing[items[0].input_name] = np.concatenate([good[items[0].input_name]] * 2)
        bad.append(disagreeing)
    return bad


@requires_server
def test_bad_requests_get_the_reference_message_and_the_next_one_is_served(served: Any) -> None:
    _, root, server = served
    for name in ("cached", "widths"):
        for router in _router_dirs(root / f"{name}_models"):
            reference = Reference(router)
            good = {}
            for route in reference.routing.tables:
                rows = 1 if reference.routing.mode == "ranking" and route.side == "user" else 2
                good[route.input_name] = np.zeros((rows, route.ids_per_sample), dtype=np.int64)
                if route.weights_name:
                    good[route.weights_name] = np.ones((rows, route.ids_per_sample), dtype=np.float32)
            for tensor in reference.routing.finite_inputs:
                if tensor not in good:
                    dims = [int(d) for d in reference.inputs[tensor]["dims"]]
                    shape = ([2, *dims] if reference.routing.mode == "flattened"
                             else [1 if d == 1 else 2 for d in dims])  # fmt: skip
                    good[tensor] = np.ones(shape, dtype=np.float32)
            for bad in _bad_requests(reference, good):
                with pytest.raises(ValueError) as refused:
                    reference(bad)
                with pytest.raises(InferenceServerException) as served_error:
                    _infer(server, router.name, bad)
                assert str(refused.value) in str(served_error.value), router.name
                assert "INVALID_ARG" in str(served_error.value.status()), served_error.value.status()
                assert _infer(server, router.name, good), router.name


@requires_server
def test_the_access_counters_and_cache_metrics_read_as_the_python_routers(served: Any) -> None:
    _, root, server = served
    router = root / "cached_models" / naming.router_model("cached")
    config = validation.parse_strict((router / naming.CONFIG_FILE).read_text())
    spec = params.AccessCountsParams.from_json(config.parameters[params.AccessCountsParams.PARAMETER].string_value)
    with mock.patch.object(os, "getppid", lambda: server.pid):  # the profile model's view: its parent is the server
        before = access.collect(spec, reset=True)
        reference = Reference(router)
        history = np.array([[5, 5, 7, -1, -1, -1], [299, 0, -1, -1, -1, -1]], dtype=np.int64)
        inputs = {
            naming.sparse_input("history"): history,
            naming.sparse_input("one_row"): np.array([[0], [-1]], dtype=np.int64),
            naming.sparse_input("item"): np.array([[3, 49], [3, 3]], dtype=np.int64),
            naming.DENSE_FEATURES: np.ones((2, 2), dtype=np.float32),
        }
        assert set(inputs) == set(reference.inputs)
        _infer(server, router.name, inputs)
        after = access.collect(spec)
    assert before.instances >= 1 and after.instances == before.instances
    history_counts, one_row_counts, item_counts = after.counts
    assert {int(i): int(c) for i, c in enumerate(history_counts) if c} == {5: 2, 7: 1, 299: 1, 0: 1}
    assert one_row_counts.tolist() == [1]
    assert {int(i): int(c) for i, c in enumerate(item_counts) if c} == {3: 3, 49: 1}
    assert after.samples.tolist() == [2, 2, 2]
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10) as response:
        metrics = response.read().decode()
    lookups = [line for line in metrics.splitlines()
               if line.startswith(access.CACHE_LOOKUPS_METRIC) and f'model="{router.name}"' in line]  # fmt: skip
    assert lookups and float(lookups[0].split()[-1]) >= 7, metrics[-2000:]


@requires_server
def test_a_router_config_whose_outputs_disagree_with_its_routing_is_refused(
    tmp_path: Path, native_library: Path
) -> None:
    model = tiny_model()
    result = build(model, uniform_plan(model, lookup_step="separate"), tmp_path / "r", tmp_path / "e")
    router = result.repository / naming.router_model("dlrm")
    native_models.use_native_step(router, "router", native_library)
    config = validation.parse_strict((router / naming.CONFIG_FILE).read_text())
    config.output[0].dims[-1] += 1  # one column more than the routing fills
    validation.write_config(config, router)
    refused = re.compile(rf"output '{config.output[0].name}' must be INT32 \[\.\.\., \d+\] as routed")
    assert_refused(result.repository, refused, tmp_path / "tritonserver.log")

"""The native shard-group step against the numpy reference, through a real server: every row dtype, several row
widths in one group, weighted features, padding; the same request errors; ensembles that still equal PyTorch."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpc_client
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tritonclient.utils import InferenceServerException

from generator import naming, native
from generator.check import client
from generator.deploy import server as serve
from generator.model.imported import import_module
from generator.planning import precision
from generator.planning.plan import uniform_plan
from generator.repository import native_models, validation
from generator.repository.build import build
from generator.triton_models import recgen_compiled as compiled
from generator.triton_models import recgen_params as params
from generator.triton_models import recgen_pooling as pooling
from tests.conftest import SERVER_READY_TIMEOUT_S, requires_server, tiny_model
from tests.model import zoo
from tests.native.conftest import STOP_GRACE_S


def _cases() -> dict[str, tuple[Any, Any]]:
    """name -> (model, plan): each row dtype, three row widths in one group (mean pooling, a padding id), weights."""
    tiny = tiny_model()
    dtypes = dict(zip([t.name for t in tiny.tables], ["fp32", "fp16", "int8"], strict=True))
    cases: dict[str, tuple[Any, Any]] = {
        "dtypes": (tiny, uniform_plan(tiny, name="dtypes", lookup_step="separate", row_dtypes=dtypes)),
    }
    widths = import_module(zoo.DcnV2().eval(), zoo.dcn_example(), max_ids={"tag_ids": 3, "*": 4})
    cases["widths"] = (widths, uniform_plan(widths, name="widths", lookup_step="separate", shards_per_table=2))
    module = zoo.TwoTower(weighted=True).eval()
    towers = import_module(module, zoo.two_tower_example(weighted=True), max_ids={"*": 4}).with_user_side(["viewed"])
    cases["weighted"] = (towers, uniform_plan(towers, name="weighted", lookup_step="separate"))
    return cases


def _groups(repository: Path) -> list[Path]:
    """The shard-group models of a repository: those with the group's typed parameter."""
    return sorted(
        path.parent
        for path in repository.glob(f"*/{naming.CONFIG_FILE}")
        if params.ShardGroupParams.PARAMETER in validation.parse_strict(path.read_text()).parameters
    )


@pytest.fixture(scope="module")
def served(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, native_library: Path
) -> Iterator[Any]:
    root = tmp_path_factory.mktemp("native_groups")
    cases = _cases()
    repositories: list[Path] = []
    for name, (model, plan) in cases.items():
        result = build(model, plan, root / f"{name}_models", root / f"{name}_ens")
        for group in _groups(result.repositories[0]):
            native_models.use_native_step(group, "shard_group", native_library)
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


@requires_server
def test_every_group_is_served_natively_and_the_ensembles_equal_pytorch(served: Any) -> None:
    cases, root, server = served
    for name, (built, plan) in cases.items():
        model = precision.with_rounded_rows(built, plan)  # what the stored rows hold
        groups = _groups(root / f"{name}_models")
        configs = [validation.parse_strict((group / naming.CONFIG_FILE).read_text()) for group in groups]
        assert configs and all(config.backend == native.BACKEND_NAME for config in configs), name
        for protocol, url in (("grpc", server.grpc_url), ("http", server.http_url)):
            report = client.check(model, url, protocol=protocol, model_name=name, requests=2, batch_size=9)  # type: ignore[arg-type]
            assert report.passed and report.max_abs_diff < 1e-5, f"{name} {protocol}: {report}"
    model, _ = cases["weighted"]  # fp32 rows, and a user side: packed ranking requests too
    ranking = client.check(model, server.grpc_url, protocol="grpc", model_name=naming.ranking_ensemble("weighted"),
                           requests=2, batch_size=7, structured=True)  # fmt: skip
    assert ranking.passed, f"ranking: {ranking}"


def _reference(group: Path) -> tuple[params.ShardGroupParams, pooling.GroupRows]:
    config = validation.parse_strict((group / naming.CONFIG_FILE).read_text())
    layout = params.ShardGroupParams.from_json(config.parameters[params.ShardGroupParams.PARAMETER].string_value)
    return layout, pooling.load_group_rows(layout, group / "1")


@requires_server
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_native_pools_equal_the_numpy_reference(
    served: Any, data: st.DataObject, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, root, server = served
    monkeypatch.setattr(compiled, "ENGINE", "numpy")  # the reference
    name = data.draw(st.sampled_from(["dtypes", "widths", "weighted"]))
    group = data.draw(st.sampled_from(_groups(root / f"{name}_models")))
    layout, rows = _reference(group)
    width = rows.slot_columns[-1][1]
    batch = data.draw(st.integers(1, 12))
    stack_rows = {stack: array.shape[0] - 1 for stack, array in enumerate(rows.stacks)}
    ids = np.full((batch, width), -1, dtype=np.int32)
    for slot, (first, last) in enumerate(rows.slot_columns):
        valid = st.integers(-1, stack_rows[rows.slot_stacks[slot]] - 1)
        count = batch * (last - first)
        drawn = data.draw(st.lists(valid, min_size=count, max_size=count))
        ids[:, first:last] = np.array(drawn, dtype=np.int32).reshape(batch, last - first)
    weights = None
    if layout.weights_input:
        drawn_weights = data.draw(st.lists(st.floats(-2, 2, width=32), min_size=batch * width, max_size=batch * width))
        weights = np.array(drawn_weights, dtype=np.float32).reshape(batch, width)
    expected = pooling.pool_group(rows, ids, weights)
    connection = grpc_client.InferenceServerClient(server.grpc_url)
    inputs = [grpc_client.InferInput(layout.input, list(ids.shape), "INT32")]
    inputs[0].set_data_from_numpy(ids)
    if weights is not None:
        inputs.append(grpc_client.InferInput(layout.weights_input, list(weights.shape), "FP32"))
        inputs[-1].set_data_from_numpy(weights)
    served_pools = connection.infer(group.name, inputs).as_numpy(layout.output)
    connection.close()
    np.testing.assert_allclose(served_pools, expected, rtol=1e-6, atol=1e-6)


@requires_server
def test_an_id_outside_the_rows_fails_its_request_alone_with_the_reference_message(served: Any) -> None:
    _, root, server = served
    group = _groups(root / "dtypes_models")[-1]
    layout, rows = _reference(group)
    width = rows.slot_columns[-1][1]
    held = rows.stacks[0].shape[0] - 1
    ids = np.full((2, width), -1, dtype=np.int32)
    ids[1, width - 1] = held
    with pytest.raises(ValueError) as reference:
        pooling.check_row_ids(ids, held)
    connection = grpc_client.InferenceServerClient(server.grpc_url)
    request = grpc_client.InferInput(layout.input, list(ids.shape), "INT32")
    request.set_data_from_numpy(ids)
    with pytest.raises(InferenceServerException) as refused:
        connection.infer(group.name, [request])
    assert f"input '{layout.input}': {reference.value}" in refused.value.message()
    assert "INVALID_ARG" in str(refused.value.status())
    ids[1, width - 1] = -1
    request.set_data_from_numpy(ids)
    assert not connection.infer(group.name, [request]).as_numpy(layout.output).any()  # all padding: zeros
    connection.close()

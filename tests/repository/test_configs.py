import dataclasses
import json
import os
from pathlib import Path

import pytest
from tritonclient.grpc import model_config_pb2 as mc

from generator import naming
from generator.errors import ConfigValidationError
from generator.planning.plan import uniform_plan
from generator.repository import configs, validation, wiring
from tests.conftest import tiny_model

GOLDEN = Path(__file__).parent / "golden"
KIND_CPU = mc.ModelInstanceGroup.KIND_CPU
KIND_GPU = mc.ModelInstanceGroup.KIND_GPU


def _all_configs(
    backend: configs.Backend, target: configs.Target, device="cpu", group_by="shard"
) -> dict[str, mc.ModelConfig]:
    model = tiny_model()
    plan = uniform_plan(
        model, shards_per_table=3, device=device, instance_count=2, group_by=group_by, lookup_step="separate"
    )
    # As `recgen build` resolves the default engine: native, except for the container target.
    plan = dataclasses.replace(plan, lookup_engine="python" if target == "container" else "native")
    leaves = configs.LeafOptions(backend, target)
    dense = model.num_dense_features
    wire = wiring.wire_layout(plan)
    rendered = [configs.router_config(plan, wire, dense), configs.dense_config(plan, wire, model, leaves)]
    rendered += [configs.shard_group_config(plan, wired, leaves) for wired in wire.groups]
    rendered.append(configs.ensemble_config(plan, wire, model.num_dense_features))
    return {config.name: config for config in rendered}


@pytest.mark.parametrize("backend", configs.BACKENDS)
@pytest.mark.parametrize("target", configs.TARGETS)
@pytest.mark.parametrize("device", ["cpu", "gpu"])
@pytest.mark.parametrize("group_by", ["shard", "placement"])
def test_every_config_parses_back_strictly_and_the_ensemble_is_consistent(
    backend, target, device, group_by, tmp_path
) -> None:
    by_name = _all_configs(backend, target, device, group_by)
    for name, config in by_name.items():
        (tmp_path / name).mkdir()
        path = validation.write_config(config, tmp_path / name)
        assert validation.parse_strict(path.read_text()) == config
    ensemble = by_name["dlrm"]
    validation.check_ensemble(ensemble, {n: c for n, c in by_name.items() if n != "dlrm"})


@pytest.mark.parametrize(
    ("backend", "target", "lookup_backend", "dense_backend", "ort_threads"),
    [
        ("python", "embedded", "recgen", "python", False),
        ("python", "container", "python", "python", False),
        ("onnx", "embedded", "recgen", "python", True),
        ("onnx", "container", "onnxruntime", "onnxruntime", True),
    ],
)
def test_leaf_backend_per_backend_and_target(backend, target, lookup_backend, dense_backend, ort_threads) -> None:
    by_name = _all_configs(backend, target)
    shard = by_name["dlrm_shard_small_0"]
    dense = by_name["dlrm_dense"]
    assert shard.backend == lookup_backend and dense.backend == dense_backend
    assert not shard.platform and not dense.platform
    assert ("intra_op_thread_count" in dense.parameters) is ort_threads
    assert by_name["dlrm_router"].backend == ("python" if target == "container" else "recgen")
    assert [(t.name, list(t.dims)) for t in shard.input] == [("local_ids__g1", [3])]
    assert [(t.name, list(t.dims)) for t in shard.output] == [("partial_sums__g1", [8])]


def test_gpu_device_places_shards_and_dense_on_gpu_router_on_cpu() -> None:
    by_name = _all_configs("onnx", "container", device="gpu")
    assert by_name["dlrm_router"].instance_group[0].kind == KIND_CPU
    assert by_name["dlrm_dense"].instance_group[0].kind == KIND_GPU
    assert by_name["dlrm_shard_medium_2"].instance_group[0].kind == KIND_GPU
    assert by_name["dlrm_shard_medium_2"].instance_group[0].count == 2


def test_ensemble_follows_triton_rules_and_request_contract() -> None:
    ensemble = _all_configs("python", "embedded")["dlrm"]
    assert ensemble.platform == "ensemble" and not ensemble.backend
    assert not ensemble.instance_group and not ensemble.HasField("optimization")
    assert [(t.name, t.data_type, list(t.dims)) for t in ensemble.input] == [
        ("dense_features", mc.TYPE_FP32, [5]),
        ("sparse_one_row", mc.TYPE_INT64, [1]),
        ("sparse_small", mc.TYPE_INT64, [3]),
        ("sparse_medium", mc.TYPE_INT64, [1]),
    ]
    assert [(t.name, list(t.dims)) for t in ensemble.output] == [("score", [1])]
    steps = [step.model_name for step in ensemble.ensemble_scheduling.step]
    assert steps[0] == "dlrm_router" and steps[-1] == "dlrm_dense" and len(steps) == 2 + 7


def test_grouped_shards_make_a_three_step_ensemble() -> None:
    by_name = _all_configs("python", "embedded", group_by="placement")
    steps = [step.model_name for step in by_name["dlrm"].ensemble_scheduling.step]
    assert steps == ["dlrm_router", "dlrm_shards_0", "dlrm_dense"]
    group = by_name["dlrm_shards_0"]
    # one block per table (one_row: 1 id, small: 3, medium: 1), whatever its shard count
    assert [(t.name, list(t.dims)) for t in group.input] == [("local_ids__g0", [1 + 3 + 1])]
    assert [(t.name, list(t.dims)) for t in group.output] == [("partial_sums__g0", [3 * 8])]  # one slot per table
    assert group.input[0].data_type == mc.TYPE_INT32
    layout = json.loads(group.parameters["shards"].string_value)
    assert layout["shards"][1] == {"table": "small", "shard": 0, "rows_file": "rows__small__0.npy", "scales_file": ""}
    assert layout["row_dtype"] == "fp32"
    assert layout["slots"] == [
        {"table": "one_row", "columns": [0, 1]},
        {"table": "small", "columns": [1, 4]},
        {"table": "medium", "columns": [4, 5]},
    ]


def test_router_and_dense_parameters_carry_the_layout() -> None:
    by_name = _all_configs("python", "embedded")
    routing = json.loads(by_name["dlrm_router"].parameters["routing"].string_value)
    small = next(t for t in routing["tables"] if t["table"] == "small")
    assert small["boundaries"] == [0, 2, 4, 7]
    assert small["shards"] == [{"output": i, "column": 0, "first_row": 0} for i in (1, 2, 3)]  # a group per shard
    assert routing["outputs"][1] == {"name": naming.group_local_ids(1), "width": 3, "weights": ""}
    layout = json.loads(by_name["dlrm_dense"].parameters["dense"].string_value)
    assert layout["tables"][1]["parts"] == [{"input": naming.group_partial_sums(i), "slot": 0} for i in (1, 2, 3)]


@pytest.mark.parametrize(
    "text",
    [
        'name: "x" unknown_field: 1',
        'name: "x" instance_group { kind: KIND_GPUX }',
        'name: "x" input { name: "a" data_type: "TYPE_FP32" dims: 1 }',
        'name: "x" max_batch_size: 4 max_batch_size: 8',
        'name: "x" dynamic_batching { } ensemble_scheduling { }',
        'name: "x" model_metrics { }',
    ],
)
def test_strict_parse_rejects_what_a_2_51_server_rejects(text: str) -> None:
    with pytest.raises(ConfigValidationError):
        validation.parse_strict(text)


def test_check_ensemble_finds_broken_data_flow() -> None:
    by_name = _all_configs("python", "embedded")
    ensemble = by_name.pop("dlrm")
    broken = mc.ModelConfig()
    broken.CopyFrom(ensemble)
    broken.ensemble_scheduling.step[1].output_map["partial_sums__g0"] = "dangling"
    with pytest.raises(ConfigValidationError, match="never consumed"):
        validation.check_ensemble(broken, by_name)
    with pytest.raises(ConfigValidationError, match="not generated"):
        validation.check_ensemble(ensemble, {k: v for k, v in by_name.items() if k != "dlrm_dense"})
    mismatched = dict(by_name)
    shard = mc.ModelConfig()
    shard.CopyFrom(by_name["dlrm_shard_small_0"])
    shard.input[0].data_type = mc.TYPE_INT64
    mismatched["dlrm_shard_small_0"] = shard
    with pytest.raises(ConfigValidationError, match="another dtype or shape"):
        validation.check_ensemble(ensemble, mismatched)


@pytest.mark.parametrize("name", ["dlrm", "dlrm_router", "dlrm_shard_small_1", "dlrm_dense"])
def test_golden_configs(name: str) -> None:
    """The rendered text is stable; regenerate with RECGEN_UPDATE_GOLDEN=1 after an intended change."""
    text = validation.to_text(_all_configs("onnx", "container")[name])
    golden = GOLDEN / f"tiny_onnx_container_{name}.pbtxt"
    if os.environ.get("RECGEN_UPDATE_GOLDEN"):
        golden.write_text(text)
    assert text == golden.read_text()

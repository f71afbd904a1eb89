"""libtriton_recgen.so in the shipped tritonserver 2.51: it loads from a model's directory, serves every data type
it declares with the values the server uses, batches, and reports its statistics to Triton."""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpc_client
import tritonclient.http as http_client

from generator import native
from generator.deploy import server as serve
from tests.conftest import SERVER_READY_TIMEOUT_S, requires_server
from tests.native.conftest import SANITIZE, STOP_GRACE_S, assert_refused

#: Every data type the backend maps (triton_api.h), as the config spells it and as the client reports it.
DATA_TYPES = {
    "TYPE_BOOL": ("BOOL", np.bool_), "TYPE_UINT8": ("UINT8", np.uint8), "TYPE_UINT16": ("UINT16", np.uint16),
    "TYPE_UINT32": ("UINT32", np.uint32), "TYPE_UINT64": ("UINT64", np.uint64), "TYPE_INT8": ("INT8", np.int8),
    "TYPE_INT16": ("INT16", np.int16), "TYPE_INT32": ("INT32", np.int32), "TYPE_INT64": ("INT64", np.int64),
    "TYPE_FP16": ("FP16", np.float16), "TYPE_FP32": ("FP32", np.float32), "TYPE_FP64": ("FP64", np.float64),
}  # fmt: skip


def _floor_config(name: str, max_batch_size: int, instances: int, version: str = native.version()) -> str:
    outputs = ", ".join(
        f'{{ name: "out_{config_type[5:].lower()}" data_type: {config_type} dims: [ {2 + index}, 3 ] }}'
        for index, config_type in enumerate(DATA_TYPES)
    )
    batching = "dynamic_batching { }" if max_batch_size else ""
    return f"""name: "{name}"
backend: "{native.BACKEND_NAME}"
max_batch_size: {max_batch_size}
{batching}
input [ {{ name: "ids" data_type: TYPE_INT64 dims: [ -1 ] }}, {{ name: "dense" data_type: TYPE_FP32 dims: [ 13 ] }} ]
output [ {outputs} ]
instance_group [ {{ kind: KIND_CPU count: {instances} }} ]
parameters {{ key: "recgen_native_step" value {{ string_value: "floor" }} }}
parameters {{ key: "{native.VERSION_PARAMETER}" value {{ string_value: "{version}" }} }}
"""


@pytest.fixture(scope="module")
def floor_server(tmp_path_factory: pytest.TempPathFactory, native_library: Path) -> Iterator[serve.TritonServer]:
    repository = tmp_path_factory.mktemp("native") / "models"
    models = ["batched", "unbatched", "shared"]
    for name, max_batch_size, instances in (("batched", 64, 2), ("unbatched", 0, 1), ("shared", 64, 1)):
        (repository / name / "1").mkdir(parents=True)
        (repository / name / "config.pbtxt").write_text(_floor_config(name, max_batch_size, instances))
        if name != "shared":  # "shared" carries no library: Triton takes the one serve put in its backend directory
            shutil.copy(native_library, repository / name / native.LIBRARY_NAME)
    with serve.running_server(
        [repository], models=models, timeout_s=SERVER_READY_TIMEOUT_S, stop_grace_s=STOP_GRACE_S
    ) as s:
        yield s


@requires_server
@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_every_data_type_comes_back_as_declared_with_the_requests_batch(
    floor_server: serve.TritonServer, protocol: str
) -> None:
    module = grpc_client if protocol == "grpc" else http_client
    client = module.InferenceServerClient(floor_server.grpc_url if protocol == "grpc" else floor_server.http_url)
    ids = module.InferInput("ids", [5, 7], "INT64")
    ids.set_data_from_numpy(np.arange(35, dtype=np.int64).reshape(5, 7))
    dense = module.InferInput("dense", [5, 13], "FP32")
    dense.set_data_from_numpy(np.ones((5, 13), np.float32))
    result = client.infer("batched", [ids, dense])
    for index, (config_type, (wire_type, dtype)) in enumerate(DATA_TYPES.items()):
        array = result.as_numpy(f"out_{config_type[5:].lower()}")
        assert array.dtype == dtype and array.shape == (5, 2 + index, 3) and not array.any(), config_type
        output = result.get_output(f"out_{config_type[5:].lower()}")
        assert (output["datatype"] if isinstance(output, dict) else output.datatype) == wire_type
    asked = client.infer("batched", [ids, dense], outputs=[module.InferRequestedOutput("out_fp16")])
    assert asked.as_numpy("out_fp16").shape == (5, 11, 3) and asked.as_numpy("out_fp32") is None
    client.close()


@requires_server
def test_an_unbatched_model_answers_without_a_batch_dimension(floor_server: serve.TritonServer) -> None:
    client = grpc_client.InferenceServerClient(floor_server.grpc_url)
    ids = grpc_client.InferInput("ids", [9], "INT64")
    ids.set_data_from_numpy(np.arange(9, dtype=np.int64))
    dense = grpc_client.InferInput("dense", [13], "FP32")
    dense.set_data_from_numpy(np.zeros(13, np.float32))
    assert client.infer("unbatched", [ids, dense]).as_numpy("out_int64").shape == (10, 3)
    client.close()


@requires_server
def test_statistics_reach_triton_and_the_log_says_which_step_loaded(floor_server: serve.TritonServer) -> None:
    client = grpc_client.InferenceServerClient(floor_server.grpc_url)
    before = client.get_inference_statistics("batched", as_json=True)["model_stats"][0]
    ids = grpc_client.InferInput("ids", [3, 2], "INT64")
    ids.set_data_from_numpy(np.zeros((3, 2), np.int64))
    dense = grpc_client.InferInput("dense", [3, 13], "FP32")
    dense.set_data_from_numpy(np.zeros((3, 13), np.float32))
    for _ in range(4):
        client.infer("batched", [ids, dense])

    def succeeded(stats: dict) -> int:
        return int(stats["inference_stats"]["success"].get("count", 0)) - int(
            before["inference_stats"]["success"].get("count", 0)
        )

    deadline = time.monotonic() + 5.0
    for _ in range(50):  # Triton records a request's statistics just after it sends the response
        after = client.get_inference_statistics("batched", as_json=True)["model_stats"][0]
        if succeeded(after) >= 4 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert succeeded(after) == 4
    assert int(after["inference_count"]) - int(before.get("inference_count", 0)) == 12  # 4 requests x batch 3
    assert int(after["inference_stats"]["compute_infer"]["ns"]) > 0
    client.close()
    logged = [line for line in floor_server.logs().splitlines() if "recgen native step 'floor'" in line]
    assert {line[0] for line in logged} == {"I"} and len(logged) == 3  # INFO, once per model


@requires_server
def test_the_sanitized_build_runs_under_the_sanitizers_runtime(floor_server: serve.TritonServer) -> None:
    """With RECGEN_NATIVE_SANITIZE=1 (CI) the server maps ASan's runtime and the sanitized library; else neither."""
    maps = Path(f"/proc/{floor_server.pid}/maps").read_text()
    assert ("libasan" in maps) == SANITIZE and (native.LIBRARY_NAME in maps)


@requires_server
def test_a_model_without_the_library_is_served_from_the_backend_directory(floor_server: serve.TritonServer) -> None:
    client = grpc_client.InferenceServerClient(floor_server.grpc_url)
    ids = grpc_client.InferInput("ids", [2, 3], "INT64")
    ids.set_data_from_numpy(np.zeros((2, 3), np.int64))
    dense = grpc_client.InferInput("dense", [2, 13], "FP32")
    dense.set_data_from_numpy(np.zeros((2, 13), np.float32))
    assert client.infer("shared", [ids, dense]).as_numpy("out_fp32").shape == (2, 12, 3)
    client.close()
    maps = Path(f"/proc/{floor_server.pid}/maps").read_text()
    assert f"/{native.BACKEND_NAME}/{native.LIBRARY_NAME}" in maps  # the backend directory's copy is loaded


@requires_server
def test_a_model_written_for_another_build_of_the_backend_is_refused(tmp_path: Path, native_library: Path) -> None:
    repository = tmp_path / "models"
    (repository / "stale" / "1").mkdir(parents=True)
    (repository / "stale" / "config.pbtxt").write_text(_floor_config("stale", 8, 1, version="0123456789abcdef"))
    shutil.copy(native_library, repository / "stale" / native.LIBRARY_NAME)
    refused = re.compile(
        rf"model 'stale' was written for recgen's native backend 0123456789abcdef, "
        rf"but this libtriton_recgen.so is {native.version()}: serve the repository with the library it carries"
    )
    assert_refused(repository, refused, tmp_path / "tritonserver.log")

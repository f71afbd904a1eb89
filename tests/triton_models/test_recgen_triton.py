"""A GPU placement runs on the GPU or does not load: every Python-backend model that computes refuses a KIND_GPU
instance it would serve on the CPU, as Triton's python backend hands it one (the `args` of `initialize`)."""

from __future__ import annotations

import importlib
import json

import onnxruntime as ort
import pytest

from generator.triton_models import onnx_model, recgen_triton

#: The models that compute with numpy (a GPU instance of them would compute on the host).
NUMPY_MODELS = ["shard_model", "dense_model", "ranking_dense_model", "monolithic_model", "router_model"]


def _gpu_args(model_config: dict[str, object] | None = None) -> dict[str, str]:
    """What the python backend passes a KIND_GPU instance's initialize (before any of the model's files are read)."""
    return {
        "model_name": "dlrm_shard_g0",
        "model_instance_name": "dlrm_shard_g0_0_0",
        "model_instance_kind": "GPU",
        "model_instance_device_id": "0",
        "model_config": json.dumps(model_config or {}),
        "model_repository": "/nonexistent",
        "model_version": "1",
    }


@pytest.mark.parametrize("module", NUMPY_MODELS)
def test_a_numpy_model_refuses_a_gpu_instance_saying_what_serves_one(module: str) -> None:
    model = importlib.import_module(f"generator.triton_models.{module}").TritonPythonModel()
    with pytest.raises(recgen_triton.PlacementError, match=r"is placed on GPU 0, but this model computes with numpy"):
        model.initialize(_gpu_args())


def test_a_cpu_instance_is_not_refused() -> None:
    recgen_triton.require_cpu_instance({**_gpu_args(), "model_instance_kind": "CPU"})


def test_an_onnx_step_on_a_gpu_refuses_an_onnxruntime_without_cuda() -> None:
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA: the GPU tier serves it")
    config = {
        "input": [],
        "output": [],
        "parameters": {"intra_op_thread_count": {"string_value": "1"}, "inter_op_thread_count": {"string_value": "1"}},
    }
    with pytest.raises(recgen_triton.PlacementError, match=r"ONNX Runtime here has no CUDA execution provider \(.*CPU"):
        onnx_model.TritonPythonModel().initialize(_gpu_args(config))

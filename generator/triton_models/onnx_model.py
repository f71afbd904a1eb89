"""Runs `model.onnx` with ONNX Runtime inside the Python backend (the embedded server has no ORT backend).

Inputs and outputs are those of the config; config parameters `intra_op_thread_count` and
`inter_op_thread_count` size ORT's thread pools, as they do for Triton's native onnxruntime backend. A KIND_GPU
instance runs on ORT's CUDA provider on its device, or refuses to load when the installed onnxruntime has none (it
never computes on the CPU under a GPU placement).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from . import recgen_kernels as kernels
from . import recgen_triton

pb_utils = recgen_triton.utils()  # Triton's utilities inside a stub, None in tooling and tests

ONNX_FILE = "model.onnx"


def _int_parameter(config: dict[str, Any], key: str) -> int:
    """An ORT thread count, in the form Triton's native onnxruntime backend reads it (one string per key)."""
    try:
        return int(config["parameters"][key]["string_value"])
    except (KeyError, ValueError) as error:
        raise ValueError(f"the model config needs an integer parameter {key!r} ({error})") from error


class TritonPythonModel:
    """Triton entry point."""

    def initialize(self, args: dict[str, str]) -> None:
        """Open one ORT session per instance with the configured thread counts."""
        import onnxruntime as ort  # only this model needs it; keeps the module importable for recgen's naming

        config = json.loads(args["model_config"])
        self.input_names = [tensor["name"] for tensor in config["input"]]
        self.output_names = [tensor["name"] for tensor in config["output"]]
        options = ort.SessionOptions()
        options.intra_op_num_threads = _int_parameter(config, "intra_op_thread_count")
        options.inter_op_num_threads = _int_parameter(config, "inter_op_thread_count")
        providers: list[Any] = ["CPUExecutionProvider"]
        if args.get("model_instance_kind") == "GPU":
            providers = [("CUDAExecutionProvider", {"device_id": int(args["model_instance_device_id"])})]
            _require_cuda(args, ort.get_available_providers())
        path = Path(args["model_repository"]) / args["model_version"] / ONNX_FILE
        self.session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        if args.get("model_instance_kind") == "GPU":
            _require_cuda(args, self.session.get_providers())

    def execute(self, requests: list[Any]) -> list[Any]:
        """Run all batched requests as one ORT call, then split the outputs back per request."""
        feeds = {}
        split_points: list[int] = []
        for name in self.input_names:
            feeds[name], split_points = kernels.stack_requests(
                [pb_utils.get_input_tensor_by_name(request, name).as_numpy() for request in requests]
            )
        results = self.session.run(self.output_names, feeds)
        per_output = [kernels.unstack_responses(result, split_points) for result in results]
        return [
            pb_utils.InferenceResponse(
                output_tensors=[
                    pb_utils.Tensor(name, parts[index])
                    for name, parts in zip(self.output_names, per_output, strict=True)
                ]
            )
            for index in range(len(requests))
        ]


def _require_cuda(args: dict[str, str], providers: list[str]) -> None:
    """A KIND_GPU instance runs on CUDA or does not load: ONNX Runtime would otherwise compute on the CPU."""
    if "CUDAExecutionProvider" not in providers:
        raise recgen_triton.PlacementError(
            f"model {args.get('model_name')!r}: instance {args.get('model_instance_name')!r} is placed on GPU "
            f"{args.get('model_instance_device_id')}, but ONNX Runtime here has no CUDA execution provider "
            f"({', '.join(providers)}): install onnxruntime-gpu with the CUDA libraries it needs, or place the step "
            "on the CPU"
        )

"""An identity-cost Python-backend model for bench/floor.py: reads every input, answers zeros of every output.

It is copied as model.py over a recgen step, keeping the step's config (tensors, batching, instances), so that
what it costs per request is what the Python backend and tritonserver cost for that step, without recgen's work.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

try:  # inside Triton
    import triton_python_backend_utils as pb_utils
except ModuleNotFoundError:  # imported by tooling
    pb_utils = None


class TritonPythonModel:
    """Triton entry point."""

    def initialize(self, args: dict[str, str]) -> None:
        """Read the step's tensors from its config once."""
        config = json.loads(args["model_config"])
        self.inputs = [tensor["name"] for tensor in config["input"]]
        self.batched = int(config.get("max_batch_size", 0)) > 0
        self.outputs = [
            (tensor["name"], pb_utils.triton_string_to_numpy(tensor["data_type"]), [int(d) for d in tensor["dims"]])
            for tensor in config["output"]
        ]

    def execute(self, requests: list[Any]) -> list[Any]:
        """Per request: every input read as numpy (as recgen's steps do), zeros of every output."""
        responses = []
        for request in requests:
            arrays = [pb_utils.get_input_tensor_by_name(request, name).as_numpy() for name in self.inputs]
            batch = (arrays[0].shape[0],) if self.batched else ()
            tensors = [
                pb_utils.Tensor(name, np.zeros(batch + tuple(max(d, 1) for d in dims), dtype=dtype))
                for name, dtype, dims in self.outputs
            ]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
        return responses

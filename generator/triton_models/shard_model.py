"""Embedding shard group (numpy): for each of its shards, gathers the rows of the local ids and sum-pools them.

Config parameter `shards` (JSON) lists per shard the input tensor (local ids, -1 = skip), the output tensor
(pooled partial sum) and the rows file next to this file (rows in hotness-rank order). Shards that share a
placement are served by one model so the ensemble has few steps; each group is still scaled on its own.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

try:  # inside Triton
    import triton_python_backend_utils as pb_utils
except ModuleNotFoundError:  # imported by tests or tooling
    pb_utils = None

try:  # a generated repository has the kernels next to this file
    import recgen_kernels as kernels
except ModuleNotFoundError:
    from generator.triton_models import recgen_kernels as kernels


class TritonPythonModel:
    """Triton entry point."""

    def initialize(self, args: dict[str, str]) -> None:
        """Load every member shard's rows into this instance's memory (each instance is its own process)."""
        config = json.loads(args["model_config"])
        version_dir = Path(args["model_repository"]) / args["model_version"]
        members = json.loads(config["parameters"]["shards"]["string_value"])
        self.shards = [
            (entry["input"], entry["output"], np.load(version_dir / entry["rows_file"])) for entry in members
        ]

    def execute(self, requests: list[Any]) -> list[Any]:
        """Pool each shard over all batched requests in one gather, then split the results back per request."""
        outputs: list[list[Any]] = [[] for _ in requests]
        for input_name, output_name, rows in self.shards:
            local_ids, split_points = kernels.stack_requests(
                [pb_utils.get_input_tensor_by_name(request, input_name).as_numpy() for request in requests]
            )
            pooled = kernels.pool(rows, local_ids)
            for response_outputs, part in zip(outputs, kernels.unstack_responses(pooled, split_points), strict=True):
                response_outputs.append(pb_utils.Tensor(output_name, part))
        return [pb_utils.InferenceResponse(output_tensors=tensors) for tensors in outputs]

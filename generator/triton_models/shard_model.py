"""Embedding shard (numpy): gathers its rows for the local ids of a batch and sum-pools them per sample.

Rows live in `rows.npy` next to this file, in hotness-rank order; ids are local to the shard, -1 = skip.
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

ROWS_FILE = "rows.npy"


class TritonPythonModel:
    """Triton entry point."""

    def initialize(self, args: dict[str, str]) -> None:
        """Load this shard's rows into the instance's memory (each instance is its own process)."""
        config = json.loads(args["model_config"])
        self.input_name = config["input"][0]["name"]
        self.output_name = config["output"][0]["name"]
        self.rows = np.load(Path(args["model_repository"]) / args["model_version"] / ROWS_FILE)

    def execute(self, requests: list[Any]) -> list[Any]:
        """Pool all batched requests in one gather, then split the result back per request."""
        local_ids, split_points = kernels.stack_requests(
            [pb_utils.get_input_tensor_by_name(request, self.input_name).as_numpy() for request in requests]
        )
        pooled = kernels.pool(self.rows, local_ids)
        return [
            pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(self.output_name, part)])
            for part in kernels.unstack_responses(pooled, split_points)
        ]

"""Dense model (numpy): adds the partial sums of each table, then bottom MLP, dot interaction, top MLP, sigmoid.

Config parameter `dense` (JSON) names the dense-feature input, the score output and, per table in interaction
order, the partial-sum inputs to add; weights are in `dense.npz` next to this file.
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

WEIGHTS_FILE = "dense.npz"


class TritonPythonModel:
    """Triton entry point."""

    def initialize(self, args: dict[str, str]) -> None:
        """Load the MLP weights and the input layout once per instance."""
        config = json.loads(args["model_config"])
        layout = json.loads(config["parameters"]["dense"]["string_value"])
        self.dense_input = layout["dense_input"]
        self.output_name = layout["output"]
        self.table_partials: list[list[str]] = [table["partials"] for table in layout["tables"]]
        weights = dict(np.load(Path(args["model_repository"]) / args["model_version"] / WEIGHTS_FILE))
        self.bottom = kernels.mlp_layers(weights, "bottom")
        self.top = kernels.mlp_layers(weights, "top")

    def execute(self, requests: list[Any]) -> list[Any]:
        """Score all batched requests at once, then split the scores back per request."""

        def stacked(name: str) -> tuple[np.ndarray, list[int]]:
            return kernels.stack_requests(
                [pb_utils.get_input_tensor_by_name(request, name).as_numpy() for request in requests]
            )

        dense_features, split_points = stacked(self.dense_input)
        pooled = []
        for partial_names in self.table_partials:
            total = stacked(partial_names[0])[0].copy()
            for name in partial_names[1:]:
                total += stacked(name)[0]
            pooled.append(total)
        scores = kernels.dense_tower(dense_features, pooled, self.bottom, self.top)
        return [
            pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(self.output_name, part)])
            for part in kernels.unstack_responses(scores, split_points)
        ]

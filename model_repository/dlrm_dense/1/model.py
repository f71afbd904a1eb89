"""Dense model (numpy): adds the partial sums of each table, then bottom MLP, dot interaction, top MLP, sigmoid.

Typed parameter `dense` (`recgen_params.DenseParams`) names the dense-feature input, the score output, the row width
`dim` and, per table in interaction order, its parts: (packed partial-sum input, slot) pairs to add; weights are in
`dense.npz`. numpy only: numba's interaction saved at most 3% of the ensemble's CPU with the native lookup step and
cost every dense stub 43 to 109 MB (bench/results/serving-native-numba-2026-12-07), so this stub does not load it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from . import recgen_kernels as kernels
from . import recgen_params as params
from . import recgen_triton

pb_utils = recgen_triton.utils()  # Triton's utilities inside a stub, None in tooling and tests


class TritonPythonModel:
    """Triton entry point."""

    def initialize(self, args: dict[str, str]) -> None:
        """Load the MLP weights and the input layout once per instance."""
        recgen_triton.require_cpu_instance(args)
        layout = params.DenseParams.from_model_config(json.loads(args["model_config"]))
        self.dense_input = layout.dense_input
        self.output_name = layout.output
        self.dim = layout.dim
        self.table_parts: list[list[tuple[str, int]]] = [
            [(part.input, part.slot) for part in table.parts] for table in layout.tables
        ]
        self.packed_inputs = sorted({name for parts in self.table_parts for name, _ in parts})
        self.bottom, self.top = kernels.load_dense_tower(str(Path(args["model_repository"]) / args["model_version"]))

    def execute(self, requests: list[Any]) -> list[Any]:
        """Score all batched requests at once, then split the scores back per request."""

        def stacked(name: str) -> tuple[np.ndarray, list[int]]:
            return kernels.stack_requests(
                [pb_utils.get_input_tensor_by_name(request, name).as_numpy() for request in requests]
            )

        dense_features, split_points = stacked(self.dense_input)
        packed = {name: stacked(name)[0] for name in self.packed_inputs}
        dim = self.dim
        pooled = []
        for parts in self.table_parts:
            (first_input, first_slot), *rest = parts
            total = packed[first_input][:, first_slot * dim : (first_slot + 1) * dim].copy()
            for name, slot in rest:
                total += packed[name][:, slot * dim : (slot + 1) * dim]
            pooled.append(total)
        scores = kernels.dense_tower(dense_features, pooled, self.bottom, self.top)
        return [
            pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(self.output_name, part)])
            for part in kernels.unstack_responses(scores, split_points)
        ]

"""Embedding shard group (numpy): one partial sum per feature slot it holds, pooled from its member shards' rows.

Typed parameter `shards` (`recgen_params.ShardGroupParams`): the packed input (per slot a block of row ids
into the members' rows stacked per row width in member order, -1 = none), the ids' weights in the same columns
when the group pools a weighted feature, the packed output (per slot as many
columns as its table's rows are wide), the
members' rows files next to this file (rows in hotness-rank order) and each slot's columns. Shards that share a
placement are served by one model so the ensemble has few steps and few tensors; each group is still scaled on its
own.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from . import recgen_compiled as compiled
from . import recgen_kernels as kernels
from . import recgen_params as params
from . import recgen_pooling as pooling
from . import recgen_triton

pb_utils = recgen_triton.utils()  # Triton's utilities inside a stub, None in tooling and tests


class TritonPythonModel:
    """Triton entry point."""

    def initialize(self, args: dict[str, str]) -> None:
        """Load the member shards' rows into this instance's memory (each instance is a process); compile the kernel."""
        recgen_triton.require_cpu_instance(args)
        compiled.compile_for(args["model_name"])
        layout = params.ShardGroupParams.from_model_config(json.loads(args["model_config"]))
        version_dir = Path(args["model_repository"]) / args["model_version"]
        self.input_name = layout.input
        self.weights_name = layout.weights_input
        self.output_name = layout.output
        self.rows = pooling.load_group_rows(layout, version_dir)
        _ = self.rows.slot_starts, self.rows.per_stack  # computed here, not on the first request

    def execute(self, requests: list[Any]) -> list[Any]:
        """Pool all batched requests at once, then split the result back per request."""
        packed_ids, split_points = kernels.stack_requests(
            [pb_utils.get_input_tensor_by_name(request, self.input_name).as_numpy() for request in requests]
        )
        weights = None
        if self.weights_name:
            weights, _ = kernels.stack_requests(
                [pb_utils.get_input_tensor_by_name(request, self.weights_name).as_numpy() for request in requests]
            )
        try:
            pooled = pooling.pool_group(self.rows, packed_ids, weights)
        except ValueError:  # an id outside the rows: pool each request alone, so only the bad one fails
            return [self._respond_alone(request) for request in requests]
        return [
            pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(self.output_name, part)])
            for part in kernels.unstack_responses(pooled, split_points)
        ]

    def _respond_alone(self, request: Any) -> Any:
        ids = pb_utils.get_input_tensor_by_name(request, self.input_name).as_numpy()
        weights = None
        if self.weights_name:
            weights = pb_utils.get_input_tensor_by_name(request, self.weights_name).as_numpy()
        try:
            pooled = pooling.pool_group(self.rows, ids, weights)
        except ValueError as error:
            return pb_utils.InferenceResponse(
                error=pb_utils.TritonError(f"input '{self.input_name}': {error}", pb_utils.TritonError.INVALID_ARG)
            )
        return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(self.output_name, pooled)])

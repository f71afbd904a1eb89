"""Embedding shard group (numpy): pools every member shard's rows for its local ids; one partial sum per table.

Config parameter `shards` (JSON): the packed input (local ids of all members, -1 = skip), the packed output
(`dim` columns per table slot: the sum of the pools of the group's shards of that table) and, per member, its
columns in the input, its table slot and its rows file next to this file (rows in hotness-rank order). Shards that
share a placement are served by one model so the ensemble has few steps and few tensors; each group is still
scaled on its own.
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


def pool_group(
    members: list[tuple[int, int, int, np.ndarray]], packed_ids: np.ndarray, slots: int, dim: int
) -> np.ndarray:
    """[B, sum of widths] packed local ids -> [B, slots * dim]: per table slot, the sum of its shards' pools."""
    pooled = np.zeros((packed_ids.shape[0], slots * dim), dtype=np.float32)
    for first, last, slot, padded_rows in members:
        pooled[:, slot * dim : (slot + 1) * dim] += kernels.pool(padded_rows, packed_ids[:, first:last])
    return pooled


class TritonPythonModel:
    """Triton entry point."""

    def initialize(self, args: dict[str, str]) -> None:
        """Load every member shard's rows into this instance's memory (each instance is its own process)."""
        config = json.loads(args["model_config"])
        version_dir = Path(args["model_repository"]) / args["model_version"]
        layout = json.loads(config["parameters"]["shards"]["string_value"])
        self.input_name = layout["input"]
        self.output_name = layout["output"]
        self.dim = int(layout["dim"])
        self.members = [
            (
                int(m["columns"][0]),
                int(m["columns"][1]),
                int(m["slot"]),
                kernels.with_padding_row(np.load(version_dir / m["rows_file"])),
            )
            for m in layout["shards"]
        ]
        self.slots = 1 + max(member[2] for member in self.members)

    def execute(self, requests: list[Any]) -> list[Any]:
        """Pool all batched requests at once, then split the result back per request."""
        packed_ids, split_points = kernels.stack_requests(
            [pb_utils.get_input_tensor_by_name(request, self.input_name).as_numpy() for request in requests]
        )
        pooled = pool_group(self.members, packed_ids, self.slots, self.dim)
        return [
            pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(self.output_name, part)])
            for part in kernels.unstack_responses(pooled, split_points)
        ]

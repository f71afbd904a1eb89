"""Router: buckets each request's sparse ids into local row ids for every shard, packed per shard group.

Config parameter `routing` (JSON) lists, per table, the input tensor, the row count, the shard boundaries in
hotness-rank space and, per shard, the shard group output it goes to and the first column it occupies there;
and the outputs with their widths. `row_ranks.npz` (optional) maps original row ids to hotness ranks for
permuted tables. An id outside [-1, rows) fails only its own request, with a message naming the tensor and value.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
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

ROW_RANKS_FILE = "row_ranks.npz"


@dataclass(frozen=True)
class TableRoute:
    """How one table's ids reach its shards: (output index, first column) per shard."""

    input_name: str
    table: str
    num_rows: int
    boundaries: np.ndarray
    targets: list[tuple[int, int]]
    rank_of_row: np.ndarray | None


@dataclass(frozen=True)
class Routing:
    """Every table's route and the packed outputs (name, width)."""

    tables: list[TableRoute]
    outputs: list[tuple[str, int]]


def load_routing(model_config: dict[str, Any], version_dir: Path) -> Routing:
    """Read the routing table from the model config and the optional hotness ranks next to model.py."""
    routing = json.loads(model_config["parameters"]["routing"]["string_value"])
    ranks_path = version_dir / ROW_RANKS_FILE
    ranks = dict(np.load(ranks_path)) if ranks_path.exists() else {}
    tables = [
        TableRoute(
            input_name=entry["input"],
            table=entry["table"],
            num_rows=int(entry["num_rows"]),
            boundaries=np.asarray(entry["boundaries"], dtype=np.int64),
            targets=[(int(shard["output"]), int(shard["column"])) for shard in entry["shards"]],
            rank_of_row=ranks.get(entry["table"]),
        )
        for entry in routing["tables"]
    ]
    return Routing(tables, [(output["name"], int(output["width"])) for output in routing["outputs"]])


def route_request(routing: Routing, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Packed local ids for every shard group; raises ValueError naming the tensor and the bad id."""
    batch = next(iter(inputs.values())).shape[0]
    packed = [np.full((batch, width), kernels.PADDING_ID, dtype=np.int32) for _, width in routing.outputs]
    for route in routing.tables:
        ids = inputs[route.input_name]
        bad = kernels.first_bad_id(ids, route.num_rows)
        if bad is not None:
            raise ValueError(kernels.bad_id_message(route.input_name, bad, route.num_rows, route.table))
        local = kernels.route(ids.astype(np.int64, copy=False), route.boundaries, route.rank_of_row)
        for (output, column), shard_ids in zip(route.targets, local, strict=True):
            packed[output][:, column : column + shard_ids.shape[1]] = shard_ids
    return {name: array for (name, _), array in zip(routing.outputs, packed, strict=True)}


class TritonPythonModel:
    """Triton entry point."""

    def initialize(self, args: dict[str, str]) -> None:
        """Load the routing table once per instance."""
        version_dir = Path(args["model_repository"]) / args["model_version"]
        self.routing = load_routing(json.loads(args["model_config"]), version_dir)

    def execute(self, requests: list[Any]) -> list[Any]:
        """Route all batched requests in one pass; if any id is bad, route each request alone so only it fails."""
        names = [route.input_name for route in self.routing.tables]
        per_request = [
            {name: pb_utils.get_input_tensor_by_name(request, name).as_numpy() for name in names}
            for request in requests
        ]
        if len(per_request) > 1:
            stacked = {}
            split_points: list[int] = []
            for name in names:
                stacked[name], split_points = kernels.stack_requests([inputs[name] for inputs in per_request])
            try:
                routed = route_request(self.routing, stacked)
            except ValueError:
                pass  # some request holds a bad id: fall through to one request at a time
            else:
                parts = {name: kernels.unstack_responses(array, split_points) for name, array in routed.items()}
                return [
                    pb_utils.InferenceResponse(
                        output_tensors=[pb_utils.Tensor(name, arrays[index]) for name, arrays in parts.items()]
                    )
                    for index in range(len(requests))
                ]
        responses = []
        for inputs in per_request:
            try:
                outputs = route_request(self.routing, inputs)
            except ValueError as error:
                responses.append(
                    pb_utils.InferenceResponse(error=pb_utils.TritonError(str(error), pb_utils.TritonError.INVALID_ARG))
                )
                continue
            responses.append(
                pb_utils.InferenceResponse(
                    output_tensors=[pb_utils.Tensor(name, array) for name, array in outputs.items()]
                )
            )
        return responses

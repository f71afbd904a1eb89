"""Router: buckets each request's sparse ids into per-shard local row ids.

Config parameter `routing` (JSON) lists, per table, the input tensor, the row count, the shard boundaries in
hotness-rank space and the output tensor of each shard; `row_ranks.npz` (optional) maps original row ids to
hotness ranks for permuted tables. An id outside [-1, rows) fails only its own request, with a message naming
the tensor and the value.
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
    """How one table's ids reach its shards."""

    input_name: str
    table: str
    num_rows: int
    boundaries: np.ndarray
    output_names: list[str]
    rank_of_row: np.ndarray | None


def load_routes(model_config: dict[str, Any], version_dir: Path) -> list[TableRoute]:
    """Read the routing table from the model config and the optional hotness ranks next to model.py."""
    routing = json.loads(model_config["parameters"]["routing"]["string_value"])
    ranks_path = version_dir / ROW_RANKS_FILE
    ranks = dict(np.load(ranks_path)) if ranks_path.exists() else {}
    return [
        TableRoute(
            input_name=entry["input"],
            table=entry["table"],
            num_rows=int(entry["num_rows"]),
            boundaries=np.asarray(entry["boundaries"], dtype=np.int64),
            output_names=list(entry["outputs"]),
            rank_of_row=ranks.get(entry["table"]),
        )
        for entry in routing["tables"]
    ]


def route_request(routes: list[TableRoute], inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Local ids for every shard of every table; raises ValueError naming the tensor and the bad id."""
    outputs: dict[str, np.ndarray] = {}
    for route in routes:
        ids = inputs[route.input_name]
        bad = kernels.first_bad_id(ids, route.num_rows)
        if bad is not None:
            raise ValueError(kernels.bad_id_message(route.input_name, bad, route.num_rows, route.table))
        local = kernels.route(ids.astype(np.int64, copy=False), route.boundaries, route.rank_of_row)
        outputs.update(zip(route.output_names, local, strict=True))
    return outputs


class TritonPythonModel:
    """Triton entry point."""

    def initialize(self, args: dict[str, str]) -> None:
        """Load the routing table once per instance."""
        version_dir = Path(args["model_repository"]) / args["model_version"]
        self.routes = load_routes(json.loads(args["model_config"]), version_dir)

    def execute(self, requests: list[Any]) -> list[Any]:
        """Route each request on its own, so a bad id fails only that request."""
        responses = []
        for request in requests:
            inputs = {
                route.input_name: pb_utils.get_input_tensor_by_name(request, route.input_name).as_numpy()
                for route in self.routes
            }
            try:
                outputs = route_request(self.routes, inputs)
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

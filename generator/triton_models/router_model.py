"""Router: buckets each request's sparse ids into shards, as row ids into each shard group's stacked rows.

Config parameter `routing` (JSON) lists, per table, the input tensor, the row count, ids per sample, the shard
boundaries in hotness-rank space and, per shard, the shard group output it goes to, the first column of its
table's block there and the shard's first row in the group's stacked rows; and the outputs with their widths.
All tables are routed in one vectorised pass (see `recgen_kernels.route_packed`). `row_ranks.npz` (optional)
maps original row ids to hotness ranks for permuted tables. An id outside [-1, rows) fails only its own request,
with a message naming the tensor and value.
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
    """One table's input and its validity range; `rank_of_row` maps original ids to hotness ranks (or None)."""

    input_name: str
    table: str
    num_rows: int
    ids_per_sample: int
    rank_of_row: np.ndarray | None
    side: str = "item"


@dataclass(frozen=True)
class Routing:
    """Every table's route, the packed outputs (name, width) and the compiled layout of all of them side by side."""

    tables: list[TableRoute]
    outputs: list[tuple[str, int]]
    layout: kernels.RouteLayout
    column_rows: np.ndarray  # [C] row count of each input column's table, for the validity check
    mode: str = "flattened"  # or "ranking": one user row and N candidate rows per request
    max_rows: int = 0  # ranking: 1 + N must fit the shard groups' max_batch_size


def load_routing(model_config: dict[str, Any], version_dir: Path) -> Routing:
    """Read the routing table from the model config and the optional hotness ranks next to model.py."""
    routing = json.loads(model_config["parameters"]["routing"]["string_value"])
    ranks_path = version_dir / ROW_RANKS_FILE
    ranks = dict(np.load(ranks_path)) if ranks_path.exists() else {}
    outputs = [(output["name"], int(output["width"])) for output in routing["outputs"]]
    output_offsets = np.cumsum([0] + [width for _, width in outputs]).tolist()
    tables = []
    layout_tables = []
    for entry in routing["tables"]:
        ids_per_sample = int(entry["ids_per_sample"])
        tables.append(
            TableRoute(
                entry["input"],
                entry["table"],
                int(entry["num_rows"]),
                ids_per_sample,
                ranks.get(entry["table"]),
                entry.get("side", "item"),
            )
        )
        columns = [output_offsets[int(shard["output"])] + int(shard["column"]) for shard in entry["shards"]]
        first_rows = [int(shard["first_row"]) for shard in entry["shards"]]
        layout_tables.append((ids_per_sample, entry["boundaries"], columns, first_rows))
    column_rows = np.concatenate([np.full(t.ids_per_sample, t.num_rows, dtype=np.int64) for t in tables])
    layout = kernels.RouteLayout.build(layout_tables, output_offsets[-1])
    mode = routing.get("mode", "flattened")
    return Routing(tables, outputs, layout, column_rows, mode, int(routing.get("max_rows", 0)))


def combine_ranking_request(routing: Routing, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A ranking request's ids as one batch: every table [1 + N, L], row 0 the user's ids, rows 1..N the candidates'.

    Raises ValueError naming the tensor when the user tensors do not hold exactly one row, the candidate tensors
    disagree on N, or 1 + N exceeds what the shard groups accept.
    """
    candidates: dict[str, int] = {}
    for route in routing.tables:
        rows = inputs[route.input_name].shape[0]
        if route.side == "user" and rows != 1:
            raise ValueError(f"input '{route.input_name}' holds {rows} rows; a ranking request has one user (1 row)")
        if route.side == "item":
            candidates[route.input_name] = rows
    if len(set(candidates.values())) > 1:
        raise ValueError(f"the candidate inputs disagree on the number of candidates: {candidates}")
    count = next(iter(candidates.values()), 0)
    if routing.max_rows and 1 + count > routing.max_rows:
        raise ValueError(
            f"a ranking request holds at most {routing.max_rows - 1} candidates (max_batch_size - 1), got {count}"
        )
    combined = {}
    for route in routing.tables:
        ids = inputs[route.input_name]
        both = np.full((1 + count, ids.shape[1]), kernels.PADDING_ID, dtype=ids.dtype)
        if route.side == "user":
            both[0] = ids[0]
        else:
            both[1:] = ids
        combined[route.input_name] = both
    return combined


def route_request(routing: Routing, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Packed local ids for every shard group; raises ValueError naming the tensor and the bad id."""
    ids = np.concatenate([inputs[route.input_name] for route in routing.tables], axis=1).astype(np.int64, copy=False)
    if ((ids < kernels.PADDING_ID) | (ids >= routing.column_rows)).any():
        for route in routing.tables:  # name the first table holding a bad id
            bad = kernels.first_bad_id(inputs[route.input_name], route.num_rows)
            if bad is not None:
                raise ValueError(kernels.bad_id_message(route.input_name, bad, route.num_rows, route.table))
    first = 0
    for route in routing.tables:
        last = first + route.ids_per_sample
        if route.rank_of_row is not None:
            ids[:, first:last] = kernels.ranks_of(ids[:, first:last], route.rank_of_row)
        first = last
    packed = kernels.route_packed(ids, routing.layout)
    if len(routing.outputs) == 1:
        return {routing.outputs[0][0]: packed}
    offsets = np.cumsum([0] + [width for _, width in routing.outputs])
    return {
        name: np.ascontiguousarray(packed[:, offsets[index] : offsets[index + 1]])
        for index, (name, _) in enumerate(routing.outputs)
    }


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
        if self.routing.mode == "ranking":  # not batching: one request per entry
            return [self._respond(self._ranking, inputs) for inputs in per_request]
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
        return [self._respond(lambda inputs: route_request(self.routing, inputs), inputs) for inputs in per_request]

    def _ranking(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return route_request(self.routing, combine_ranking_request(self.routing, inputs))

    @staticmethod
    def _respond(route: Any, inputs: dict[str, np.ndarray]) -> Any:
        """One response: the routed outputs, or the request's own error (the other requests are unaffected)."""
        try:
            outputs = route(inputs)
        except ValueError as error:
            return pb_utils.InferenceResponse(error=pb_utils.TritonError(str(error), pb_utils.TritonError.INVALID_ARG))
        return pb_utils.InferenceResponse(
            output_tensors=[pb_utils.Tensor(name, array) for name, array in outputs.items()]
        )

"""Router: buckets each request's sparse ids into shards, as row ids into each shard group's stacked rows.

Its typed parameters (`recgen_params`): `routing` (per table: input, rows, ids per sample, shard boundaries in
hotness-rank space, and where each shard's ids go), `front_cache`, `ranking_router` (one user and N candidates),
`router_pooling` (the groups it pools itself, a fused lookup step), `access_counts` and `admission` (it sheds
overload). All tables are routed in one vectorised pass (`recgen_kernels.route_packed`); a permuted table's
`row_ranks__<table>.npy` maps its original ids to hotness ranks. An id outside [-1, rows) fails only its own
request, naming the tensor and value. The native router (`generator/native`) reads the same parameters and files.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import recgen_access as access
from . import recgen_admission as admission
from . import recgen_compiled as compiled
from . import recgen_kernels as kernels
from . import recgen_params as params
from . import recgen_pooling as pooling
from . import recgen_triton

pb_utils = recgen_triton.utils()  # Triton's utilities inside a stub, None in tooling and tests

_cache_metrics = access.cache_metrics  # a module name tests can replace (Prometheus needs the server)


def ranks_file(table: str) -> str:
    """A permuted table's hotness rank of every original id ([rows] int32, int64 past 2**31 rows), beside model.py."""
    return f"row_ranks__{table}.npy"


def front_cache_file(table: str) -> str:
    """A front-cached table's rows in rank order, its hottest `cached_rows` ([cached_rows, dim] FP32)."""
    return f"front_cache__{table}.npy"


@dataclass(frozen=True)
class TableRoute:
    """One table's input and its validity range; `rank_of_row` maps original ids to hotness ranks (or None)."""

    input_name: str
    table: str
    num_rows: int
    ids_per_sample: int
    rank_of_row: np.ndarray | None
    side: str = "item"
    cached_rows: int = 0
    cache: np.ndarray | None = None  # the cached rows plus a zero padding row
    weights_name: str = ""  # the request tensor of per-id weights ("" = unweighted)
    padding_id: int = -1  # an id the model pools as nothing, dropped like -1 (-1 = none)


@dataclass(frozen=True)
class Routing:
    """Every table's route, the packed outputs (name, width) and the compiled layout of all of them side by side."""

    tables: list[TableRoute]
    outputs: list[tuple[str, int]]
    layout: kernels.RouteLayout
    column_rows: np.ndarray  # [C] row count of each input column's table, for the validity check
    mode: str = "flattened"  # or "ranking": one user row and N candidate rows per request
    max_rows: int = 0  # ranking: 1 + N must fit the shard groups' max_batch_size
    cache_output: str = ""  # the front cache's partial sums output ("" = no front cache)
    output_offsets: tuple[int, ...] = ()  # first packed column of every output, then the total width
    counts_output: str = ""  # ids per sample of the mean-pooled features ("" = none)
    counted_columns: tuple[tuple[int, int], ...] = ()  # [first, last) input columns of every counted feature
    weights_outputs: tuple[str, ...] = ()  # per packed output, the output of its ids' weights ("" = none)
    finite_inputs: tuple[str, ...] = ()  # FP32 inputs that must hold finite values (dense features, weights)

    @functools.cached_property
    def weighted(self) -> bool:
        """Whether some feature's ids come with weights (then groups that pool one get them packed too)."""
        return any(self.weights_outputs)

    @functools.cached_property
    def input_names(self) -> list[str]:
        """Every request tensor the router reads: ids, weights, then the tensors it only checks."""
        names = [t.input_name for t in self.tables] + [t.weights_name for t in self.tables if t.weights_name]
        return names + [name for name in self.finite_inputs if name not in names]


def _table_route(entry: params.RoutedTable, version_dir: Path) -> TableRoute:
    """A feature's route, with its rank map and front-cache rows read from `version_dir` where the build wrote them."""
    ranks_path, cache_path = version_dir / ranks_file(entry.table), version_dir / front_cache_file(entry.table)
    if entry.permuted != ranks_path.exists():
        raise params.ParameterError(f"table {entry.table!r}: permuted is {entry.permuted}, {ranks_path.name} "
                                    f"{'is missing' if entry.permuted else 'exists'}")  # fmt: skip
    ranks = np.load(ranks_path) if entry.permuted else None
    if ranks is not None and (ranks.shape != (entry.num_rows,) or ranks.dtype not in (np.int32, np.int64)):
        raise params.ParameterError(f"table {entry.table!r}: {ranks_path.name} does not hold {entry.num_rows} ranks")
    cache = np.load(cache_path) if entry.cached_rows else None
    if cache is not None and (cache.shape[:1] != (entry.cached_rows,) or cache.ndim != 2 or cache.dtype != np.float32):
        raise params.ParameterError(f"table {entry.table!r}: {cache_path.name} does not hold {entry.cached_rows} rows")
    padded = None if cache is None else kernels.with_padding_row(cache)
    return TableRoute(entry.input, entry.table, entry.num_rows, entry.ids_per_sample, ranks, entry.side,
                      entry.cached_rows, padded, entry.weights_input, entry.padding_id)  # fmt: skip


def load_routing(model_config: dict[str, Any], version_dir: Path) -> Routing:
    """Read the typed routing parameters from the model config, and the rank maps and cache rows next to model.py."""
    routing = params.RoutingParams.from_model_config(model_config)
    cache = params.FrontCacheParams.optional_from_model_config(model_config)
    ranking = params.RankingRouterParams.optional_from_model_config(model_config)
    checks = params.RequestChecksParams.optional_from_model_config(model_config)
    output_offsets = np.cumsum([0] + [output.width for output in routing.outputs]).tolist()
    tables = [_table_route(entry, version_dir) for entry in routing.tables]
    if cache is not None and list(cache.tables) != [t.table for t in tables if t.cached_rows]:
        raise params.ParameterError(f"front_cache tables {list(cache.tables)} disagree with the tables' cached_rows")
    layout_tables = [
        (
            entry.ids_per_sample,
            list(entry.boundaries),
            [output_offsets[shard.output] + shard.column for shard in entry.shards],
            [shard.first_row for shard in entry.shards],
        )
        for entry in routing.tables
    ]
    column_rows = np.concatenate([np.full(t.ids_per_sample, t.num_rows, dtype=np.int64) for t in tables])
    edges = np.cumsum([0] + [entry.ids_per_sample for entry in routing.tables]).tolist()
    counted = tuple((edges[index], edges[index + 1]) for index, entry in enumerate(routing.tables) if entry.counted)
    if bool(counted) != bool(routing.counts_output):
        raise params.ParameterError(
            f"routing: counts_output {routing.counts_output!r} vs {len(counted)} counted features"
        )
    return Routing(
        tables,
        [(output.name, output.width) for output in routing.outputs],
        kernels.RouteLayout.build(layout_tables, output_offsets[-1]),
        column_rows,
        "flattened" if ranking is None else "ranking",
        0 if ranking is None else ranking.max_rows,
        "" if cache is None else cache.output,
        tuple(output_offsets),
        routing.counts_output,
        counted,
        tuple(output.weights for output in routing.outputs),
        () if checks is None else tuple(checks.finite_inputs),
    )


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
        names = [route.input_name, route.weights_name] if route.weights_name else [route.input_name]
        for name in names:  # a feature's weights go where its ids go; _id_weights checks their shapes
            given = inputs[name]
            both = np.full((1 + count, *given.shape[1:]), kernels.PADDING_ID, dtype=given.dtype)
            if given.shape[0] != (1 if route.side == "user" else count):
                raise ValueError(
                    f"input '{name}' holds {given.shape[0]} rows, its ids {inputs[route.input_name].shape[0]}"
                )
            if route.side == "user":
                both[0] = given[0]
            else:
                both[1:] = given
            combined[name] = both
    return combined


def route_request(
    routing: Routing,
    inputs: dict[str, np.ndarray],
    cache_counts: access.CacheCounts | None = None,
    counter: access.AccessCounter | None = None,
) -> dict[str, np.ndarray]:
    """Packed local ids for every shard group; raises ValueError naming the tensor and the bad id.

    With a front cache, ids among a table's hottest `cached_rows` ranks are pooled here, from the router's copy
    of those rows, into the cache's partial sums, and reach no shard. `counter` counts the ids of a valid request.
    """
    ids = np.concatenate([inputs[route.input_name] for route in routing.tables], axis=1).astype(np.int64, copy=False)
    if compiled.any_out_of_range(ids, routing.column_rows):
        for route in routing.tables:  # name the first table holding a bad id
            bad = kernels.first_bad_id(inputs[route.input_name], route.num_rows)
            if bad is not None:
                raise ValueError(kernels.bad_id_message(route.input_name, bad, route.num_rows, route.table))
    weights = _id_weights(routing, inputs, ids.shape) if routing.weighted else None
    counts = _drop_padding_and_count(routing, ids)
    if counter is not None:  # nothing below refuses the request
        access.record(counter, ids, routing.mode == "ranking")
    cached_pools = []
    first = 0
    for route in routing.tables:
        last = first + route.ids_per_sample
        if route.rank_of_row is not None:
            ids[:, first:last] = kernels.ranks_of(ids[:, first:last], route.rank_of_row)
        if route.cache is not None:
            block = ids[:, first:last]
            hit = (block >= 0) & (block < route.cached_rows)
            cached_weights = None if weights is None else weights[:, first:last]
            cached_pools.append(compiled.pool(route.cache, np.where(hit, block, kernels.PADDING_ID), cached_weights))
            if cache_counts is not None:
                cache_counts.lookups += int((block >= 0).sum())
                cache_counts.hits += int(hit.sum())
            block[hit] = kernels.PADDING_ID  # served here: no shard sees it
        first = last
    packed_weights = None
    if weights is None:
        packed = compiled.route_packed(ids, routing.layout)
    else:
        packed, packed_weights = compiled.route_packed_weighted(ids, weights, routing.layout)
    offsets = routing.output_offsets
    if len(routing.outputs) == 1:
        outputs = {routing.outputs[0][0]: packed}
    else:
        outputs = {
            name: np.ascontiguousarray(packed[:, offsets[index] : offsets[index + 1]])
            for index, (name, _) in enumerate(routing.outputs)
        }
    if packed_weights is not None:
        for index, name in enumerate(routing.weights_outputs):
            if name:
                outputs[name] = np.ascontiguousarray(packed_weights[:, offsets[index] : offsets[index + 1]])
    if routing.cache_output:
        outputs[routing.cache_output] = np.concatenate(cached_pools, axis=1)
    if counts is not None:
        outputs[routing.counts_output] = counts.astype(np.float32)
    return outputs


def _drop_padding_and_count(routing: Routing, ids: np.ndarray) -> np.ndarray | None:
    """Make every feature's padding_idx -1 in place, then count the mean-pooled features' ids per sample.

    A padding id pools nothing and counts for no mean. Counting comes before the front cache takes its ids (the mean
    divides by every id of the sample); None without a mean-pooled feature.
    """
    first = 0
    for route in routing.tables:
        if route.padding_id >= 0:
            block = ids[:, first : first + route.ids_per_sample]
            block[block == route.padding_id] = kernels.PADDING_ID
        first += route.ids_per_sample
    if not routing.counts_output:
        return None
    present = ids >= 0
    return np.stack([present[:, first:last].sum(axis=1) for first, last in routing.counted_columns], axis=1)


def _id_weights(routing: Routing, inputs: dict[str, np.ndarray], shape: tuple[int, ...]) -> np.ndarray:
    """Every id's weight side by side like the ids ([B, C] FP32; 1 for unweighted features).

    Raises ValueError naming the tensor when a weights tensor is not shaped as its feature's ids.
    """
    weights = np.ones(shape, dtype=np.float32)
    first = 0
    for route in routing.tables:
        last = first + route.ids_per_sample
        if route.weights_name:
            given = inputs[route.weights_name]
            expected = inputs[route.input_name].shape
            if given.shape != expected:
                raise ValueError(
                    f"input '{route.weights_name}' is shaped {list(given.shape)}; it must match "
                    f"'{route.input_name}' {list(expected)} (one weight per id)"
                )
            weights[:, first:last] = given
        first = last
    return weights


class TritonPythonModel:
    """Triton entry point."""

    def initialize(self, args: dict[str, str]) -> None:
        """Load the routing table, compile the kernels, map the rows of the groups it pools; register cache counters."""
        recgen_triton.require_cpu_instance(args)
        compiled.compile_for(args["model_name"])
        model_dir, config = Path(args["model_repository"]), json.loads(args["model_config"])
        self.routing = load_routing(config, model_dir / args["model_version"])
        pooled = params.RouterPoolingParams.optional_from_model_config(config)
        self.pooled = [] if pooled is None else pooling.map_router_groups(pooled, model_dir, args["model_version"])
        self.counts = access.CacheCounts()
        self.metrics = _cache_metrics(args["model_name"]) if self.routing.cache_output else None
        self.counter = _access_counter(config, args["model_name"], self.routing)
        spec = params.AdmissionParams.optional_from_model_config(config)
        log = print if pb_utils is None else pb_utils.Logger.log_warn
        self.admission = admission.open_admission(spec, args["model_name"], log)

    def execute(self, requests: list[Any]) -> list[Any]:
        """Route the batched requests (or shed them all while the server is overloaded); export the cache's counts."""
        shed = None if self.admission is None else self.admission.shed_message()
        if shed is not None:  # at once, reading nothing; one error per response (2.51 crashes on a shared one)
            unavailable = pb_utils.TritonError.UNAVAILABLE
            return [pb_utils.InferenceResponse(error=pb_utils.TritonError(shed, unavailable)) for _ in requests]
        before = (self.counts.lookups, self.counts.hits)
        responses = self._route_all(requests)
        if self.metrics is not None:
            lookups, hits, _ = self.metrics
            lookups.increment(self.counts.lookups - before[0])
            hits.increment(self.counts.hits - before[1])
        return responses

    def finalize(self) -> None:
        """Stop the admission's polling thread."""
        if self.admission is not None:
            self.admission.close()

    def _route_all(self, requests: list[Any]) -> list[Any]:
        """Route all batched requests in one pass; if any id is bad, route each request alone so only it fails."""
        names = self.routing.input_names
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
                routed = self._flattened(stacked)
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
        return [self._respond(self._flattened, inputs) for inputs in per_request]

    def _flattened(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        kernels.check_finite(self.routing.finite_inputs, inputs)
        return pooling.pool_routed(self.pooled, route_request(self.routing, inputs, self.counts, self.counter))

    def _ranking(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        kernels.check_finite(self.routing.finite_inputs, inputs)
        combined = combine_ranking_request(self.routing, inputs)
        routed = route_request(self.routing, combined, self.counts, self.counter)
        return pooling.pool_routed(self.pooled, routed)

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


def _access_counter(config: dict[str, Any], model_name: str, routing: Routing) -> access.AccessCounter | None:
    """The access counters of this instance (None when the build turned counting off)."""
    spec = params.AccessCountsParams.optional_from_model_config(config)
    if spec is None:
        return None
    tables = routing.tables
    widths, sides, rows = [t.ids_per_sample for t in tables], [t.side for t in tables], [t.num_rows for t in tables]
    return access.open_counter(spec, model_name, [t.table for t in tables], widths, sides, rows)

"""Request generators shaped like real traffic: ids and pooling lengths from an access profile, or uniform.

`RequestSampler` makes flattened and ranking requests for one served ensemble; `RequestSampler.from_served`
learns the request shape from what a server reports (the ensemble's metadata, the router's typed routing
parameters), so a load test needs only a URL and, optionally, a profile.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from generator import naming
from generator.errors import RecgenError, UserInputError
from generator.model.dlrm import PADDING_ID
from generator.traffic.profile import AccessProfile
from generator.traffic.requests import RankingRequest, StructuredRequest
from generator.triton_models.recgen_params import ParameterError, RoutingParams


@dataclass(frozen=True)
class TableTraffic:
    """How one table's ids are drawn: from a profile's counts, or uniformly over all rows."""

    name: str
    num_rows: int
    width: int
    rows: np.ndarray | None = None
    cumulative: np.ndarray | None = None
    mean_ids_per_sample: float | None = None
    side: str = "item"
    #: The request tensor carrying these ids (an imported model's feature may be named apart from its table).
    input: str = ""
    #: The request tensor of these ids' weights ("" = unweighted).
    weights: str = ""

    def sample_ids(self, batch_size: int, rng: np.random.Generator) -> np.ndarray:
        """[batch, width] ids, right-padded with -1; lengths around the profile's mean (else uniform 0..width)."""
        if self.mean_ids_per_sample is None:
            lengths = rng.integers(0, self.width + 1, size=batch_size)
        else:
            lengths = np.clip(rng.poisson(self.mean_ids_per_sample, size=batch_size), 1, self.width)
        if self.rows is None or self.cumulative is None or self.rows.size == 0:
            ids = rng.integers(0, self.num_rows, size=(batch_size, self.width), dtype=np.int64)
        else:
            draws = rng.random((batch_size, self.width)) * self.cumulative[-1]
            ids = self.rows[np.searchsorted(self.cumulative, draws, side="right").clip(max=self.rows.size - 1)]
        ids = ids.astype(np.int64, copy=False)
        ids[np.arange(self.width)[np.newaxis, :] >= lengths[:, np.newaxis]] = PADDING_ID
        return ids


@dataclass(frozen=True)
class RequestSampler:
    """Makes ranking requests for one ensemble."""

    num_dense_features: int
    tables: tuple[TableTraffic, ...]

    #: Dense-feature widths of the `<ensemble>_ranking` request (0, 0 when the server has no ranking ensemble).
    user_dense_features: int = 0
    item_dense_features: int = 0
    #: An imported model's dense inputs (name, width) and first output; () and `score` for recgen's DLRM.
    dense_inputs: tuple[tuple[str, int], ...] = ()
    output: str = naming.SCORE
    #: An imported model's `<ensemble>_ranking` inputs (`user_<tensor>` or `item_<tensor>`); () without one.
    ranking_inputs: tuple[str, ...] = ()

    def sample_ranking_tensors(
        self, num_candidates: int, rng: np.random.Generator
    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """An imported model's ranking request by input name, and the same request flattened (user rows repeated)."""
        if not self.ranking_inputs:
            raise RecgenError("the server has no ranking ensemble (the model was built without --user-features)")
        flattened = self.sample_tensors(num_candidates, rng)
        ranking = {}
        for name in list(flattened):
            if naming.side_input(name, "user") in self.ranking_inputs:
                flattened[name] = np.repeat(flattened[name][:1], num_candidates, axis=0)
                ranking[naming.side_input(name, "user")] = flattened[name][:1]
            else:
                ranking[naming.side_input(name, "item")] = flattened[name]
        return ranking, flattened

    def sample_tensors(self, batch_size: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """One flattened request as tensors by input name, for any served contract."""
        if not self.dense_inputs:
            return self.sample(batch_size, rng).tensors()
        tensors = {
            name: rng.standard_normal((batch_size, width)).astype(np.float32) for name, width in self.dense_inputs
        }
        for table in self.tables:
            tensors[table.input] = table.sample_ids(batch_size, rng)
            if table.weights:
                tensors[table.weights] = rng.uniform(0.0, 2.0, tensors[table.input].shape).astype(np.float32)
        return tensors

    def sample(self, batch_size: int, rng: np.random.Generator) -> RankingRequest:
        """One request of `batch_size` candidates."""
        dense = rng.standard_normal((batch_size, self.num_dense_features)).astype(np.float32)
        return RankingRequest(dense, {t.name: t.sample_ids(batch_size, rng) for t in self.tables})

    def sample_structured(self, num_candidates: int, rng: np.random.Generator) -> StructuredRequest:
        """One ranking request: one user (user-side tables and dense features), `num_candidates` items."""
        if not self.user_dense_features + self.item_dense_features:
            raise RecgenError("the server has no ranking ensemble (the model has no user-side features)")
        return StructuredRequest(
            rng.standard_normal((1, self.user_dense_features)).astype(np.float32),
            rng.standard_normal((num_candidates, self.item_dense_features)).astype(np.float32),
            {t.name: t.sample_ids(1, rng) for t in self.tables if t.side == "user"},
            {t.name: t.sample_ids(num_candidates, rng) for t in self.tables if t.side == "item"},
        )


def sampler_from_metadata(
    ensemble: str,
    metadata: Mapping[str, Any],
    router_config: Mapping[str, Any],
    ranking_metadata: Mapping[str, Any] | None,
    profile: AccessProfile | None = None,
) -> RequestSampler:
    """The sampler of a served ensemble, from its metadata, its router's config and the ranking ensemble's metadata.

    The router's `RoutingParams` give every table's name, side and row count; the metadata the input widths.
    """
    try:
        routing = RoutingParams.from_model_config(router_config)
    except ParameterError as error:
        raise RecgenError(f"{ensemble!r} has no recgen router ({error}); is it a recgen ensemble?") from error
    by_input = {route.input: route for route in routing.tables}
    weights_inputs = {route.weights_input for route in routing.tables if route.weights_input}
    num_dense = None
    dense_inputs = []
    tables = []
    for tensor in metadata["inputs"]:
        width = int(tensor["shape"][-1])
        if tensor["name"] == naming.DENSE_FEATURES:
            num_dense = width
        elif tensor["name"] in by_input:
            route = by_input[tensor["name"]]
            traffic = table_traffic(route.table, route.num_rows, width, profile)
            tables.append(replace(traffic, side=route.side, input=route.input, weights=route.weights_input))
        elif tensor["datatype"] == "FP32" and tensor["name"] not in weights_inputs:
            dense_inputs.append((tensor["name"], width))
    if num_dense is None and not dense_inputs:
        raise RecgenError(f"ensemble {ensemble!r} has no dense input")
    widths = {naming.USER_DENSE_FEATURES: 0, naming.ITEM_DENSE_FEATURES: 0}
    if ranking_metadata is not None:  # the ranking ensemble exists only for models with user-side features
        widths.update({t["name"]: int(t["shape"][-1]) for t in ranking_metadata["inputs"] if t["name"] in widths})
    return RequestSampler(
        num_dense or 0,
        tuple(tables),
        widths[naming.USER_DENSE_FEATURES],
        widths[naming.ITEM_DENSE_FEATURES],
        () if num_dense is not None else tuple(dense_inputs),
        str(metadata["outputs"][0]["name"]),
        ()
        if num_dense is not None or ranking_metadata is None
        else tuple(t["name"] for t in ranking_metadata["inputs"]),
    )


def table_traffic(name: str, num_rows: int, width: int, profile: AccessProfile | None) -> TableTraffic:
    """How one table's ids are drawn: from the profile's counts, or uniformly without a profile."""
    if profile is None:
        return TableTraffic(name, num_rows, width)
    access = profile.table(name)
    if access.num_rows != num_rows:
        raise UserInputError(f"profile table {name!r} has {access.num_rows} rows, the served model {num_rows}")
    cumulative = np.cumsum(access.counts, dtype=np.float64)
    return TableTraffic(name, num_rows, width, access.rows, cumulative, max(access.mean_ids_per_sample, 1.0))

"""Ranking requests to a served ensemble over HTTP or gRPC, and the check against the PyTorch reference."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from tritonclient.utils import np_to_triton_dtype

from generator import naming
from generator.errors import CheckFailedError, UserInputError
from generator.models import DLRM, PADDING_ID

Protocol = Literal["http", "grpc"]
PROTOCOLS: tuple[Protocol, ...] = ("http", "grpc")
DEFAULT_PORTS: dict[Protocol, int] = {"http": 8000, "grpc": 8001}
#: Largest allowed |served - PyTorch| per score (DESIGN.md request contract).
SCORE_TOLERANCE = 1e-5
DEFAULT_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class RankingRequest:
    """One flattened ranking request: B samples of dense features and right-padded ids per table."""

    dense_features: np.ndarray
    sparse: Mapping[str, np.ndarray]

    @property
    def batch_size(self) -> int:
        """Samples in the request."""
        return int(self.dense_features.shape[0])

    def tensors(self) -> dict[str, np.ndarray]:
        """Request tensors by ensemble input name."""
        tensors = {naming.DENSE_FEATURES: self.dense_features}
        tensors.update({naming.sparse_input(table): ids for table, ids in self.sparse.items()})
        return tensors


@dataclass(frozen=True)
class StructuredRequest:
    """One ranking request as RecServe sends it: the user's features once, N candidates' item features.

    `user_dense` [1, Du] and `item_dense` [N, Di] hold the model's user- and item-side dense features (model order
    within a side); `user_sparse` ([1, L]) and `item_sparse` ([N, L]) the ids of the user- and item-side tables.
    """

    user_dense: np.ndarray
    item_dense: np.ndarray
    user_sparse: Mapping[str, np.ndarray]
    item_sparse: Mapping[str, np.ndarray]

    @property
    def num_candidates(self) -> int:
        """N."""
        return int(self.item_dense.shape[0])

    def tensors(self) -> dict[str, np.ndarray]:
        """Request tensors by `<model>_ranking` input name (a side without dense features sends none)."""
        tensors = {}
        if self.user_dense.shape[1]:
            tensors[naming.USER_DENSE_FEATURES] = self.user_dense
        if self.item_dense.shape[1]:
            tensors[naming.ITEM_DENSE_FEATURES] = self.item_dense
        tensors.update({naming.side_sparse_input(t, "user"): ids for t, ids in self.user_sparse.items()})
        tensors.update({naming.side_sparse_input(t, "item"): ids for t, ids in self.item_sparse.items()})
        return tensors

    def flattened(self, model: DLRM) -> RankingRequest:
        """The same request for the flattened ensemble: the user's features repeated for every candidate."""
        count = self.num_candidates
        dense = np.empty((count, model.num_dense_features), dtype=np.float32)
        dense[:, model.dense_indices("user")] = self.user_dense
        dense[:, model.dense_indices("item")] = self.item_dense
        sparse = {name: np.repeat(ids, count, axis=0) for name, ids in self.user_sparse.items()}
        sparse.update(self.item_sparse)
        return RankingRequest(dense, {table.name: sparse[table.name] for table in model.tables})


def random_structured_request(model: DLRM, num_candidates: int, rng: np.random.Generator) -> StructuredRequest:
    """A valid random ranking request: one random user, `num_candidates` random candidates."""
    user = random_request(model, 1, rng)
    items = random_request(model, num_candidates, rng)
    return StructuredRequest(
        user.dense_features[:, model.dense_indices("user")],
        items.dense_features[:, model.dense_indices("item")],
        {t.name: user.sparse[t.name] for t in model.tables if t.side == "user"},
        {t.name: items.sparse[t.name] for t in model.tables if t.side == "item"},
    )


def random_request(model: DLRM, batch_size: int, rng: np.random.Generator) -> RankingRequest:
    """Valid random request: per sample 0..L ids drawn from the whole table, right-padded with -1."""
    if batch_size < 1:
        raise UserInputError(f"`batch` must be >= 1, got {batch_size}")
    dense = rng.standard_normal((batch_size, model.num_dense_features)).astype(np.float32)
    sparse = {}
    for table in model.tables:
        width = table.max_ids_per_sample
        ids = rng.integers(0, table.num_rows, size=(batch_size, width), dtype=np.int64)
        lengths = rng.integers(0, width + 1, size=batch_size)
        ids[np.arange(width)[np.newaxis, :] >= lengths[:, np.newaxis]] = PADDING_ID
        sparse[table.name] = ids
    return RankingRequest(dense, sparse)


def reference_scores(model: DLRM, request: RankingRequest) -> np.ndarray:
    """The PyTorch model's scores [B, 1] for a request."""
    with torch.no_grad():
        sparse = {table: torch.from_numpy(ids) for table, ids in request.sparse.items()}
        return model(torch.from_numpy(request.dense_features), sparse).numpy()


def _client_module(protocol: str) -> Any:
    if protocol == "http":
        import tritonclient.http as module
    elif protocol == "grpc":
        import tritonclient.grpc as module
    else:
        raise UserInputError(f"`protocol` must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    return module


class RankingClient:
    """Sends ranking requests to the ensemble `model_name` at `url` (host:port)."""

    def __init__(
        self,
        url: str,
        protocol: Protocol = "http",
        model_name: str = "dlrm",
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ):
        self.module = _client_module(protocol)
        self.protocol = protocol
        self.model_name = model_name
        self.timeout_s = timeout_s
        if protocol == "http":
            self.client = self.module.InferenceServerClient(
                url, connection_timeout=timeout_s, network_timeout=timeout_s
            )
        else:
            self.client = self.module.InferenceServerClient(url)

    def send(
        self,
        tensors: Mapping[str, np.ndarray],
        *,
        model_name: str | None = None,
        output_names: Sequence[str] | None = (naming.SCORE,),
    ) -> Any:
        """Send raw tensors (any names, dtypes, shapes) to `model_name` (default: the ensemble).

        `output_names=None` asks for every output. Server errors raise InferenceServerException.
        """
        inputs = []
        for name, array in tensors.items():
            infer_input = self.module.InferInput(name, list(array.shape), _triton_dtype(array))
            infer_input.set_data_from_numpy(array)
            inputs.append(infer_input)
        outputs = None if output_names is None else [self.module.InferRequestedOutput(n) for n in output_names]
        timeout = {"client_timeout": self.timeout_s} if self.protocol == "grpc" else {}
        return self.client.infer(model_name or self.model_name, inputs, outputs=outputs, **timeout)

    def infer(self, tensors: Mapping[str, np.ndarray]) -> np.ndarray:
        """Send raw tensors to the ensemble and return `score`; server errors raise InferenceServerException."""
        return self.send(tensors).as_numpy(naming.SCORE)

    def score(self, request: RankingRequest) -> np.ndarray:
        """Scores [B, 1] of a ranking request."""
        return self.infer(request.tensors())

    def close(self) -> None:
        """Release the connection."""
        self.client.close()

    def __enter__(self) -> RankingClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _triton_dtype(array: np.ndarray) -> str:
    return str(np_to_triton_dtype(array.dtype))


@dataclass(frozen=True)
class CheckReport:
    """Served scores compared with PyTorch."""

    url: str
    protocol: Protocol
    model_name: str
    requests: int
    samples: int
    max_abs_diff: float
    first_scores: tuple[float, ...] = field(default_factory=tuple)
    tolerance: float = SCORE_TOLERANCE

    @property
    def passed(self) -> bool:
        """Whether every score is within the tolerance."""
        return self.max_abs_diff <= self.tolerance

    def __str__(self) -> str:
        verdict = "OK" if self.passed else "FAILED"
        scores = ", ".join(f"{score:.6f}" for score in self.first_scores)
        return (
            f"{verdict}: {self.requests} requests x {self.samples // max(self.requests, 1)} samples to "
            f"{self.model_name!r} at {self.url} over {self.protocol}; max |served - PyTorch| = "
            f"{self.max_abs_diff:.3g} (tolerance {self.tolerance:g}); first scores: {scores}"
        )


def check(
    model: DLRM,
    url: str,
    *,
    protocol: Protocol = "http",
    model_name: str = "dlrm",
    requests: int = 10,
    batch_size: int = 64,
    seed: int = 0,
    tolerance: float = SCORE_TOLERANCE,
    structured: bool = False,
) -> CheckReport:
    """Send `requests` random valid requests and compare every score with `DLRM.forward`.

    `structured`: `model_name` is a `<model>_ranking` ensemble; requests carry one user and `batch_size`
    candidates and are compared with the forward of the flattened request.
    """
    if requests < 1:
        raise UserInputError(f"`requests` must be >= 1, got {requests}")
    rng = np.random.default_rng(seed)
    max_diff = 0.0
    first: tuple[float, ...] = ()
    with RankingClient(url, protocol, model_name) as client:
        for _ in range(requests):
            if structured:
                ranking = random_structured_request(model, batch_size, rng)
                served = client.infer(ranking.tensors())
                expected = reference_scores(model, ranking.flattened(model))
            else:
                request = random_request(model, batch_size, rng)
                served = client.score(request)
                expected = reference_scores(model, request)
            if served.shape != expected.shape:
                raise CheckFailedError(f"served scores have shape {served.shape}, expected {expected.shape}")
            max_diff = max(max_diff, float(np.abs(served - expected).max()))
            first = first or tuple(float(x) for x in served[:5, 0])
    return CheckReport(url, protocol, model_name, requests, requests * batch_size, max_diff, first, tolerance)


def default_url(protocol: Protocol, host: str = "localhost") -> str:
    """host:port of the protocol's default Triton port."""
    return f"{host}:{DEFAULT_PORTS[protocol]}"

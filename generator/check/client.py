"""Ranking requests to a served ensemble over HTTP or gRPC, and the check against the PyTorch reference."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from tritonclient.utils import np_to_triton_dtype

from generator import naming
from generator.errors import CheckFailedError, ServerUnreachableError, UserInputError
from generator.model.dlrm import DLRM
from generator.model.imported import ImportedModel
from generator.traffic.requests import (
    RankingRequest,
    random_request,
    random_structured_request,
    reference_scores,
)
from generator.triton_models import recgen_params as params
from generator.triton_models import remote_group_model

Protocol = Literal["http", "grpc"]
PROTOCOLS: tuple[Protocol, ...] = ("http", "grpc")
DEFAULT_PORTS: dict[Protocol, int] = {"http": 8000, "grpc": 8001}
#: Largest allowed |served - PyTorch| per score (DESIGN.md request contract).
SCORE_TOLERANCE = 1e-5
DEFAULT_TIMEOUT_S = 60.0


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
        self.url = url
        self.protocol = protocol
        self.model_name = model_name
        self.timeout_s = timeout_s
        if protocol == "http":
            self.client = self.module.InferenceServerClient(
                url, connection_timeout=timeout_s, network_timeout=timeout_s
            )
        else:  # reconnect within a second of a restarted server's return, as the front's remote steps do
            self.client = self.module.InferenceServerClient(url, channel_args=remote_group_model.CHANNEL_ARGS)

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

    def metadata(self, model_name: str | None = None) -> dict[str, Any]:
        """The model's metadata as JSON (name, inputs and outputs with datatypes and shapes), either protocol.

        Server errors raise tritonclient's own exception of the protocol.
        """
        as_json = {"as_json": True} if self.protocol == "grpc" else {}  # the HTTP client always returns JSON
        return dict(self.client.get_model_metadata(model_name or self.model_name, **as_json))

    def model_config(self, model_name: str) -> dict[str, Any]:
        """A model's configuration as JSON, either protocol (gRPC wraps it in `config`)."""
        as_json = {"as_json": True} if self.protocol == "grpc" else {}
        config = self.client.get_model_config(model_name, **as_json)
        return dict(config.get("config", config))

    def router_model(self) -> str:
        """The router the ensemble runs now: its first step (its name carries the generation after an update)."""
        steps = self.model_config(self.model_name).get("ensemble_scheduling", {}).get("step", [])
        if not steps:
            raise UserInputError(f"{self.model_name!r} at {self.url} is not an ensemble of recgen's")
        return str(steps[0]["model_name"])

    def served_row_dtypes(self) -> set[str]:
        """The row dtypes the ensemble's steps pool (shard groups and a fused router); empty when none says."""
        from tritonclient.utils import InferenceServerException

        dtypes: set[str] = set()
        try:
            steps = self.model_config(self.model_name).get("ensemble_scheduling", {}).get("step", [])
            for step in steps:
                parameters = self.model_config(step["model_name"]).get("parameters", {})
                if group := parameters.get(params.ShardGroupParams.PARAMETER):
                    dtypes.add(params.ShardGroupParams.from_json(group["string_value"]).row_dtype)
                if pooling := parameters.get(params.RouterPoolingParams.PARAMETER):
                    spec = params.RouterPoolingParams.from_json(pooling["string_value"])
                    dtypes.update(pooled.row_dtype for pooled in spec.groups)
        except (OSError, KeyError, params.ParameterError, InferenceServerException):
            return dtypes
        return dtypes

    def ensure_live(self) -> None:
        """Raise ServerUnreachableError unless a Triton server answers at the URL (connection errors wrapped)."""
        from tritonclient.utils import InferenceServerException

        try:
            live = bool(self.client.is_server_live())
        except (OSError, InferenceServerException) as error:
            live, reason = False, f"{type(error).__name__}: {str(error).strip() or 'no answer'}"
        else:
            reason = "the server says it is not live"
        if not live:
            raise ServerUnreachableError(
                f"no Triton server answers at {self.url} over {self.protocol} ({reason}); start one with "
                "`recgen serve`, or pass --url and --protocol of a running one"
            )

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
    #: What the served outputs were compared with.
    reference: str = "PyTorch"

    @property
    def passed(self) -> bool:
        """Whether every score is within the tolerance."""
        return self.max_abs_diff <= self.tolerance

    def __str__(self) -> str:
        verdict = "OK" if self.passed else "FAILED"
        scores = ", ".join(f"{score:.6f}" for score in self.first_scores)
        return (
            f"{verdict}: {self.requests} requests x {self.samples // max(self.requests, 1)} samples to "
            f"{self.model_name!r} at {self.url} over {self.protocol}; max |served - {self.reference}| = "
            f"{self.max_abs_diff:.3g} (tolerance {self.tolerance:g}); first scores: {scores}"
        )


def check(
    model: DLRM | ImportedModel,
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
    candidates and are compared with the forward of the flattened request. An imported model's outputs are
    compared with its original program, fed each request in the program's own input form.
    """
    if requests < 1:
        raise UserInputError(f"`requests` must be >= 1, got {requests}")
    if isinstance(model, ImportedModel):
        if structured and not model.supports_ranking_requests:
            raise UserInputError(
                "`--ranking` needs user-side features: build and check with --user-features naming them"
            )
        return _check_imported(model, url, protocol, model_name, requests, batch_size, seed, tolerance, structured)
    rng = np.random.default_rng(seed)
    max_diff = 0.0
    first: tuple[float, ...] = ()
    with RankingClient(url, protocol, model_name) as client:
        client.ensure_live()
        for _ in range(requests):
            if structured:
                ranking = random_structured_request(model, batch_size, rng)
                tensors, expected = ranking.tensors(), reference_scores(model, ranking.flattened(model))
            else:
                request = random_request(model, batch_size, rng)
                tensors, expected = request.tensors(), reference_scores(model, request)
            served = _served_scores(client, tensors)
            if served.shape != expected.shape:
                raise CheckFailedError(f"served scores have shape {served.shape}, expected {expected.shape}")
            max_diff = max(max_diff, float(np.abs(served - expected).max()))
            first = first or tuple(float(x) for x in served[:5, 0])
    return CheckReport(url, protocol, model_name, requests, requests * batch_size, max_diff, first, tolerance)


def _check_imported(
    model: ImportedModel,
    url: str,
    protocol: Protocol,
    model_name: str,
    requests: int,
    batch_size: int,
    seed: int,
    tolerance: float,
    structured: bool,
) -> CheckReport:
    """Every output of every request against the original program's (fed a ranking request flattened)."""
    from tritonclient.utils import InferenceServerException

    names = [name for name, _ in model.outputs]
    max_diff = 0.0
    first: tuple[float, ...] = ()
    with RankingClient(url, protocol, model_name) as client:
        client.ensure_live()
        _check_widths(client, model)
        for index in range(requests):
            request_seed = seed * 100_003 + index
            if structured:
                sent, request = model.random_ranking_request(batch_size, seed=request_seed)
            else:
                request = sent = model.random_request(batch_size, seed=request_seed)
            try:
                result = client.send(sent, output_names=names)
            except InferenceServerException as error:
                raise CheckFailedError(f"{model_name!r} at {url} answered with an error: {error}") from error
            for name, expected in zip(names, model.reference_outputs(request), strict=True):
                served = result.as_numpy(name)
                if served is None or served.shape != expected.shape:
                    shape = None if served is None else served.shape
                    raise CheckFailedError(f"served output {name!r} has shape {shape}, expected {expected.shape}")
                max_diff = max(max_diff, float(np.abs(served - expected).max(initial=0.0)))
                first = first or tuple(float(x) for x in served.reshape(-1)[:5])
    return CheckReport(url, protocol, model_name, requests, requests * batch_size, max_diff, first, tolerance)


def _check_widths(client: RankingClient, model: ImportedModel) -> None:
    """Refuse, naming the flag, when the served ensemble takes other ids per sample than `model` sends.

    That happens when the build's --max-ids differ from the check's; Triton's own shape error does not say so.
    """
    try:
        served = {spec["name"]: spec["shape"] for spec in client.metadata()["inputs"]}
    except Exception:  # no metadata (tritonclient raises per protocol): the requests will say what is wrong
        return
    wrong = []
    for feature in model.features:
        shape = served.get(naming.sparse_input(feature.name))
        if shape is not None and int(shape[-1]) != feature.max_ids_per_sample:
            wrong.append((feature.name, int(shape[-1]), feature.max_ids_per_sample))
    if wrong:
        served_text = ", ".join(f"{name}: {width}" for name, width, _ in wrong)
        sent_text = ", ".join(f"{name}: {width}" for name, _, width in wrong)
        flags = " ".join(f"--max-ids {name}={width}" for name, width, _ in wrong)
        raise UserInputError(
            f"{client.model_name!r} at {client.url} takes other ids per sample than `--max-ids` gives "
            f"(served {served_text}; given {sent_text}): check with the --max-ids the build used ({flags})"
        )


def _served_scores(client: RankingClient, tensors: Mapping[str, np.ndarray]) -> np.ndarray:
    """The ensemble's scores; an error answer is a CheckFailedError carrying the server's message."""
    from tritonclient.utils import InferenceServerException

    try:
        return client.infer(tensors)
    except InferenceServerException as error:
        raise CheckFailedError(f"{client.model_name!r} at {client.url} answered with an error: {error}") from error


def default_url(protocol: Protocol, host: str = "localhost") -> str:
    """host:port of the protocol's default Triton port."""
    return f"{host}:{DEFAULT_PORTS[protocol]}"

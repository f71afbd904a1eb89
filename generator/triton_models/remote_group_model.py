"""Remote shard group: the front server's step for a shard group served by its own Triton deployment.

It forwards the group's packed row ids over gRPC and returns the group's partial sums, so the front's ensemble keeps
the same steps and request contract as the single-server layout.

Typed parameter `remote` (`recgen_params.RemoteParams`): the remote model and its input/output tensors, the
endpoints (`host:port`; a host that resolves to several addresses, such as a Kubernetes headless Service, counts as
one endpoint per address, re-resolved every `resolve_interval_s`), the deadline of one call including retries, the
attempts and the first backoff. The environment variable named by `endpoints_env_var` (comma-separated `host:port`)
replaces the configured endpoints: the local topology and the Kubernetes manifests set it.

Calls go round-robin over the endpoints with one reused client each; a call that fails with UNAVAILABLE (replica
down, connection refused) is retried on the next endpoint after an exponential backoff, within the deadline. Every
error names the shard group and the endpoints tried.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import recgen_kernels as kernels
from . import recgen_params as params
from . import recgen_triton

pb_utils = recgen_triton.utils()  # Triton's utilities inside a stub, None in tooling and tests

ENDPOINTS_ENV_PREFIX = "RECGEN_ENDPOINTS_"
#: gRPC status names (tritonclient reports them as "StatusCode.<NAME>") worth another replica.
RETRYABLE_STATUSES = frozenset({"UNAVAILABLE"})
#: Reconnect quickly after a server comes back (gRPC's default backoff grows to 120 s); recgen's clients use it too.
CHANNEL_ARGS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]


def endpoints_env_var(model_name: str) -> str:
    """Environment variable that overrides the endpoints of the remote model `model_name`."""
    return ENDPOINTS_ENV_PREFIX + re.sub(r"[^A-Za-z0-9]", "_", model_name).upper()


@dataclass(frozen=True)
class RemoteSettings:
    """Where the shard group lives and how hard to try."""

    model: str
    inputs: tuple[tuple[str, str], ...]  # (name, Triton dtype) of every input forwarded: the ids, their weights
    output_name: str
    endpoints: tuple[str, ...]
    deadline_s: float
    max_attempts: int
    backoff_s: float
    resolve_interval_s: float


def load_settings(model_config: Mapping[str, Any], environ: Mapping[str, str]) -> RemoteSettings:
    """Settings from the config parameter, endpoints from the environment when it names them."""
    remote = params.RemoteParams.from_model_config(model_config)
    override = environ.get(endpoints_env_var(remote.model), "")
    endpoints = tuple(e.strip() for e in override.split(",") if e.strip()) or remote.endpoints
    if not endpoints:
        raise ValueError(f"shard group '{remote.model}' has no endpoints")
    return RemoteSettings(
        model=remote.model,
        inputs=tuple((tensor.name, tensor.dtype) for tensor in remote.inputs),
        output_name=remote.output,
        endpoints=endpoints,
        deadline_s=remote.deadline_s,
        max_attempts=remote.max_attempts,
        backoff_s=remote.backoff_s,
        resolve_interval_s=remote.resolve_interval_s,
    )


def _split_host_port(endpoint: str) -> tuple[str, int]:
    host, _, port = endpoint.rpartition(":")
    return host.strip("[]"), int(port)


def resolve_endpoints(endpoints: tuple[str, ...]) -> list[str]:
    """One `address:port` per address each host resolves to; a host that does not resolve is kept by name."""
    resolved: list[str] = []
    for endpoint in endpoints:
        host, port = _split_host_port(endpoint)
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError:
            infos = []
        addresses = sorted({str(info[4][0]) for info in infos})
        if not addresses:
            resolved.append(endpoint)
        for address in addresses:
            resolved.append(f"[{address}]:{port}" if ":" in address else f"{address}:{port}")
    return list(dict.fromkeys(resolved))


class RemoteCallError(RuntimeError):
    """A remote shard group call that failed on every endpoint tried; the message names the group and endpoints."""


def _status_name(error: Exception) -> str:
    status = getattr(error, "status", None)
    text = str(status() if callable(status) else status or "")
    return text.rsplit(".", 1)[-1]


class RemoteGroup:
    """Round-robin calls over a shard group's replicas, one reused gRPC client per endpoint, bounded retries."""

    def __init__(
        self,
        settings: RemoteSettings,
        client_factory: Callable[[str], Any] | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.settings = settings
        self._client_factory = client_factory or _grpc_client
        self._clock = clock
        self._sleep = sleep
        self._clients: dict[str, Any] = {}
        self._endpoints: list[str] = []
        self._resolved_at = float("-inf")
        self._turn = itertools.count()
        self._lock = threading.Lock()

    def endpoints(self) -> list[str]:
        """The current endpoints, re-resolved when older than `resolve_interval_s`."""
        with self._lock:
            if self._clock() - self._resolved_at >= self.settings.resolve_interval_s or not self._endpoints:
                self._endpoints = resolve_endpoints(self.settings.endpoints)
                self._resolved_at = self._clock()
            return list(self._endpoints)

    def _client(self, endpoint: str) -> Any:
        client = self._clients.get(endpoint)
        if client is None:
            client = self._clients[endpoint] = self._client_factory(endpoint)
        return client

    def infer(self, tensors: Mapping[str, np.ndarray]) -> np.ndarray:
        """The group's partial sums for its inputs, from the first replica that answers within the deadline."""
        settings = self.settings
        deadline = self._clock() + settings.deadline_s
        endpoints = self.endpoints()
        first = next(self._turn) % len(endpoints)
        failures: list[str] = []
        for attempt in range(settings.max_attempts):
            endpoint = endpoints[(first + attempt) % len(endpoints)]
            remaining_s = deadline - self._clock()
            if remaining_s <= 0:
                failures.append(f"{endpoint}: not tried, the {settings.deadline_s:g} s deadline passed")
                break
            try:
                return self._client(endpoint).call(settings, tensors, remaining_s)
            except Exception as error:
                status = _status_name(error)
                failures.append(f"{endpoint}: {status or type(error).__name__}: {_first_line(error)}")
                if status not in RETRYABLE_STATUSES:
                    break
            if attempt + 1 < settings.max_attempts:
                self._sleep(max(0.0, min(settings.backoff_s * 2**attempt, deadline - self._clock())))
        raise RemoteCallError(
            f"shard group '{settings.model}' did not answer ({len(failures)} attempt(s), deadline "
            f"{settings.deadline_s:g} s): " + "; ".join(failures)
        )

    def close(self) -> None:
        """Close every client."""
        for client in self._clients.values():
            client.close()
        self._clients.clear()


def _first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [""])[0][:300]


class _GrpcClient:
    """A tritonclient gRPC client for one endpoint (imported lazily: only the front server needs tritonclient)."""

    def __init__(self, endpoint: str):
        import tritonclient.grpc as grpcclient

        self._grpc = grpcclient
        self._client = grpcclient.InferenceServerClient(endpoint, channel_args=CHANNEL_ARGS)

    def call(self, settings: RemoteSettings, tensors: Mapping[str, np.ndarray], timeout_s: float) -> np.ndarray:
        inputs = []
        for name, dtype in settings.inputs:
            tensor = self._grpc.InferInput(name, list(tensors[name].shape), dtype)
            tensor.set_data_from_numpy(tensors[name])
            inputs.append(tensor)
        result = self._client.infer(
            settings.model,
            inputs,
            outputs=[self._grpc.InferRequestedOutput(settings.output_name)],
            client_timeout=timeout_s,
        )
        return result.as_numpy(settings.output_name)

    def close(self) -> None:
        self._client.close()


def _grpc_client(endpoint: str) -> _GrpcClient:
    return _GrpcClient(endpoint)


class TritonPythonModel:
    """Triton entry point."""

    def initialize(self, args: dict[str, str]) -> None:
        """Read the settings; clients connect lazily, so the front starts before or after its shard services."""
        self.remote = RemoteGroup(load_settings(json.loads(args["model_config"]), os.environ))

    def execute(self, requests: list[Any]) -> list[Any]:
        """One remote call for all batched requests; if it fails, every request gets the error naming the group."""
        settings = self.remote.settings
        tensors: dict[str, np.ndarray] = {}
        split_points: list[int] = []
        for name, _ in settings.inputs:
            tensors[name], split_points = kernels.stack_requests(
                [pb_utils.get_input_tensor_by_name(request, name).as_numpy() for request in requests]
            )
        try:
            partial_sums = self.remote.infer(tensors)
        except RemoteCallError as error:
            code = getattr(pb_utils.TritonError, "UNAVAILABLE", pb_utils.TritonError.INTERNAL)
            return [pb_utils.InferenceResponse(error=pb_utils.TritonError(str(error), code)) for _ in requests]
        return [
            pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(settings.output_name, part)])
            for part in kernels.unstack_responses(partial_sums, split_points)
        ]

    def finalize(self) -> None:
        """Close the gRPC channels."""
        self.remote.close()

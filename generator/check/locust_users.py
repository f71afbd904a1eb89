"""Locust users that send ranking requests to a recgen ensemble over HTTP or gRPC.

Run with `locust -f loadtest/locustfile.py --host localhost:8000` (web UI) or headless, or through
`recgen loadtest`. Options: --protocol http|grpc, --ensemble NAME, --batch B, --profile PROFILE.npz (ids and
pooling lengths follow the profile), --model MODEL.pt with --spot-check-every N (compare every Nth response with
PyTorch; a mismatch is a failure). The tritonclient HTTP client is gevent-based; gRPC gets gevent support
initialised before any channel exists, so neither blocks the hub.
"""

from __future__ import annotations

import csv
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, ClassVar

import gevent
import grpc.experimental.gevent as grpc_gevent
import numpy as np
from locust import User, constant, events, task
from locust.env import Environment

from generator import naming
from generator.check.client import SCORE_TOLERANCE, RankingClient
from generator.check.loadtest import HISTORY_COLUMNS, sampler_from_server
from generator.errors import CheckFailedError
from generator.model.dlrm import DLRM
from generator.model.imported import ImportedModel
from generator.model.loading import load_model
from generator.planning.precision import with_rounded_rows
from generator.repository.settings import built_plan
from generator.traffic.profile import AccessProfile
from generator.traffic.requests import reference_scores
from generator.traffic.sampler import RequestSampler

grpc_gevent.init_gevent()


@events.init_command_line_parser.add_listener
def _add_options(parser: Any) -> None:
    parser.add_argument("--protocol", choices=["http", "grpc"], default="http", help="Triton protocol")
    parser.add_argument("--ensemble", default="dlrm", help="ensemble (model) name")
    parser.add_argument("--batch", type=int, default=64, help="candidates per request")
    parser.add_argument("--profile", default="", help="access profile .npz: ids follow its counts")
    parser.add_argument("--model", default="", help="model file for spot checks against PyTorch")
    parser.add_argument("--max-ids", default="", help="imported models: [FEATURE=]L,... as given to recgen build")
    parser.add_argument("--plan", default="", help="the build's plan.json (the rows' dtypes) for the spot checks")
    parser.add_argument("--row-dtype", default="", help="the build's --row-dtype values, comma-separated")
    parser.add_argument("--spot-check-every", type=int, default=0, help="check every Nth response (0 = never)")
    parser.add_argument("--history-csv", default="", help="write per-second throughput and latency percentiles here")
    parser.add_argument(
        "--structured",
        action="store_true",
        help="ranking requests to <ensemble>_ranking: the user's features once, --batch candidates",
    )


class _History:
    """Per-second latencies and failures, written at exit.

    locust's own `_stats_history.csv` is flushed only every 10 s and not at exit, so short runs lose most of it.
    """

    latencies_ms: ClassVar[dict[int, list[float]]] = defaultdict(list)
    failures: ClassVar[dict[int, int]] = defaultdict(int)

    @classmethod
    def record(cls, response_time: float, exception: BaseException | None, **_: Any) -> None:
        second = int(time.time())
        cls.latencies_ms[second].append(response_time)
        if exception is not None:
            cls.failures[second] += 1

    @classmethod
    def write(cls, path: str) -> None:
        seconds = sorted(set(cls.latencies_ms) | set(cls.failures))
        with open(path, "w", newline="") as file:
            writer = csv.writer(file)
            writer.writerow(HISTORY_COLUMNS)
            for second in seconds:
                latencies = np.asarray(cls.latencies_ms.get(second, [np.nan]))
                p50, p95, p99 = np.nanpercentile(latencies, [50, 95, 99])
                writer.writerow(
                    [
                        second,
                        len(cls.latencies_ms.get(second, [])),
                        cls.failures.get(second, 0),
                        f"{p50:.2f}",
                        f"{p95:.2f}",
                        f"{p99:.2f}",
                    ]
                )


@events.request.add_listener
def _record_request(response_time: float, exception: BaseException | None = None, **kwargs: Any) -> None:
    _History.record(response_time, exception)


@events.quitting.add_listener
def _write_history(environment: Environment, **_: Any) -> None:
    path = environment.parsed_options.history_csv if environment.parsed_options else ""
    if path:
        _History.write(path)


def _strip_scheme(host: str) -> str:
    return host.split("://", 1)[-1].rstrip("/")


def _max_ids(text: str) -> dict[str, int]:
    """`--max-ids` as `recgen build` takes it, comma-separated: FEATURE=L or a bare default L."""
    limits = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        feature, _, count = item.rpartition("=")
        limits[feature or "*"] = int(count)
    return limits


class _Shared:
    """What all users of one locust process share: the request sampler and the reference model."""

    sampler: RequestSampler | None = None
    model: DLRM | ImportedModel | None = None
    model_loaded: bool = False

    @classmethod
    def load_model(cls, environment: Environment) -> None:
        """Load the reference model once, before the run's clock starts (an imported program takes seconds)."""
        if not cls.model_loaded:
            options = environment.parsed_options
            if options is not None and options.model:
                model = load_model(options.model, max_ids=_max_ids(options.max_ids))
                dtypes = [value for value in options.row_dtype.split(",") if value]
                plan = built_plan(model, Path(options.plan) if options.plan else None, dtypes)
                cls.model = with_rounded_rows(model, plan)
            cls.model_loaded = True

    @classmethod
    def load(
        cls, environment: Environment, client: RankingClient
    ) -> tuple[RequestSampler, DLRM | ImportedModel | None]:
        """Learn the request shape from the server once; load the profile and model once."""
        if cls.sampler is None:
            options = environment.parsed_options
            assert options is not None, "locust parses its options before users start"
            profile = AccessProfile.load(options.profile) if options.profile else None
            cls.sampler = sampler_from_server(client, profile)
            cls.load_model(environment)
        return cls.sampler, cls.model


@events.init.add_listener
def _load_reference_model(environment: Environment, **_: Any) -> None:
    _Shared.load_model(environment)
    gevent.get_hub().loop.update_now()  # the loop's clock froze while loading: --run-time would count the load


class TritonUser(User):
    """Sends back-to-back ranking requests; each user has its own client and random stream."""

    wait_time = constant(0)

    def on_start(self) -> None:
        """Connect and learn the request shape."""
        options = self.environment.parsed_options
        self.protocol = options.protocol
        self.batch = options.batch
        self.spot_check_every = options.spot_check_every
        host = _strip_scheme(self.host or "")
        flattened = RankingClient(host, self.protocol, options.ensemble)
        self.sampler, self.model = _Shared.load(self.environment, flattened)
        self.structured = options.structured
        if self.structured:
            flattened.close()
            self.client = RankingClient(host, self.protocol, naming.ranking_ensemble(options.ensemble))
        else:
            self.client = flattened
        self.rng = np.random.default_rng(id(self) % 2**32)
        self.sent = 0

    def on_stop(self) -> None:
        """Close the connection."""
        self.client.close()

    def _reference(self, flattened: dict[str, np.ndarray], request: Any, ranking: Any) -> np.ndarray:
        """What the model returns for the request just sent (an imported model's first output, fed it flattened)."""
        if isinstance(self.model, ImportedModel):
            return self.model.reference_outputs(flattened)[0]
        assert self.model is not None
        return reference_scores(self.model, ranking.flattened(self.model) if self.structured else request)

    @task
    def rank(self) -> None:
        """One ranking request, timed; server errors are failures carrying the server's text."""
        request, ranking = None, None
        flattened: dict[str, np.ndarray] = {}
        if self.sampler.dense_inputs:  # an imported model's own contract
            if self.structured:
                tensors, flattened = self.sampler.sample_ranking_tensors(self.batch, self.rng)
            else:
                tensors = flattened = self.sampler.sample_tensors(self.batch, self.rng)
        elif self.structured:
            ranking = self.sampler.sample_structured(self.batch, self.rng)
            tensors = ranking.tensors()
        else:
            request = self.sampler.sample(self.batch, self.rng)
            tensors = request.tensors()
        sent_bytes = sum(array.nbytes for array in tensors.values())
        started = time.perf_counter()
        exception: BaseException | None = None
        try:
            scores = self.client.send(tensors, output_names=[self.sampler.output]).as_numpy(self.sampler.output)
            self.sent += 1
            if self.model is not None and self.spot_check_every and self.sent % self.spot_check_every == 0:
                difference = float(np.abs(scores - self._reference(flattened, request, ranking)).max())
                if difference > SCORE_TOLERANCE:
                    raise CheckFailedError(f"spot check: max |served - PyTorch| = {difference:.3g}")
        except Exception as error:  # every failure is reported to locust with its text
            # tritonclient's exceptions keep their text out of repr(), which locust's failure report shows
            exception = error if str(error) in repr(error) else RuntimeError(f"{type(error).__name__}: {error}")
        self.environment.events.request.fire(
            request_type=self.protocol,
            name=self.client.model_name,
            response_time=(time.perf_counter() - started) * 1000,
            response_length=sent_bytes,
            exception=exception,
            context={},
        )

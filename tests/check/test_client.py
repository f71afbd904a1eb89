"""Real-server tier: build -> serve -> check for both backends, both protocols, two model shapes; bad requests."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from generator.check import client
from generator.deploy import server as serve
from generator.model.dlrm import DLRM
from generator.planning.plan import uniform_plan
from generator.repository import build
from generator.traffic.requests import random_request, reference_scores
from tests.conftest import SERVER_READY_TIMEOUT_S, requires_server, tiny_model, wide_model

pytestmark = [requires_server, pytest.mark.server]

SHAPES = {"tiny": (tiny_model, 3, 1), "wide": (wide_model, 2, 2)}


@pytest.fixture(scope="module", params=[(s, b) for s in SHAPES for b in ("python", "onnx")], ids=lambda p: "-".join(p))
def served(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple]:
    shape, backend = request.param
    make, shards, instances = SHAPES[shape]
    model = make()
    workdir = tmp_path_factory.mktemp(f"{shape}-{backend}")
    plan = uniform_plan(model, name=f"rank_{shape}", shards_per_table=shards, instance_count=instances)
    result = build.build(model, plan, workdir / "repo", workdir / "ens", backend=backend)
    with serve.running_server(
        result.repositories, timeout_s=SERVER_READY_TIMEOUT_S, log_path=workdir / "server.log"
    ) as server:
        yield model, result, server


@pytest.fixture(autouse=True)
def _dump_server_log_on_failure(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if "served" in request.fixturenames and getattr(request.node, "rep_call", None) and request.node.rep_call.failed:
        server = request.getfixturevalue("served")[2]
        sys.stderr.write(f"\n===== tritonserver log =====\n{server.logs()[-20000:]}\n")


def _url(server: serve.TritonServer, protocol: str) -> str:
    return server.http_url if protocol == "http" else server.grpc_url


@pytest.mark.parametrize("protocol", client.PROTOCOLS)
@pytest.mark.parametrize("batch", [1, 37])
def test_scores_match_pytorch(served, protocol: str, batch: int) -> None:
    model, result, server = served
    report = client.check(
        model,
        _url(server, protocol),
        protocol=protocol,
        model_name=result.ensemble_name,
        requests=4,
        batch_size=batch,
        seed=batch,
    )
    assert report.samples == 4 * batch
    assert report.passed, str(report)
    assert report.max_abs_diff <= 1e-5


def _valid(model: DLRM, batch: int = 3) -> dict[str, np.ndarray]:
    return random_request(model, batch, np.random.default_rng(7)).tensors()


def _bad_requests(model: DLRM) -> dict[str, tuple[dict[str, np.ndarray], str]]:
    first, last = model.tables[0], model.tables[-1]
    too_big = _valid(model)
    too_big[f"sparse_{first.name}"][0, 0] = first.num_rows
    too_small = _valid(model)
    too_small[f"sparse_{last.name}"][-1, 0] = -7
    wrong_dtype = _valid(model)
    wrong_dtype[f"sparse_{first.name}"] = wrong_dtype[f"sparse_{first.name}"].astype(np.int32)
    wrong_width = _valid(model)
    wrong_width[f"sparse_{last.name}"] = np.zeros((3, last.max_ids_per_sample + 1), np.int64)
    missing = _valid(model)
    del missing[f"sparse_{last.name}"]
    not_a_number = _valid(model)
    not_a_number["dense_features"][2, 1] = np.nan
    infinite = _valid(model)
    infinite["dense_features"][0, 0] = -np.inf
    return {
        "nan dense": (not_a_number, "input 'dense_features' holds a non-finite value (nan) at [2, 1]"),
        "inf dense": (infinite, "input 'dense_features' holds a non-finite value (-inf) at [0, 0]"),
        "id >= rows": (too_big, f"'sparse_{first.name}' holds id {first.num_rows}"),
        "id < -1": (too_small, f"'sparse_{last.name}' holds id -7"),
        "wrong dtype": (wrong_dtype, f"'sparse_{first.name}' data-type is 'INT32'"),
        "wrong width": (wrong_width, f"unexpected shape for input 'sparse_{last.name}'"),
        "missing input": (missing, f"missing required input(s) ['sparse_{last.name}']"),
    }


#: Request validation happens before the backends differ: one shape and backend is enough.
ONE_SERVER = pytest.mark.parametrize("served", [("tiny", "python")], indirect=True, ids=["tiny-python"])


@ONE_SERVER
@pytest.mark.parametrize(
    "case", ["id >= rows", "id < -1", "wrong dtype", "wrong width", "missing input", "nan dense", "inf dense"]
)
@pytest.mark.parametrize("protocol", client.PROTOCOLS)
def test_bad_request_is_a_clear_error_and_server_keeps_serving(served, protocol: str, case: str) -> None:
    model, result, server = served
    tensors, expected = _bad_requests(model)[case]
    with client.RankingClient(_url(server, protocol), protocol, result.ensemble_name) as ranking:
        with pytest.raises(InferenceServerException) as error:
            ranking.infer(tensors)
        assert expected in str(error.value)
        request = random_request(model, 5, np.random.default_rng(1))
        np.testing.assert_allclose(ranking.score(request), reference_scores(model, request), atol=1e-5)


@ONE_SERVER
def test_one_bad_request_among_concurrent_good_ones_fails_alone(served) -> None:
    """Dynamic batching groups requests in one execute(); a bad id must fail only its own request."""
    model, result, server = served
    bad, _ = _bad_requests(model)["id >= rows"]

    def send(index: int) -> str:
        with client.RankingClient(server.grpc_url, "grpc", result.ensemble_name) as ranking:
            if index % 4 == 0:
                with pytest.raises(InferenceServerException):
                    ranking.infer(bad)
                return "bad"
            request = random_request(model, 8, np.random.default_rng(index))
            np.testing.assert_allclose(ranking.score(request), reference_scores(model, request), atol=1e-5)
            return "good"

    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(send, range(32)))
    assert outcomes.count("bad") == 8 and outcomes.count("good") == 24


@ONE_SERVER
def test_check_reports_failure_against_another_model(served) -> None:
    model, result, server = served
    other = type(model)(
        num_dense_features=model.num_dense_features,
        tables=model.tables,
        bottom_mlp=model.bottom_mlp,
        top_mlp=model.top_mlp,
        seed=99,
    ).eval()
    report = client.check(other, server.http_url, model_name=result.ensemble_name, requests=2, batch_size=16)
    assert not report.passed and report.max_abs_diff > 1e-3
    assert "FAILED" in str(report)

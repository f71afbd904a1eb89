"""Imported models served by the real embedded server: outputs equal the original modules, bad requests fail alone."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from generator.check import client, loadtest
from generator.deploy import server as serve
from generator.errors import UserInputError
from generator.model.imported import ImportedModel, import_module
from generator.planning.plan import uniform_plan
from generator.repository.build import build
from tests.conftest import SERVER_READY_TIMEOUT_S, requires_server
from tests.model import zoo

pytestmark = [pytest.mark.server, requires_server]

#: Models whose router keeps this many of every table's hottest rows (a front cache; shared and weighted tables).
FRONT_CACHED_ROWS = {"towers": 20, "weighted": 30}


def _models() -> dict[str, tuple[ImportedModel, str]]:
    """name -> (imported model, shard backend)."""
    dlrm_net = zoo.DlrmNetLike(8, [300, 7, 50], [4, 16, 8], [16, 1], itself=True, weighted=True).eval()
    cat_net = zoo.DlrmNetLike(8, [300, 7, 50], [4, 8], [16, 1], interaction="cat", widths=[8, 4, 2]).eval()
    dense, offsets, ids = zoo.dlrm_net_example(dlrm_net)
    models = {  # dlrmnet in DLRM_Net's natural form: one offsets tensor per table (the export reads B from one)
        "dlrmnet": (import_module(dlrm_net, (dense, list(offsets), ids), max_ids={"*": 4}), "python"),
        "catnet": (import_module(cat_net, zoo.dlrm_net_example(cat_net), max_ids={"*": 3}), "onnx"),
        "dcn": (
            import_module(zoo.DcnV2().eval(), zoo.dcn_example(), max_ids={"*": 5}).with_user_side(
                ["user_ids", "features"]
            ),
            "python",
        ),
        "towers": (import_module(zoo.TwoTower().eval(), zoo.two_tower_example(), max_ids={"*": 6}), "onnx"),
        "weighted": (
            import_module(
                zoo.TwoTower(weighted=True).eval(), zoo.two_tower_example(weighted=True), max_ids={"*": 4}
            ).with_user_side(["viewed"]),
            "onnx",
        ),
    }
    # A heavy user side, split at build time (the other heads: tests/model/test_user_split.py)
    heavy = import_module(zoo.HeavyUser("cross").eval(), zoo.heavy_user_example(), max_ids={"*": 6})
    models["heavy"] = (heavy.with_user_side(["user_dense", "history", "user_ids"]), "python")
    try:
        module, example = zoo.torchrec_models()["dcn"]
    except ImportError:
        return models
    models["trec"] = (import_module(module.eval(), example, max_ids={"*": 3}), "onnx")
    return models


@pytest.fixture(scope="module")
def served(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = tmp_path_factory.mktemp("imported")
    models = _models()
    repositories: list[Path] = []
    built = {}
    for name, (model, backend) in models.items():
        plan = uniform_plan(model, name=name, shards_per_table=3)
        if name in FRONT_CACHED_ROWS:
            plan = replace(plan, tables=tuple(replace(t, cached_rows=FRONT_CACHED_ROWS[name]) for t in plan.tables))
        built[name] = build(model, plan, root / f"{name}_models", root / f"{name}_ensembles", backend=backend)
        repositories += built[name].repositories
    log = root / "tritonserver.log"
    failed_before = request.session.testsfailed
    try:
        with serve.running_server(repositories, timeout_s=SERVER_READY_TIMEOUT_S, log_path=log) as server:
            yield models, server, built
    finally:  # the server's log, when it did not start or a test of this module failed
        if request.session.testsfailed > failed_before or not log.exists() or "server" not in locals():
            sys.stderr.write(
                f"\n===== {log} =====\n{log.read_text(errors='replace')[-20000:] if log.exists() else ''}\n"
            )


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_served_outputs_equal_the_original_modules(served: Any, protocol: client.Protocol) -> None:
    models, server, _ = served
    url = server.http_url if protocol == "http" else server.grpc_url
    for name, (model, _) in models.items():
        report = client.check(model, url, protocol=protocol, model_name=name, requests=3, batch_size=17, seed=4)
        assert report.passed, f"{name}: {report}"
        assert report.max_abs_diff < 1e-5


def test_check_with_other_max_ids_than_the_build_names_the_flag(served: Any) -> None:
    models, server, _ = served
    model, _ = models["dcn"]
    first = model.features[0]
    widened = replace(first, max_ids_per_sample=first.max_ids_per_sample + 3)
    wider = replace(model, features=[widened, *model.features[1:]])
    flag = f"--max-ids {first.name}={first.max_ids_per_sample}"
    for protocol, url in (("http", server.http_url), ("grpc", server.grpc_url)):
        with pytest.raises(UserInputError, match=flag):
            client.check(wider, url, protocol=protocol, model_name="dcn", requests=1, batch_size=2)


def test_bad_requests_name_the_feature_and_the_next_request_succeeds(served: Any) -> None:
    models, server, _ = served
    model, _ = models["dcn"]
    request = model.random_request(4, seed=9)
    cases: list[tuple[str, Callable[[dict[str, np.ndarray]], None], str]] = [
        ("too many ids", lambda r: r.update(sparse_user_ids=np.zeros((4, 6), np.int64)), "sparse_user_ids"),
        ("id out of range", lambda r: r["sparse_item_ids"].__setitem__((1, 0), 500), "sparse_item_ids"),
        ("negative id", lambda r: r["sparse_tag_ids"].__setitem__((0, 0), -7), "sparse_tag_ids"),
        ("weights too wide", lambda r: r.update(weights_user_ids=np.ones((4, 6), np.float32)), "weights_user_ids"),
        ("weights for fewer samples", lambda r: r.update(weights_user_ids=np.ones((3, 5), np.float32)), "weights"),
    ]
    with client.RankingClient(server.http_url, "http", "dcn") as session:
        for what, spoil, feature in cases:
            bad = {name: array.copy() for name, array in request.items()}
            spoil(bad)
            with pytest.raises(InferenceServerException, match=feature):
                session.send(bad, output_names=["output"])
            good = session.send(request, output_names=["output"]).as_numpy("output")
            np.testing.assert_allclose(good, model.reference_outputs(request)[0], atol=1e-5, err_msg=what)


#: Models built with user-side features, so with a `<name>_ranking` ensemble.
RANKED = ("dcn", "weighted", "heavy")


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_ranking_requests_pool_the_user_once_and_equal_the_module(served: Any, protocol: client.Protocol) -> None:
    models, server, _ = served
    url = server.http_url if protocol == "http" else server.grpc_url
    for name in RANKED:
        model, _ = models[name]
        for candidates in (1, 23):
            report = client.check(
                model, url, protocol=protocol, model_name=f"{name}_ranking", requests=2, batch_size=candidates,
                structured=True,
            )  # fmt: skip
            assert report.passed and report.max_abs_diff < 1e-5, f"{name}: {report}"
    assert {f.name: f.side for f in models["weighted"][0].features} == {"viewed": "user", "clicked": "item"}


def test_the_build_reports_the_user_side_it_computes_once(served: Any) -> None:
    _, _, built = served
    for name, once in (("heavy", 9), ("dcn", 2)):  # the user tower (heavy), the user half of a projection of x0
        (dense,) = [model for model in built[name].models if model.name == f"{name}_dense_ranking"]
        assert dense.notes and dense.notes[0].startswith(f"user side once per request: {once} of "), dense.notes
        assert "1 linear layer(s) over user and item parts split by columns" in dense.notes[0]
        assert f"{name}_dense_ranking: user side once per request" in str(built[name])


def test_the_build_says_the_backend_changed_nothing(served: Any) -> None:
    _, _, built = served
    for name, backend in (("catnet", "onnx"), ("dcn", "python")):  # fused lookup step, dense graph ONNX either way
        assert built[name].notes and built[name].notes[0].startswith(f"--backend {backend} changes nothing here")
        assert f"note: --backend {backend} changes nothing" in str(built[name])


def test_a_bad_ranking_request_names_the_tensor_and_the_next_one_succeeds(served: Any) -> None:
    models, server, _ = served
    model, _ = models["dcn"]
    request, flattened = model.random_ranking_request(6, seed=2)
    assert request["user_sparse_user_ids"].shape == (1, 5) and request["item_sparse_item_ids"].shape == (6, 5)
    assert request["user_features"].shape == (1, 6) and "user_weights_user_ids" in request
    with client.RankingClient(server.grpc_url, "grpc", "dcn_ranking") as session:
        for bad_name, rows in (("user_weights_user_ids", 2), ("user_sparse_user_ids", 3)):
            bad = dict(request, **{bad_name: np.repeat(request[bad_name], rows, axis=0)})
            with pytest.raises(InferenceServerException, match=bad_name):
                session.send(bad, output_names=["output"])
            good = session.send(request, output_names=["output"]).as_numpy("output")
            np.testing.assert_allclose(good, model.reference_outputs(flattened)[0], atol=1e-5)


def test_two_outputs_keep_their_names_and_meaning(served: Any) -> None:
    models, server, _ = served
    model, _ = models["towers"]
    request = model.random_request(5, seed=3)
    with client.RankingClient(server.grpc_url, "grpc", "towers") as session:
        result = session.send(request, output_names=None)
    conversion = result.as_numpy("conversion")
    np.testing.assert_allclose(conversion.sum(axis=1), 1.0, atol=1e-5)  # still a softmax
    np.testing.assert_allclose(result.as_numpy("click"), model.reference_outputs(request)[0], atol=1e-5)


@pytest.mark.parametrize("structured", [False, True])
def test_load_test_learns_the_imported_contract_and_spot_checks_it(
    served: Any, tmp_path: Path, structured: bool
) -> None:
    models, server, _ = served
    model, _ = models["dcn"]
    program_path = model.save(tmp_path / "dcn.pt2")
    summary = loadtest.run_loadtest(
        server.grpc_url,
        tmp_path / "load",
        protocol="grpc",
        ensemble="dcn",
        users=2,
        spawn_rate=2,
        run_time="3s",
        batch_size=8,
        model_path=program_path,
        max_ids={"*": 5},
        spot_check_every=2,
        timeout_s=120,
        structured=structured,
    )
    # Every answer is right; the queue policy may shed a rare request queued past its timeout on a busy machine.
    assert summary.errors == 0, (tmp_path / "load" / "locust.log").read_text()[-3000:]
    assert summary.rejections <= summary.requests // 100, (tmp_path / "load" / "locust.log").read_text()[-3000:]
    assert summary.requests > 4 and summary.ensemble == ("dcn_ranking" if structured else "dcn")

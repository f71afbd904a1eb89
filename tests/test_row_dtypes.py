"""Reduced-precision rows end to end: what the build writes, and served outputs equal to the rounded model."""

from __future__ import annotations

import collections
import dataclasses
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

from generator import naming
from generator.check import client
from generator.deploy import server as serve
from generator.errors import ExportError
from generator.model.dlrm import DLRM, TableSpec
from generator.model.imported import ImportedModel, import_module
from generator.planning import precision
from generator.planning.plan import Placement, Plan, table_plan, uniform_plan
from generator.repository.build import build
from tests.conftest import SERVER_READY_TIMEOUT_S, requires_server
from tests.model import zoo


def _model() -> DLRM:
    tables = [TableSpec("history", 300, 8, 6, "user"), TableSpec("one_row", 1, 8, 1), TableSpec("item", 500, 8, 2)]
    return DLRM(num_dense_features=2, tables=tables, bottom_mlp=[8], top_mlp=[8, 1], seed=5).eval()


def _mixed_plan(model: DLRM, name: str, lookup_step: str = "separate") -> Plan:
    """Every dtype among the shards of one table, a hotness order, and a front cache over the fp32 head."""
    history, one_row, item = model.tables
    order = np.random.default_rng(3).permutation(history.num_rows)
    tables = (
        table_plan(history, [0, 20, 150, 300], [Placement(2), Placement(), Placement()], order, 3,
                   row_dtypes=["fp32", "int8", "fp16"]),
        table_plan(one_row, [0, 1], [Placement()]),
        table_plan(item, [0, 100, 500], [Placement(), Placement()], row_dtypes=["fp16", "int8"]),
    )  # fmt: skip
    engine = "python" if name == "mixedonnx" else "native"  # the ONNX case keeps its ONNX groups
    return Plan(name, tables, router=Placement(2), lookup_step=lookup_step, lookup_engine=engine)  # type: ignore[arg-type]


def test_the_build_stores_each_shards_rows_in_its_dtype(built: Any) -> None:
    cases, root, _ = built
    stored = {p.name: np.load(p) for p in (root / "mixed_models").glob("*/1/*.npy")}
    assert stored[naming.shard_rows_file("history", 0)].dtype == np.float32
    assert stored[naming.shard_rows_file("history", 1)].dtype == np.uint8
    assert stored[naming.shard_scales_file("history", 1)].shape == (130, 2)
    assert stored[naming.shard_rows_file("history", 2)].dtype == np.float16
    assert naming.shard_scales_file("history", 2) not in stored
    _, onnx_plan = cases["mixedonnx"]
    group = next(g for g in onnx_plan.step_groups() if g.row_dtype == "int8")
    graph = onnx.load(root / "mixedonnx_models" / f"mixedonnx_shards_{group.index}" / "1" / naming.ONNX_MODEL_FILE)
    ops = collections.Counter(node.op_type for node in graph.graph.node)
    assert {"Gather", "Cast", "Mul", "Add", "ReduceSum"} <= set(ops)
    assert {init.data_type for init in graph.graph.initializer} >= {onnx.TensorProto.UINT8}


def test_rows_outside_fp16s_range_fail_the_build_naming_the_table_and_keep_the_old_output(tmp_path: Path) -> None:
    model = _model()
    build(model, uniform_plan(model), tmp_path / "repo", tmp_path / "ens")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    with np.errstate(all="ignore"):
        model.embeddings["item"].data[3, 0] = 1e6
    plan = uniform_plan(model, row_dtypes={"item": "fp16"})
    with pytest.raises(ExportError, match=r"table 'item' shard 0 as fp16: rows hold 1e\+06, outside fp16's range"):
        build(model, plan, tmp_path / "repo", tmp_path / "ens", force=True)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def _imported() -> ImportedModel:
    module = zoo.TwoTower(weighted=True).eval()
    model = import_module(module, zoo.two_tower_example(weighted=True), max_ids={"*": 4})
    return model.with_user_side(["viewed"])


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, tuple[Any, Plan]], Path, list[Path]]:
    """Every case built once: the build's own test reads them, the served tests serve them."""
    root = tmp_path_factory.mktemp("row_dtypes")
    model = _model()
    cases: dict[str, tuple[Any, Plan]] = {
        "mixed": (model, _mixed_plan(model, "mixed")),
        "mixedfused": (model, _mixed_plan(model, "mixedfused", "fused")),
        "mixedonnx": (model, _mixed_plan(model, "mixedonnx")),
    }
    imported = _imported()
    int8 = dict.fromkeys([t.name for t in imported.tables], "int8")
    towers = uniform_plan(imported, name="towers", shards_per_table=2, row_dtypes=int8)
    cases["towers"] = (imported, dataclasses.replace(towers, lookup_engine="python"))
    repositories: list[Path] = []
    for name, (case_model, plan) in cases.items():
        backend = "onnx" if name in ("mixedonnx", "towers") else "python"
        result = build(case_model, plan, root / f"{name}_models", root / f"{name}_ens", backend=backend)
        repositories += result.repositories
    return cases, root, repositories


@pytest.fixture(scope="module")
def served(request: pytest.FixtureRequest, built: Any) -> Iterator[Any]:
    cases, root, repositories = built
    log = root / "tritonserver.log"
    failed_before = request.session.testsfailed
    try:
        with serve.running_server(repositories, timeout_s=SERVER_READY_TIMEOUT_S, log_path=log) as server:
            yield cases, server
    finally:  # the server's log, when it did not start or a test of this module failed
        if request.session.testsfailed > failed_before or "server" not in locals():
            sys.stderr.write(
                f"\n===== {log} =====\n{log.read_text(errors='replace')[-20000:] if log.exists() else ''}\n"
            )


@requires_server
@pytest.mark.server
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_served_outputs_equal_the_model_whose_rows_went_through_the_same_dtypes(served: Any, protocol: str) -> None:
    cases, server = served
    url = server.http_url if protocol == "http" else server.grpc_url
    for name, (model, plan) in cases.items():
        rounded = precision.with_rounded_rows(model, plan)
        report = client.check(rounded, url, protocol=protocol, model_name=name, requests=3, batch_size=13)  # type: ignore[arg-type]
        assert report.passed, f"{name}: {report}"
        ranking = client.check(
            rounded, url, protocol=protocol, model_name=naming.ranking_ensemble(name),  # type: ignore[arg-type]
            requests=2, batch_size=11, structured=True,
        )  # fmt: skip
        assert ranking.passed, f"{name} ranking: {ranking}"
    for name in ("mixed", "mixedfused"):
        with client.RankingClient(url, protocol, name) as served:  # type: ignore[arg-type]
            assert served.served_row_dtypes() == {"fp32", "int8", "fp16"}
    model, _ = cases["mixed"]
    exact = client.check(model, url, protocol=protocol, model_name="mixed", requests=3, batch_size=13)  # type: ignore[arg-type]
    assert not exact.passed  # the rows really are stored in reduced precision

"""Builds whose shard groups run on recgen's native backend (`--lookup-engine native`)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from generator import naming, native
from generator.check import client
from generator.deploy import server as serve
from generator.errors import PlanError, UserInputError
from generator.planning.plan import Placement, uniform_plan
from generator.planning.plan_file import load_plan, save_plan
from generator.repository import build, validation
from tests.conftest import requires_server
from tests.test_ranking import sided_model


def _native_build(tmp_path: Path, **plan_args: object) -> build.BuildResult:
    model = sided_model()
    plan = uniform_plan(model, shards_per_table=2, lookup_step="separate", **plan_args)  # type: ignore[arg-type]
    plan = dataclasses.replace(plan, lookup_engine="native")
    return build.build(model, plan, tmp_path / "repo", tmp_path / "ens")


def test_every_shard_group_is_a_native_model_with_its_rows_and_the_library(tmp_path: Path) -> None:
    _native_build(tmp_path, row_dtypes={"medium": "int8"})
    repo = tmp_path / "repo"
    groups = [
        path.parent
        for path in sorted(repo.glob(f"*/{naming.CONFIG_FILE}"))
        if "shards" in validation.parse_strict(path.read_text()).parameters
    ]
    assert groups
    for group in groups:
        config = validation.parse_strict((group / naming.CONFIG_FILE).read_text())
        assert config.backend == native.BACKEND_NAME
        assert config.parameters["recgen_native_step"].string_value == "shard_group"
        assert (group / native.LIBRARY_NAME).read_bytes() == native.library().read_bytes()
        assert not (group / "1" / naming.PYTHON_MODEL_FILE).exists() and list((group / "1").glob("rows__*.npy"))
    router = validation.parse_strict((repo / "dlrm_router" / naming.CONFIG_FILE).read_text())
    assert router.backend == "python"  # the router is not native yet
    manifest = json.loads((repo / naming.MANIFEST_FILE).read_text())
    assert manifest["settings"]["lookup_engine"] == "native"


def test_the_engine_travels_in_plan_files(tmp_path: Path) -> None:
    plan = dataclasses.replace(uniform_plan(sided_model()), lookup_engine="native")
    assert load_plan(save_plan(plan, tmp_path / "plan.json")).lookup_engine == "native"
    assert load_plan(save_plan(uniform_plan(sided_model()), tmp_path / "p2.json")).lookup_engine == "python"


def test_a_native_engine_refuses_gpu_groups_and_the_container_target(tmp_path: Path) -> None:
    with pytest.raises(PlanError, match=r"native serves shard groups on the CPU; .* have GPU shards"):
        dataclasses.replace(uniform_plan(sided_model(), device="gpu", lookup_step="separate"), lookup_engine="native")
    model = sided_model()
    plan = dataclasses.replace(uniform_plan(model, lookup_step="separate"), lookup_engine="native")
    with pytest.raises(UserInputError, match=r"--lookup-engine native` builds for the embedded server only"):
        build.build(model, plan, tmp_path / "repo", tmp_path / "ens", backend="onnx", target="container")
    assert not (tmp_path / "repo").exists()
    with pytest.raises(UserInputError, match=r"`lookup_engine` must be one of python, native"):
        dataclasses.replace(plan, lookup_engine="gpu")  # type: ignore[arg-type]


@requires_server
def test_a_native_build_serves_pytorch_scores(
    tmp_path: Path, server_factory: Callable[[build.BuildResult], serve.TritonServer]
) -> None:
    result = _native_build(tmp_path, instance_count=2)
    server = server_factory(result)
    model = sided_model()
    for protocol, url in (("grpc", server.grpc_url), ("http", server.http_url)):
        assert client.check(model, url, protocol=protocol, requests=3, batch_size=17).passed  # type: ignore[arg-type]
    ranking = client.check(model, server.grpc_url, protocol="grpc", model_name=naming.ranking_ensemble("dlrm"),
                           requests=2, batch_size=9, structured=True)  # fmt: skip
    assert ranking.passed, ranking
    assert "recgen native step 'shard_group'" in server.logs()


def test_placement_is_checked_for_every_shard() -> None:
    plan = uniform_plan(sided_model(), lookup_step="separate")
    table = plan.tables[-1]
    moved = dataclasses.replace(table, shards=(dataclasses.replace(table.shards[0], placement=Placement(1, "gpu")),
                                               *table.shards[1:]))  # fmt: skip
    with pytest.raises(PlanError, match="CPU; medium have GPU shards"):
        dataclasses.replace(plan, tables=(*plan.tables[:-1], moved), lookup_engine="native")

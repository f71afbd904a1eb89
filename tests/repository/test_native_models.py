"""Builds whose routers and shard groups run on recgen's native backend (`--lookup-engine native`, the default)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from unittest import mock

import pytest

from generator import naming, native
from generator.check import client
from generator.deploy import server as serve
from generator.errors import NativeUnavailableError, UserInputError
from generator.planning.plan import Placement, uniform_plan
from generator.planning.plan_file import load_plan, save_plan
from generator.repository import build, configs, settings, validation, wiring
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
    for router_name in ("dlrm_router", "dlrm_router_ranking"):
        router = validation.parse_strict((repo / router_name / naming.CONFIG_FILE).read_text())
        assert router.backend == native.BACKEND_NAME
        assert router.parameters["recgen_native_step"].string_value == "router"
        assert not (repo / router_name / "1" / naming.PYTHON_MODEL_FILE).exists()
        assert (repo / router_name / native.LIBRARY_NAME).is_file()
    manifest = json.loads((repo / naming.MANIFEST_FILE).read_text())
    assert manifest["settings"]["lookup_engine"] == "native"


def test_the_engine_travels_in_plan_files(tmp_path: Path) -> None:
    plan = dataclasses.replace(uniform_plan(sided_model()), lookup_engine="python")
    assert load_plan(save_plan(plan, tmp_path / "plan.json")).lookup_engine == "python"
    assert load_plan(save_plan(uniform_plan(sided_model()), tmp_path / "p2.json")).lookup_engine == "native"
    document = json.loads((tmp_path / "p2.json").read_text())
    del document["lookup_engine"]  # a plan file written before the engine existed: version 1
    document["schema_version"] = 1
    (tmp_path / "p3.json").write_text(json.dumps(document))
    assert load_plan(tmp_path / "p3.json").lookup_engine == "python"


def test_gpu_groups_keep_their_engine_and_the_container_target_is_refused(tmp_path: Path) -> None:
    model = sided_model()
    gpu = uniform_plan(model, device="gpu", lookup_step="separate")
    assert gpu.lookup_engine == "native"
    result = build.build(model, gpu, tmp_path / "gpu", tmp_path / "gpu_ens", backend="onnx")
    kinds = {m.name: (m.backend, m.device) for m in result.models if m.role in ("router", "shards")}
    assert kinds["dlrm_router"] == (native.BACKEND_NAME, "cpu")
    assert {backend for name, (backend, device) in kinds.items() if device == "gpu"} == {"python (onnx)"}
    plan = uniform_plan(model, lookup_step="separate")
    with pytest.raises(UserInputError, match=r"--lookup-engine native` builds for the embedded server only"):
        build.build(model, plan, tmp_path / "repo", tmp_path / "ens", backend="onnx", target="container")
    assert not (tmp_path / "repo").exists()
    with pytest.raises(UserInputError, match=r"`lookup_engine` must be one of python, native"):
        dataclasses.replace(plan, lookup_engine="gpu")  # type: ignore[arg-type]


def test_the_default_engine_falls_back_with_a_note_and_a_named_one_does_not(tmp_path: Path) -> None:
    model = sided_model()
    deployment = settings.DeploymentOptions(target="container")
    resolved = settings.resolve_plan(model, None, settings.UniformOptions(), deployment, (), distributed=False)
    assert resolved.plan.lookup_engine == "python" and "container target" in resolved.notes[0]
    named = settings.DeploymentOptions(lookup_engine="native", target="container")
    resolved = settings.resolve_plan(model, None, settings.UniformOptions(), named, ("lookup_engine",),
                                     distributed=False)  # fmt: skip
    assert resolved.plan.lookup_engine == "native" and not resolved.notes  # refused by the build, not replaced
    with mock.patch.object(native, "library", side_effect=NativeUnavailableError("no C++ compiler (g++)")):
        embedded = settings.resolve_plan(model, None, settings.UniformOptions(), settings.DeploymentOptions(), (),
                                         distributed=False)  # fmt: skip
    assert embedded.plan.lookup_engine == "python" and "no C++ compiler" in embedded.notes[0]


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


def test_a_group_is_native_only_where_its_shards_are_on_the_cpu() -> None:
    plan = uniform_plan(sided_model(), lookup_step="separate")
    table = plan.tables[-1]
    moved = dataclasses.replace(table, shards=(dataclasses.replace(table.shards[0], placement=Placement(1, "gpu")),
                                               *table.shards[1:]))  # fmt: skip
    mixed = dataclasses.replace(plan, tables=(*plan.tables[:-1], moved))
    leaves = configs.LeafOptions("python", "embedded")
    wire = wiring.wire_layout(mixed)
    backends = {g.group.placement.device: configs.shard_group_config(mixed, g, leaves).backend for g in wire.groups}
    assert backends == {"cpu": native.BACKEND_NAME, "gpu": "python"}

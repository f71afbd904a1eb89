import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from generator import naming
from generator.errors import ExportError, OutputExistsError, UserInputError
from generator.planning.plan import uniform_plan
from generator.repository import build, dense_graphs, runtime_files, wiring
from tests.conftest import requires_server, tiny_model, wide_model


def _build(tmp_path: Path, backend="python", target="embedded", force=False, lookup_engine="python", **plan_args):
    """A build of the tiny model with the Python or ONNX models these tests look into (native: tests/native)."""
    model = tiny_model()
    plan = uniform_plan(model, shards_per_table=3, **{"lookup_step": "separate", **plan_args})
    plan = dataclasses.replace(plan, lookup_engine=lookup_engine)
    return build.build(model, plan, tmp_path / "repo", tmp_path / "ens", backend=backend, target=target, force=force)


def _runtime_files(model_file: Path) -> list[str]:
    """What a version directory holding this model.py should carry: it and exactly the helpers it imports."""
    sources = Path(runtime_files.__file__).parents[1] / "triton_models"
    module = next(p.name for p in sources.glob("*_model.py") if p.read_text() == model_file.read_text())
    return ["model.py", *runtime_files.runtime_modules(module)[1:]]


def test_python_build_layout_one_model_per_shard(tmp_path: Path) -> None:
    result = _build(tmp_path, group_by="shard")
    assert result.notes == ()  # recgen's DLRM: the backend chooses its dense model's engine
    repo = tmp_path / "repo"
    names = sorted(p.name for p in repo.iterdir() if p.is_dir())
    assert names == sorted(
        ["dlrm_router", "dlrm_profile", "dlrm_dense", "dlrm_shard_one_row_0"]
        + [f"dlrm_shard_{t}_{i}" for t in ("small", "medium") for i in range(3)]
    )
    for name in names:
        version = repo / name / "1"
        assert (repo / name / "config.pbtxt").is_file()
        assert sorted(p.name for p in version.glob("*.py")) == sorted(_runtime_files(version / "model.py"))
    assert (repo / "dlrm_shard_small_1" / "1" / "rows__small__1.npy").is_file()
    assert (repo / "dlrm_dense" / "1" / "dense.npz").is_file()
    assert (tmp_path / "ens" / "dlrm" / "config.pbtxt").is_file()
    assert (tmp_path / "ens" / "dlrm" / "1").is_dir()
    manifest = json.loads((repo / naming.MANIFEST_FILE).read_text())
    assert manifest["format_version"] == 1 and manifest["backend"] == "python"
    assert [len(t["shards"]) for t in manifest["tables"]] == [1, 3, 3]
    text = str(result)
    assert "dlrm_shard_medium_2" in text and "tritonserver --model-repository=/models" in text
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary directories left behind"


def test_shard_rows_are_the_planned_range(tmp_path: Path) -> None:
    _build(tmp_path, group_by="shard")
    weight = tiny_model().embeddings["medium"].detach().numpy()
    rows = np.load(tmp_path / "repo" / "dlrm_shard_medium_1" / "1" / "rows__medium__1.npy")
    np.testing.assert_array_equal(rows, weight[333:666])


def test_shards_with_the_same_placement_share_one_model(tmp_path: Path) -> None:
    result = _build(tmp_path)
    names = sorted(p.name for p in (tmp_path / "repo").iterdir() if p.is_dir())
    assert names == ["dlrm_dense", "dlrm_profile", "dlrm_router", "dlrm_shards_0"]
    group_dir = tmp_path / "repo" / "dlrm_shards_0" / "1"
    assert len(list(group_dir.glob("rows__*.npy"))) == 7
    assert [m.role for m in result.models] == ["router", "profile", "shards", "dense", "ensemble"]
    manifest = json.loads((tmp_path / "repo" / naming.MANIFEST_FILE).read_text())
    assert {s["model"] for t in manifest["tables"] for s in t["shards"]} == {"dlrm_shards_0"}


def test_existing_output_needs_force(tmp_path: Path) -> None:
    _build(tmp_path)
    with pytest.raises(OutputExistsError, match="--force"):
        _build(tmp_path)
    _build(tmp_path, force=True, instance_count=3)
    assert "count: 3" in (tmp_path / "repo" / "dlrm_dense" / "config.pbtxt").read_text()


def test_failed_build_keeps_previous_output_and_leaves_no_temporaries(tmp_path: Path, monkeypatch) -> None:
    _build(tmp_path)
    before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))

    def explode(*args, **kwargs):
        raise ExportError("simulated export failure")

    monkeypatch.setattr(dense_graphs, "export_dense", explode)
    with pytest.raises(ExportError, match="simulated"):
        _build(tmp_path, force=True)
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == before


def test_failed_first_build_writes_nothing(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(dense_graphs, "export_dense", lambda *a, **k: (_ for _ in ()).throw(ExportError("boom")))
    with pytest.raises(ExportError):
        _build(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_outputs_must_be_separate(tmp_path: Path) -> None:
    model = tiny_model()
    with pytest.raises(UserInputError, match="separate"):
        build.build(model, uniform_plan(model), tmp_path / "x", tmp_path / "x" / "ens")


def test_plan_of_another_model_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(UserInputError, match="does not match"):
        build.build(wide_model(), uniform_plan(tiny_model()), tmp_path / "r", tmp_path / "e")


def test_onnx_container_build_has_native_ort_configs_and_no_python(tmp_path: Path) -> None:
    result = _build(tmp_path, backend="onnx", target="container", device="gpu", group_by="shard")
    shard_dir = tmp_path / "repo" / "dlrm_shard_small_0"
    assert sorted(p.name for p in (shard_dir / "1").iterdir()) == ["model.onnx"]
    assert 'backend: "onnxruntime"' in (shard_dir / "config.pbtxt").read_text()
    assert "KIND_GPU" in (shard_dir / "config.pbtxt").read_text()
    assert "--gpus=all" in result.container_command()


def test_onnx_graphs_match_pytorch(tmp_path: Path) -> None:
    import onnxruntime as ort

    model = tiny_model()
    plan = dataclasses.replace(uniform_plan(model, shards_per_table=3, lookup_step="separate"), lookup_engine="python")
    build.build(model, plan, tmp_path / "repo", tmp_path / "ens", backend="onnx")
    (wired,) = wiring.wire_layout(plan).groups
    group, layout = wired.group, wired.columns
    member = next(i for i, s in enumerate(group.shards) if (s.table, s.index) == ("medium", 2))
    session = ort.InferenceSession(str(tmp_path / "repo" / "dlrm_shards_0" / "1" / "model.onnx"))
    assert [i.name for i in session.get_inputs()] == ["local_ids__g0"]
    packed = np.full((3, layout.width), -1, dtype=np.int32)
    medium_column = layout.columns[layout.tables.index("medium")][0]
    first_row = layout.first_rows[member]  # shard medium/2 holds rows 666..999, stacked from first_row
    packed[:, medium_column] = [first_row, -1, first_row + 333]
    (pooled,) = session.run(None, {"local_ids__g0": packed})
    assert pooled.shape == (3, 3 * 8)  # one slot per table: one_row, small, medium
    weight = model.embeddings["medium"].detach().numpy()
    np.testing.assert_allclose(pooled[:, 16:24], np.stack([weight[666], np.zeros(8), weight[999]]), atol=1e-6)
    assert not pooled[:, :16].any()
    dense = ort.InferenceSession(str(tmp_path / "repo" / "dlrm_dense" / "1" / "model.onnx"))
    assert [i.name for i in dense.get_inputs()] == ["dense_features", "partial_sums__g0"]
    rng = np.random.default_rng(0)
    feeds = {i.name: rng.standard_normal((2, i.shape[1])).astype(np.float32) for i in dense.get_inputs()}
    (score,) = dense.run(None, feeds)
    partials = torch.from_numpy(feeds["partial_sums__g0"])
    per_table = [partials[:, slot * 8 : (slot + 1) * 8] for slot in range(3)]
    expected = model.dense(torch.from_numpy(feeds["dense_features"]), per_table)
    np.testing.assert_allclose(score, expected.detach().numpy(), atol=1e-6)


@requires_server
@pytest.mark.server
@pytest.mark.parametrize("backend", ["python", "onnx"])
def test_monolithic_baseline_serves_the_same_contract(tmp_path: Path, server_factory, backend: str) -> None:
    from tritonclient.utils import InferenceServerException

    from generator.check import client
    from generator.traffic.requests import random_request

    model = tiny_model()
    result = build.build_monolithic(model, uniform_plan(model, instance_count=2), tmp_path / "mono", backend=backend)
    assert result.ensembles is None and [m.role for m in result.models] == ["whole"]
    assert "--model-repository=/models" in result.container_command() and "/ensembles" not in str(result)
    server = server_factory(result)
    for protocol, url in (("http", server.http_url), ("grpc", server.grpc_url)):
        report = client.check(model, url, protocol=protocol, requests=3, batch_size=32)
        assert report.passed, str(report)
    if backend == "python":
        request = random_request(model, 4, np.random.default_rng(0)).tensors()
        request["sparse_small"][0, 0] = 7
        with client.RankingClient(server.http_url) as ranking, pytest.raises(InferenceServerException) as error:
            ranking.infer(request)
        assert "'sparse_small' holds id 7" in str(error.value)

"""The routers' access counters: exact per table and row, summed across instances, reset, refused requests uncounted."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
from google.protobuf import json_format
from hypothesis import given, settings
from hypothesis import strategies as st

from generator import naming
from generator.model.dlrm import DLRM, TableSpec
from generator.planning.plan import uniform_plan
from generator.repository import build, params, validation
from generator.triton_models import recgen_access as access
from generator.triton_models import recgen_compiled as compiled
from generator.triton_models import recgen_params as specs
from generator.triton_models import recgen_runtime as runtime
from generator.triton_models import router_model


def _model() -> DLRM:
    tables = [TableSpec("user", 40, 4, 3, "user"), TableSpec("item", 300, 4, 2)]
    return DLRM(num_dense_features=2, tables=tables, bottom_mlp=[4], top_mlp=[4, 1], seed=2).eval()


def _routers(tmp_path: Path, count_accesses: bool = True) -> tuple[router_model.TritonPythonModel, ...]:
    """The flattened and ranking routers of a build, initialized as Triton would, counting under tmp_path."""
    model = _model()
    plan = dataclasses.replace(uniform_plan(model), count_accesses=count_accesses)
    result = build.build(model, plan, tmp_path / "r", tmp_path / "e")
    routers = []
    for name in ("dlrm_router", "dlrm_router_ranking"):
        config = json.loads(json_format.MessageToJson(
            validation.parse_strict((tmp_path / "r" / name / naming.CONFIG_FILE).read_text()),
            preserving_proto_field_name=True,
        ))  # fmt: skip
        if specs.AccessCountsParams.PARAMETER in config["parameters"]:
            spec = specs.AccessCountsParams.from_model_config(config)
            moved = specs.AccessCountsParams(str(tmp_path / "counts"), spec.key, spec.tables, spec.num_rows)
            config["parameters"][spec.PARAMETER]["string_value"] = moved.to_json()
        args = {"model_name": name, "model_config": json.dumps(config), "model_repository": str(tmp_path / "r" / name),
                "model_version": "1"}  # fmt: skip
        router = router_model.TritonPythonModel()
        with mock.patch.object(router_model, "_cache_metrics", lambda name: None):
            router.initialize(args)
        routers.append(router)
    assert result.plan.count_accesses == count_accesses
    return tuple(routers)


def _spec(tmp_path: Path) -> specs.AccessCountsParams:
    return specs.AccessCountsParams(str(tmp_path / "counts"), "dlrm", ("user", "item"), (40, 300))


def test_the_routers_count_every_valid_id_and_no_refused_request(tmp_path: Path) -> None:
    flattened, ranking = _routers(tmp_path)
    rng = np.random.default_rng(0)
    sent = {"user": np.zeros(40, np.int64), "item": np.zeros(300, np.int64)}
    for _ in range(5):
        user, item = rng.integers(-1, 40, (7, 3)), rng.integers(-1, 300, (7, 2))
        flattened._flattened({"sparse_user": user, "sparse_item": item, "dense_features": np.zeros((7, 2), np.float32)})
        for name, ids in (("user", user), ("item", item)):
            sent[name] += np.bincount(ids[ids >= 0], minlength=sent[name].size)
    with pytest.raises(ValueError, match="sparse_item"):  # refused: none of its ids count
        flattened._flattened({"sparse_user": np.zeros((1, 3), np.int64), "sparse_item": np.array([[300, 1]]),
                              "dense_features": np.zeros((1, 2), np.float32)})  # fmt: skip
    user, items = rng.integers(0, 40, (1, 3)), rng.integers(0, 300, (9, 2))
    ranking._ranking({"user_sparse_user": user, "item_sparse_item": items,
                      "user_dense_features": np.zeros((1, 1), np.float32),
                      "item_dense_features": np.zeros((9, 1), np.float32)})  # fmt: skip
    sent["user"] += np.bincount(user.ravel(), minlength=40)
    sent["item"] += np.bincount(items.ravel(), minlength=300)
    collected = access.collect(_spec(tmp_path))
    assert collected.instances == 2  # the flattened and the ranking router, each its own files
    np.testing.assert_array_equal(collected.counts[0], sent["user"])
    np.testing.assert_array_equal(collected.counts[1], sent["item"])
    assert collected.samples.tolist() == [5 * 7 + 1, 5 * 7 + 9]  # a ranking request: one user, 9 candidates
    again = access.collect(_spec(tmp_path), reset=True)
    np.testing.assert_array_equal(again.counts[1], sent["item"])
    after = access.collect(_spec(tmp_path))
    assert (
        not any(c.any() for c in after.counts) and not after.samples.any() and after.since_unix_s >= again.since_unix_s
    )


def test_a_build_without_access_counts_gives_its_routers_no_counters(tmp_path: Path) -> None:
    flattened, ranking = _routers(tmp_path, count_accesses=False)
    assert flattened.counter is None and ranking.counter is None
    assert params.access_counts(dataclasses.replace(uniform_plan(_model()), count_accesses=False)) is None


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 2**16), st.integers(1, 30), st.integers(1, 6), st.sampled_from(["numba", "numpy"]))
def test_counting_equals_bincount(seed: int, batch: int, width: int, engine: str) -> None:
    rng = np.random.default_rng(seed)
    ids = rng.integers(-1, 50, (batch, width)).astype(np.int64)
    base = np.where(np.arange(width) % 2 == 0, 0, 50).astype(np.int64)  # even columns table 0, odd table 1
    counts = np.zeros(100, np.uint32)
    compiled.compile_kernels()
    with mock.patch.object(compiled, "_compiled", compiled._compiled if engine == "numba" else {}):
        compiled.count_ids(ids, base, counts)
    flat = (ids + base[np.newaxis, :])[ids >= 0]
    np.testing.assert_array_equal(counts, np.bincount(flat, minlength=100))


def test_a_count_stops_at_its_largest_value_and_gone_servers_folders_are_removed(tmp_path: Path) -> None:
    compiled.compile_kernels()
    if "count" not in compiled._compiled:
        pytest.skip(f"numba does not serve here: {compiled.FALLBACK_REASON}")
    counts = np.full(2, access.MAX_COUNT - 1, np.uint32)
    compiled.count_ids(np.array([[0, 0, 1]]), np.zeros(3, np.int64), counts)
    assert counts.tolist() == [access.MAX_COUNT, access.MAX_COUNT]
    kinds = runtime.private_folder(runtime.user_folder(tmp_path / "counts") / access.FOLDER_KIND)
    gone = kinds / "999999999"
    gone.mkdir()
    (gone / f"dlrm.dlrm_router.1{access.COUNTS_SUFFIX}").write_bytes(b"")
    kept = kinds / "999999998"
    kept.mkdir()
    (kept / "someone_elses.txt").write_text("not ours")
    access.open_counter(_spec(tmp_path), "dlrm_router", ["user"], [3], ["user"])
    assert not gone.exists() and (kept / "someone_elses.txt").exists()


def test_instances_that_are_gone_keep_their_counts_in_one_retired_set(tmp_path: Path) -> None:
    """An update or a restore replaces router instances: their counts stay in the window, their files go."""
    spec = _spec(tmp_path)
    folder = access.server_directory(spec.directory)
    dead = [5_000_001, 5_000_002, 5_000_003]  # above Linux's largest pid (2**22): no process has them
    rng = np.random.default_rng(5)
    expected, samples = np.zeros(340, np.int64), np.zeros(2, np.int64)
    for round_index in range(2):  # two updates, each leaving two gone instances behind
        for pid in dead[:2] if round_index == 0 else dead[2:]:
            stem = folder / f"dlrm.dlrm_router.{pid}"
            counts = rng.integers(0, 1000, 340).astype(np.uint32)
            np.save(f"{stem}{access.COUNTS_SUFFIX}", counts)
            np.save(f"{stem}{access.SAMPLES_SUFFIX}", np.array([3, 4], np.int64))
            np.save(f"{stem}{access.SINCE_SUFFIX}", np.array([100.0 + pid % 7]))
            expected += counts
            samples += [3, 4]
        assert access.retire_gone_instances(folder) == (2 if round_index == 0 else 1)
    live = access.open_counter(spec, "dlrm_router", ["user", "item"], [3, 2], ["user", "item"])  # retires too
    live.counts[:] = 1
    expected += 1
    names = sorted(path.name for path in folder.iterdir())
    assert names == sorted([".retire.lock", *(f"dlrm.{access.RETIRED}{s}" for s in (
        access.COUNTS_SUFFIX, access.SAMPLES_SUFFIX, access.SINCE_SUFFIX)), *(
        f"dlrm.dlrm_router.{os.getpid()}{s}" for s in (
        access.COUNTS_SUFFIX, access.SAMPLES_SUFFIX, access.SINCE_SUFFIX))])  # fmt: skip
    collected = access.collect(spec)
    assert collected.instances == 1  # the retired set is no instance
    np.testing.assert_array_equal(np.concatenate(collected.counts), expected)
    np.testing.assert_array_equal(collected.samples, samples)
    assert collected.since_unix_s == min(100.0 + pid % 7 for pid in dead)
    access.collect(spec, reset=True)
    assert all(c.sum() == 0 for c in access.collect(spec).counts)

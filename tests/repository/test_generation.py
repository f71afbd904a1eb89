"""The next generation written beside a running build: names, staging, the request contract, refusals, cleanup."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from generator import naming
from generator.errors import UserInputError
from generator.model.dlrm import DLRM
from generator.planning.plan import uniform_plan
from generator.repository import build, validation
from generator.repository.configs import LeafOptions
from generator.repository.generation import (
    PendingGeneration,
    check_pending,
    discard,
    read_running,
    write_generation,
)
from tests.conftest import tiny_model


def _built(tmp_path: Path) -> build.BuildResult:
    model = tiny_model()
    return build.build(model, uniform_plan(model, lookup_step="fused"), tmp_path / "repo", tmp_path / "ens")


def _listing(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def test_the_next_generation_lands_beside_the_running_one_and_its_ensembles_wait(tmp_path: Path) -> None:
    built = _built(tmp_path)
    running = read_running(built.repository, built.ensembles)  # type: ignore[arg-type]
    assert running.generation == 1 and running.ensembles == ("dlrm",)
    assert set(running.leaves) == {"dlrm_router", "dlrm_dense"}
    ensembles_before = _listing(built.ensembles)  # type: ignore[arg-type]
    plan = uniform_plan(tiny_model(), shards_per_table=3, lookup_step="separate")
    pending = write_generation(tiny_model(), plan, built.repository, built.ensembles, LeafOptions())  # type: ignore[arg-type]
    assert pending.generation == 2 and pending.previous_generation == 1
    assert set(pending.new_leaves) == {"dlrm__g2_router", "dlrm__g2_shards_0", "dlrm__g2_dense"}
    for name in (*pending.new_leaves, *pending.old_leaves):
        assert (built.repository / name / naming.CONFIG_FILE).is_file()
    assert _listing(built.ensembles) == ensembles_before  # type: ignore[arg-type]  # nothing switched yet
    staged = validation.parse_strict(pending.staged_ensemble("dlrm").read_text())
    assert [(step.model_name, step.model_version) for step in staged.ensemble_scheduling.step] == [
        ("dlrm__g2_router", 1),
        ("dlrm__g2_shards_0", 1),
        ("dlrm__g2_dense", 1),
    ]
    assert pending.candidate("dlrm") == "dlrm__g2" and pending.candidate("dlrm_ranking") == "dlrm__g2_ranking"
    assert PendingGeneration.load(Path(pending.staging) / "pending.json") == pending
    manifest = json.loads(Path(dict(pending.installs)[str(Path(pending.staging) / naming.MANIFEST_FILE)]).read_text())
    assert manifest["generation"] == 1  # the running manifest until the switch installs the staged one
    staged_manifest = json.loads((Path(pending.staging) / naming.MANIFEST_FILE).read_text())
    assert staged_manifest["generation"] == 2
    check_pending(pending, running, built.repository, built.repository.parent)
    discard(pending)
    kept = ["README.md", naming.MANIFEST_FILE, naming.CONTENTS_FILE, ".recgen-output", "dlrm_router", "dlrm_dense"]
    assert sorted(p.name for p in built.repository.iterdir()) == sorted([*kept, "dlrm_profile"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ens", "repo"]


def test_an_update_keeps_the_request_contract(tmp_path: Path) -> None:
    built = _built(tmp_path)
    old = tiny_model()
    other = DLRM(
        num_dense_features=old.num_dense_features + 1, tables=list(old.tables), bottom_mlp=old.bottom_mlp,
        top_mlp=old.top_mlp, seed=3,
    ).eval()  # fmt: skip
    listing = _listing(tmp_path)
    with pytest.raises(UserInputError, match=r"keeps the request contract.*dense_features"):
        write_generation(other, uniform_plan(other), built.repository, built.ensembles, LeafOptions())  # type: ignore[arg-type]
    assert _listing(tmp_path) == listing  # nothing written, nothing left
    renamed = uniform_plan(old, name="other")
    with pytest.raises(UserInputError, match="plan with --name dlrm"):
        write_generation(old, renamed, built.repository, built.ensembles, LeafOptions())  # type: ignore[arg-type]


def test_leftovers_of_an_interrupted_update_are_named_not_deleted(tmp_path: Path) -> None:
    built = _built(tmp_path)
    leftover = built.repository / "dlrm__g2_router"
    leftover.mkdir()
    (leftover / "keep.txt").write_text("someone's")
    with pytest.raises(UserInputError, match=r"already holds /\S+/dlrm__g2_router, the names .*interrupted"):
        write_generation(tiny_model(), uniform_plan(tiny_model()), built.repository, built.ensembles, LeafOptions())  # type: ignore[arg-type]
    assert (leftover / "keep.txt").read_text() == "someone's"
    assert not (built.repository / "dlrm__g2_dense").exists()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"new_leaves": ("dlrm_profile",)}, "not named after generation 2"),
        ({"old_leaves": ("dlrm_router",)}, "not the ones that serve"),
        ({"generation": 3}, "this deployment runs generation 1"),
        ({"leaf_repository": "/elsewhere"}, "this deployment serves"),
        ({"installs": (("/etc/passwd", "/etc/shadow"),)}, "would install"),
        ({"staging": "/tmp/anything"}, "not one recgen made"),
    ],
)
def test_serve_refuses_a_pending_generation_that_is_not_its_next_one(
    tmp_path: Path, change: dict[str, object], message: str
) -> None:
    built = _built(tmp_path)
    pending = write_generation(
        tiny_model(), uniform_plan(tiny_model()), built.repository, built.ensembles, LeafOptions()
    )  # type: ignore[arg-type]
    running = read_running(built.repository, built.ensembles)  # type: ignore[arg-type]
    with pytest.raises(UserInputError, match=message):
        check_pending(dataclasses.replace(pending, **change), running, built.repository, built.repository.parent)  # type: ignore[arg-type]
    discard(pending)


def test_a_pending_file_that_is_not_one_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "pending.json"
    path.write_text('{"format_version": 1, "model_name": "dlrm"}')
    with pytest.raises(UserInputError, match="is not a pending recgen generation"):
        PendingGeneration.load(path)

"""What `recgen serve` does at start with a generation that an update left when serve died in the middle of it."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from generator import naming
from generator.check import client
from generator.deploy import server as serve
from generator.deploy import switch
from generator.errors import UserInputError
from generator.planning.plan import uniform_plan
from generator.repository import build
from generator.repository.configs import LeafOptions
from generator.repository.generation import PendingGeneration, read_running, write_generation
from generator.traffic.requests import random_request, reference_scores
from tests.conftest import requires_server, tiny_model


def _built(tmp_path: Path) -> build.BuildResult:
    model = tiny_model()
    return build.build(model, uniform_plan(model, lookup_step="fused"), tmp_path / "repo", tmp_path / "ens")


def _prepared(built: build.BuildResult) -> PendingGeneration:
    """What `prepare` leaves on disk: the new leaves, the staged ensembles and a candidate ensemble per ensemble."""
    plan = uniform_plan(tiny_model(), shards_per_table=2, lookup_step="separate")
    pending = write_generation(tiny_model(), plan, built.repository, built.ensembles, LeafOptions())  # type: ignore[arg-type]
    for ensemble in pending.ensembles:
        switch.write_candidate(pending, ensemble)
    return pending


def _names(path: Path) -> list[str]:
    return sorted(entry.name for entry in path.iterdir())


def test_a_generation_left_before_its_switch_is_removed(tmp_path: Path) -> None:
    built = _built(tmp_path)
    repository_before, ensembles_before = _names(built.repository), _names(built.ensembles)  # type: ignore[arg-type]
    pending = _prepared(built)
    assert "dlrm__g2" in _names(built.ensembles) and "dlrm__g2_router" in _names(built.repository)  # type: ignore[arg-type]
    (line,) = switch.recover_interrupted(built.repository, built.ensembles)  # type: ignore[arg-type]
    assert line.startswith("removed generation 2, which an update left before its switch: dlrm__g2_router")
    assert _names(built.repository) == repository_before and _names(built.ensembles) == ensembles_before  # type: ignore[arg-type]
    assert not Path(pending.staging).exists() and _names(tmp_path) == ["ens", "repo"]
    assert switch.recover_interrupted(built.repository, built.ensembles) == []  # type: ignore[arg-type]


def test_a_generation_left_after_its_switch_is_finished(tmp_path: Path) -> None:
    built = _built(tmp_path)
    pending = _prepared(built)
    switch._write_switch(pending, "dlrm")  # serve died right after the swap, before the old leaves went
    (line,) = switch.recover_interrupted(built.repository, built.ensembles)  # type: ignore[arg-type]
    assert line.startswith("finished the update to generation 2")
    running = read_running(built.repository, built.ensembles)  # type: ignore[arg-type]
    assert running.generation == 2 and set(running.leaves) == set(pending.new_leaves)
    assert json.loads((built.repository / naming.MANIFEST_FILE).read_text())["generation"] == 2  # type: ignore[operator]
    for name in pending.old_leaves:
        assert not (built.repository / name).exists()  # type: ignore[operator]
    assert _names(built.ensembles / "dlrm") == ["2", naming.CONFIG_FILE]  # type: ignore[operator]
    assert "dlrm__g2" not in _names(built.ensembles) and _names(tmp_path) == ["ens", "repo"]  # type: ignore[arg-type]


def test_a_pending_file_that_reaches_outside_the_deployment_is_refused_and_nothing_is_removed(tmp_path: Path) -> None:
    built = _built(tmp_path)
    pending = _prepared(built)
    document = json.loads((Path(pending.staging) / "pending.json").read_text())
    document["new_leaves"] = ["dlrm_router"]  # would remove the running router
    (Path(pending.staging) / "pending.json").write_text(json.dumps(document))
    with pytest.raises(UserInputError, match=r"refusing pending generation .*pending\.json"):
        switch.recover_interrupted(built.repository, built.ensembles)  # type: ignore[arg-type]
    assert (built.repository / "dlrm_router").is_dir() and (built.repository / "dlrm__g2_router").is_dir()  # type: ignore[operator]


@requires_server
def test_a_restart_after_the_switch_serves_the_new_generation_alone(
    tmp_path: Path, server_factory: Callable[[build.BuildResult], serve.TritonServer]
) -> None:
    built = _built(tmp_path)
    pending = _prepared(built)
    switch._write_switch(pending, "dlrm")
    switch.recover_interrupted(built.repository, built.ensembles)  # type: ignore[arg-type]
    server = server_factory(built)
    assert server.ready_models() == {"dlrm", "dlrm_profile", *pending.new_leaves}
    model = tiny_model()
    request = random_request(model, 16, np.random.default_rng(5))
    with client.RankingClient(server.grpc_url, "grpc") as ranking:
        np.testing.assert_allclose(
            ranking.score(request), reference_scores(model, request), atol=client.SCORE_TOLERANCE
        )

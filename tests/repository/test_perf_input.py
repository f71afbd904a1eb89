"""perf_analyzer's input data: valid requests for every ensemble, and perf_analyzer itself against a real server."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from generator.planning.plan import uniform_plan
from generator.repository import build, perf_input
from generator.traffic.requests import RankingRequest, reference_scores
from tests.conftest import requires_server
from tests.test_ranking import sided_model

ROOT = Path(__file__).resolve().parents[2]
PERF_ANALYZER = ROOT / "scripts" / "perf_analyzer.sh"


def _can_start_perf_analyzer() -> bool:
    try:
        done = subprocess.run(["bash", str(PERF_ANALYZER), "--version"], capture_output=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0 and b"error while loading shared libraries" not in done.stderr


def test_every_ensemble_gets_requests_its_model_accepts(tmp_path: Path) -> None:
    model = sided_model()
    result = build.build(model, uniform_plan(model, shards_per_table=2), tmp_path / "r", tmp_path / "e")
    files = {path.name: json.loads(path.read_text()) for path in (tmp_path / "e").glob("perf_input_*.json")}
    assert set(files) == {"perf_input_dlrm.json", "perf_input_dlrm_ranking.json"}
    flattened = files["perf_input_dlrm.json"]["data"]
    assert len(flattened) == perf_input.REQUESTS
    rows = {t.name: t.num_rows for t in model.tables}
    for entry in flattened:  # one sample each: the shapes exclude the batch dimension
        request = RankingRequest(
            np.array([entry["dense_features"]["content"]], np.float32),
            {name: np.array([entry[f"sparse_{name}"]["content"]], np.int64) for name in rows},
        )
        for name, ids in request.sparse.items():
            assert ids.min() >= -1 and ids.max() < rows[name]
        assert np.isfinite(reference_scores(model, request)).all()
    ranking = files["perf_input_dlrm_ranking.json"]["data"][0]
    shapes = {name: tensor["shape"] for name, tensor in ranking.items()}
    assert all(shape[0] in (1, perf_input.CANDIDATES) for shape in shapes.values()), shapes
    assert all(len(tensor["content"]) == np.prod(tensor["shape"]) for tensor in ranking.values())
    assert result.plan.model_name == "dlrm"


@requires_server
@pytest.mark.server
@pytest.mark.skipif(not _can_start_perf_analyzer(), reason="perf_analyzer cannot start (scripts/setup.sh installs it)")
def test_perf_analyzer_measures_both_ensembles_with_the_shipped_inputs(tmp_path: Path, server_factory) -> None:
    model = sided_model()
    server = server_factory(build.build(model, uniform_plan(model), tmp_path / "r", tmp_path / "e"))
    for ensemble, batch in (("dlrm", ["-b", "16"]), ("dlrm_ranking", [])):
        command = [
            "bash",
            str(PERF_ANALYZER),
            "-m",
            ensemble,
            "-i",
            "grpc",
            "-u",
            server.grpc_url,
            "--input-data",
            str(tmp_path / "e" / f"perf_input_{ensemble}.json"),
            *batch,
            "--concurrency-range",
            "1:1",
            "--request-count",
            "20",
        ]  # fmt: skip  (a fixed count: no stability to wait for on a busy machine)
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        assert "Throughput" in done.stdout and "Failed" not in done.stdout, done.stdout[-3000:]

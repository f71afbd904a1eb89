"""Load tests: request sampling (unit) and a short headless locust run against the real server."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from generator.check import loadtest
from generator.check.client import RankingClient
from generator.planning.plan import uniform_plan
from generator.repository import build
from generator.traffic.profile import TableShape, zipf_profile
from generator.traffic.sampler import TableTraffic
from tests.conftest import requires_server
from tests.test_ranking import sided_model

ROOT = Path(__file__).resolve().parents[2]


def test_profile_sampling_follows_counts_and_pooling() -> None:
    profile = zipf_profile([TableShape("t", 1000, 8)], 1.3, samples=5_000, seed=1)
    access = profile.table("t")
    traffic = TableTraffic("t", 1000, 8, access.rows, np.cumsum(access.counts, dtype=float), access.mean_ids_per_sample)
    ids = traffic.sample_ids(4000, np.random.default_rng(0))
    present = ids[ids >= 0]
    assert ids.shape == (4000, 8) and present.max() < 1000
    assert set(np.unique(present)) <= set(access.rows.tolist())  # untouched rows are never drawn
    hottest = access.rows[0]
    assert np.mean(present == hottest) == pytest.approx(access.counts[0] / access.lookups, abs=0.02)
    assert np.mean((ids >= 0).sum(axis=1)) == pytest.approx(access.mean_ids_per_sample, rel=0.15)
    # right-padded: no id after the first -1
    assert not np.any((ids[:, :-1] < 0) & (ids[:, 1:] >= 0))


@requires_server
@pytest.mark.server
@pytest.mark.parametrize(("protocol", "structured"), [("http", False), ("grpc", True)])
def test_short_headless_load_has_a_complete_summary_and_no_failures(
    tmp_path: Path, server_factory, protocol: str, structured: bool
) -> None:
    model = sided_model()
    model_path = tmp_path / "tiny.pt"
    model.save(model_path)
    result = build.build(model, uniform_plan(model, shards_per_table=2), tmp_path / "r", tmp_path / "e")
    server = server_factory(result)
    profile_path = zipf_profile(
        [TableShape(t.name, t.num_rows, t.max_ids_per_sample) for t in model.tables], 1.1, samples=2_000
    ).save(tmp_path / "profile.npz")
    url = server.http_url if protocol == "http" else server.grpc_url
    with RankingClient(url, protocol) as ranking:
        sampler = loadtest.sampler_from_server(ranking)
    assert [t.name for t in sampler.tables] == ["one_row", "small", "medium"]
    assert [t.width for t in sampler.tables] == [1, 3, 1] and sampler.num_dense_features == 5
    assert [t.side for t in sampler.tables] == ["item", "user", "item"]
    assert (sampler.user_dense_features, sampler.item_dense_features) == (2, 3)
    summary = loadtest.run_loadtest(
        url,
        tmp_path / "out",
        protocol=protocol,
        users=2,
        spawn_rate=2,
        run_time="6s",
        batch_size=16,
        profile_path=profile_path,
        model_path=model_path,
        spot_check_every=3,
        timeout_s=120,
        structured=structured,
    )
    # Every answer is right; the queue policy may shed a rare request queued past its timeout on a busy machine.
    assert summary.errors == 0, (tmp_path / "out" / "locust.log").read_text()[-3000:]
    assert summary.rejections <= summary.requests // 100, (tmp_path / "out" / "locust.log").read_text()[-3000:]
    assert summary.requests > 10 and summary.requests_per_s > 0 and summary.samples_per_s > 0
    assert 0 < summary.p50_ms <= summary.p95_ms <= summary.p99_ms
    saved = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert saved["requests"] == summary.requests and saved["protocol"] == protocol
    assert saved["ensemble"] == ("dlrm_ranking" if structured else "dlrm")
    for name in ("summary.md", "report.html", "locust_stats.csv", "history.csv", "throughput_latency.png"):
        assert (tmp_path / "out" / name).stat().st_size > 0, name


@requires_server
@pytest.mark.server
def test_the_readmes_locust_command_runs_headless(tmp_path: Path, server_factory) -> None:
    """`locust -f loadtest/locustfile.py --host ...` as the README writes it, headless for a few seconds."""
    model = sided_model()
    server = server_factory(build.build(model, uniform_plan(model), tmp_path / "r", tmp_path / "e"))
    locust = Path(sys.executable).parent / "locust"
    command = [str(locust), "-f", "loadtest/locustfile.py", "--host", server.http_url, "--batch", "16",
               "--headless", "-u", "2", "-r", "2", "--run-time", "4s", "--csv", str(tmp_path / "run")]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    with (tmp_path / "run_stats.csv").open() as stats:
        total = next(row for row in csv.DictReader(stats) if row["Name"] == "Aggregated")
    assert int(total["Request Count"]) > 5 and int(total["Failure Count"]) == 0, total

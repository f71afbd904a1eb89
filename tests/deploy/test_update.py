"""`recgen update` under a bounded steady load: other cuts and new weights, zero failed requests, the new model's
outputs after the switch; a bad new version leaves the old one serving; the same on the local topology."""

from __future__ import annotations

import contextlib
import json
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from generator import naming
from generator.check import live
from generator.check import update as updates
from generator.check.client import RankingClient, check
from generator.check.loadtest import sampler_from_server
from generator.deploy import server as serve
from generator.deploy.distributed import build_distributed
from generator.errors import UpdateError
from generator.model.dlrm import DLRM
from generator.planning.plan import uniform_plan
from generator.repository import build, validation
from generator.repository.build import ModelWriter
from generator.traffic.requests import random_request, reference_scores
from tests.conftest import requires_server, tiny_model

pytestmark = [requires_server, pytest.mark.server]

#: Seconds `recgen serve` gets to print its endpoints.
READY_TIMEOUT_S = 180.0
#: Bounds of the load: it runs from before the update until shortly after it, never longer or more than this.
LOAD_MAX_S = 240.0
LOAD_MAX_REQUESTS = 50_000
TOLERANCE = 1e-5


def new_weights() -> DLRM:
    """The tiny model's tables and towers with other weights."""
    old = tiny_model()
    return DLRM(
        num_dense_features=old.num_dense_features, tables=list(old.tables), bottom_mlp=old.bottom_mlp,
        top_mlp=old.top_mlp, seed=7,
    ).eval()  # fmt: skip


@contextlib.contextmanager
def recgen_serve(arguments: list[str], log_path: Path, endpoint: str) -> Iterator[int]:
    """`python -m generator serve ARGS` until the block ends (SIGTERM); yields the HTTP port clients call.

    `endpoint` is a regular expression whose group is the HTTP port in what serve prints.
    """
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "generator", "serve", *arguments], stdout=log, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            text = log_path.read_text()
            if "Ctrl-C to stop" in text and (match := re.search(endpoint, text)):
                break
            assert process.poll() is None, f"recgen serve exited:\n{text}"
            assert time.monotonic() < deadline, f"recgen serve was not ready in {READY_TIMEOUT_S} s:\n{text}"
            time.sleep(0.2)
        yield int(match.group(1))
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass
class SteadyLoad:
    """Closed-loop clients sending fixed requests to the ensemble, every answer kept with when it was sent."""

    grpc_url: str
    requests: list[dict[str, np.ndarray]]
    clients: int = 3
    answers: list[tuple[float, int, np.ndarray | None, str]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def _worker(self, index: int) -> None:
        deadline = time.monotonic() + LOAD_MAX_S
        with RankingClient(self.grpc_url, "grpc", timeout_s=30) as ranking:
            sent = 0
            while not self._stop.is_set() and time.monotonic() < deadline and len(self.answers) < LOAD_MAX_REQUESTS:
                which = (index + sent * self.clients) % len(self.requests)
                started = time.monotonic()
                try:
                    self.answers.append((started, which, ranking.infer(self.requests[which]), ""))
                except Exception as error:  # every failure is what the test counts
                    self.answers.append((started, which, None, str(error)[:300]))
                sent += 1

    def __enter__(self) -> SteadyLoad:
        self._threads = [threading.Thread(target=self._worker, args=(i,), daemon=True) for i in range(self.clients)]
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)

    def failures(self) -> list[str]:
        """The errors of every failed request."""
        return [error for _, _, scores, error in self.answers if scores is None]


#: Every load sends these requests (drawn with this seed), whose scores under both models `_expected` gives.
REQUEST_SEED = 11


def _requests(model: DLRM, count: int = 6) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(REQUEST_SEED)
    return [random_request(model, 16, rng).tensors() for _ in range(count)]


def _assert_switched_without_a_failure(load: SteadyLoad, old: DLRM, new: DLRM, switched_at_s: float) -> None:
    """No failure; every answer is the old or the new model's; every request sent after the switch the new one's."""
    assert not load.failures(), load.failures()[:5]
    old_scores, new_scores = _expected(old, len(load.requests)), _expected(new, len(load.requests))
    after = 0
    for sent_s, which, scores, _ in load.answers:
        assert scores is not None
        is_new = np.abs(scores - new_scores[which]).max() <= TOLERANCE
        is_old = np.abs(scores - old_scores[which]).max() <= TOLERANCE
        assert is_new or is_old, f"request {which} answered neither model's scores"
        if sent_s > switched_at_s:
            assert is_new, f"request {which}, sent after the switch, got the old model's scores"
            after += 1
    assert after > 0 and sum(1 for sent_s, *_ in load.answers if sent_s < switched_at_s) > 0


def _expected(model: DLRM, count: int) -> list[np.ndarray]:
    rng = np.random.default_rng(REQUEST_SEED)
    return [reference_scores(model, random_request(model, 16, rng)) for _ in range(count)]


def _wait_for_answers(load: SteadyLoad, count: int) -> None:
    deadline = time.monotonic() + 60
    while len(load.answers) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(load.answers) >= count, f"only {len(load.answers)} answers before the update"


def test_an_update_to_other_cuts_and_new_weights_under_load_fails_no_request(tmp_path: Path) -> None:
    old, new = tiny_model(), new_weights()
    running = uniform_plan(old, shards_per_table=1, lookup_step="fused")
    built = build.build(old, running, tmp_path / "repo", tmp_path / "ens")
    arguments = ["--repo", str(built.repository), "--ensembles", str(built.ensembles)]
    arguments += ["--http-port", "0", "--grpc-port", "0", "--metrics-port", "0"]
    with recgen_serve(arguments, tmp_path / "serve.log", r"HTTP +127\.0\.0\.1:(\d+)") as http_port:
        grpc_url = re.search(r"gRPC +(127\.0\.0\.1:\d+)", (tmp_path / "serve.log").read_text()).group(1)  # type: ignore[union-attr]
        other_cuts = uniform_plan(new, shards_per_table=3, lookup_step="separate")  # three group steps, new wire
        with SteadyLoad(grpc_url, _requests(old)) as load:
            _wait_for_answers(load, 30)
            report = updates.update(new, other_cuts, http_port=http_port, echo=lambda _: None)
            switched_at_s = time.monotonic()
            _wait_for_answers(load, len(load.answers) + 30)
        _assert_switched_without_a_failure(load, old, new, switched_at_s)
        assert report.generation == 2 and report.previous_generation == 1
        assert all(r.passed for r in report.checks) and report.times["switch_s"] < 5
        # the window of access counts goes on across the switch: the old routers' counts were kept
        counted = live.collect_profile(grpc_url, "grpc")
        sent = 16 * len(load.answers) + updates.VERIFY_REQUESTS * updates.VERIFY_BATCH  # the candidate's too
        assert all(table.samples == sent for table in counted.tables)
        assert check(new, grpc_url, protocol="grpc", requests=4).passed
        with RankingClient(grpc_url, "grpc") as served:  # load tests learn the contract from the new router
            assert served.router_model() == "dlrm__g2_router"
            assert sampler_from_server(served).sample_tensors(4, np.random.default_rng(0))
        models = {path.name for path in built.repository.iterdir() if path.is_dir()}
        assert models == {"dlrm__g2_router", "dlrm__g2_shards_0", "dlrm__g2_dense", "dlrm_profile"}
        assert sorted(p.name for p in (built.ensembles / "dlrm").iterdir() if p.is_dir()) == ["2"]
        manifest = json.loads((built.repository / naming.MANIFEST_FILE).read_text())
        assert manifest["generation"] == 2 and len(manifest["tables"][2]["shards"]) == 3


def test_a_bad_new_version_leaves_the_old_one_serving(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    old, new = tiny_model(), new_weights()
    built = build.build(old, uniform_plan(old, shards_per_table=2), tmp_path / "repo", tmp_path / "ens")
    before = sorted(path.name for path in tmp_path.iterdir())
    repository_before = sorted(path.name for path in built.repository.iterdir())
    original_dense = ModelWriter.dense

    def broken_dense(writer: ModelWriter, repository: Path) -> None:
        original_dense(writer, repository)
        name = naming.dense_model(writer.plan.leaf_stem)
        (repository / name / naming.MODEL_VERSION / naming.PYTHON_MODEL_FILE).write_text(
            "class TritonPythonModel:\n    def initialize(self, args):\n        raise RuntimeError('a bad version')\n"
        )

    monkeypatch.setattr(ModelWriter, "dense", broken_dense)
    arguments = ["--repo", str(built.repository), "--ensembles", str(built.ensembles)]
    arguments += ["--http-port", "0", "--grpc-port", "0", "--metrics-port", "0"]
    with recgen_serve(arguments, tmp_path / "serve.log", r"HTTP +127\.0\.0\.1:(\d+)") as http_port:
        grpc_url = re.search(r"gRPC +(127\.0\.0\.1:\d+)", (tmp_path / "serve.log").read_text()).group(1)  # type: ignore[union-attr]
        with SteadyLoad(grpc_url, _requests(old)) as load:
            _wait_for_answers(load, 20)
            with pytest.raises(UpdateError, match=r"dlrm__g2_dense.*failed to load(.|\n)*a bad version"):
                updates.update(new, uniform_plan(new, shards_per_table=3), http_port=http_port, echo=lambda _: None)
            _wait_for_answers(load, len(load.answers) + 20)
        assert not load.failures(), load.failures()[:5]
        assert check(old, grpc_url, protocol="grpc", requests=4).passed
        assert sorted(path.name for path in built.repository.iterdir()) == repository_before
        assert sorted(path.name for path in tmp_path.iterdir()) == sorted([*before, "serve.log"])
        assert "generation 2 removed; generation 1 serves on" in (tmp_path / "serve.log").read_text()


def test_the_local_topology_starts_the_new_groups_before_the_front_switches(tmp_path: Path) -> None:
    old, new = tiny_model(), new_weights()
    layout = build_distributed(old, uniform_plan(old, shards_per_table=1, lookup_step="separate"), tmp_path / "dist")
    front = r"front +'dlrm': http (?:127\.0\.0\.1):(\d+)"
    with recgen_serve(["--distributed", str(layout.root)], tmp_path / "serve.log", front) as http_port:
        grpc_url = re.search(r"front .*grpc (127\.0\.0\.1:\d+)", (tmp_path / "serve.log").read_text()).group(1)  # type: ignore[union-attr]
        old_groups = re.findall(
            r"^(dlrm_shard_\w+)\[0\]: grpc 127\.0\.0\.1:(\d+)", (tmp_path / "serve.log").read_text(), re.M
        )
        assert old_groups
        with SteadyLoad(grpc_url, _requests(old)) as load:
            _wait_for_answers(load, 20)
            report = updates.update(
                new,
                uniform_plan(new, shards_per_table=2, lookup_step="separate"),
                http_port=http_port,
                echo=lambda _: None,
            )
            switched_at_s = time.monotonic()
            _wait_for_answers(load, len(load.answers) + 20)
        _assert_switched_without_a_failure(load, old, new, switched_at_s)
        assert report.times["groups_started_s"] > 0
        for _, port in old_groups:  # the old groups' servers are gone, their repositories too
            assert not serve.port_answers("127.0.0.1", int(port))
        groups = sorted(path.name for path in (layout.root / naming.GROUPS_DIR).iterdir())
        assert groups and all(name.startswith("dlrm__g2_shard_") for name in groups)
        topology = json.loads((layout.root / naming.TOPOLOGY_FILE).read_text())
        assert sorted(group["model"] for group in topology["groups"]) == groups


def test_an_update_of_the_weights_alone_keeps_every_setting_of_the_running_build(tmp_path: Path) -> None:
    """Built with non-default settings, updated with `recgen update --model new.pt` only: every setting stays."""
    old_path, new_path = tmp_path / "old.pt", tmp_path / "new.pt"
    tiny_model().save(old_path)
    new_weights().save(new_path)
    settings = ["--max-batch-size", "384", "--latency-slo-ms", "500", "--allow-non-finite", "--no-access-counts",
                "--shedding", "queue-policy", "--lookup-step", "separate", "--instances", "2",
                "--shards-per-table", "3"]  # fmt: skip
    built = subprocess.run(
        [sys.executable, "-m", "generator", "build", "--model", str(old_path), "--out", str(tmp_path / "repo"),
         "--ensembles", str(tmp_path / "ens"), *settings], capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    arguments = ["--repo", str(tmp_path / "repo"), "--ensembles", str(tmp_path / "ens")]
    arguments += ["--http-port", "0", "--grpc-port", "0", "--metrics-port", "0"]
    with recgen_serve(arguments, tmp_path / "serve.log", r"HTTP +127\.0\.0\.1:(\d+)") as http_port:
        updated = subprocess.run(
            [sys.executable, "-m", "generator", "update", "--model", str(new_path), "--http-port", str(http_port)],
            capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert updated.returncode == 0, updated.stdout[-3000:] + updated.stderr[-3000:]
        grpc_url = re.search(r"gRPC +(127\.0\.0\.1:\d+)", (tmp_path / "serve.log").read_text()).group(1)  # type: ignore[union-attr]
        assert check(new_weights(), grpc_url, protocol="grpc", requests=2).passed
    configs = {
        path.parent.name: validation.parse_strict(path.read_text())
        for path in (tmp_path / "repo").glob(f"*/{naming.CONFIG_FILE}")
    }
    assert set(configs) == {"dlrm__g2_router", "dlrm__g2_shards_0", "dlrm__g2_dense"}  # separate, no profile model
    router = configs["dlrm__g2_router"]
    assert router.max_batch_size == 384 and router.instance_group[0].count == 2
    assert "request_checks" not in router.parameters and "access_counts" not in router.parameters
    assert "admission" not in router.parameters  # Triton's queue policy sheds instead
    for config in configs.values():
        assert config.dynamic_batching.default_queue_policy.default_timeout_microseconds == 250_000
    manifest = json.loads((tmp_path / "repo" / naming.MANIFEST_FILE).read_text())
    assert manifest["generation"] == 2
    assert manifest["settings"] == {**manifest["settings"], "max_batch_size": 384, "latency_slo_ms": 500.0,
                                    "check_finite": False, "count_accesses": False, "shedding": "queue-policy",
                                    "lookup_step": "separate", "instances": 2, "shards_per_table": 3}  # fmt: skip

"""The router's admission control: the metrics it reads, the wait it estimates, one poller per server and model."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from generator.triton_models import recgen_admission as admission
from generator.triton_models import recgen_params as specs

METRICS = """# HELP nv_inference_pending_request_count Instantaneous number of pending requests per-model.
# TYPE nv_inference_pending_request_count gauge
nv_inference_pending_request_count{model="dlrm_router",version="1"} 6
nv_inference_pending_request_count{model="dlrm_dense",version="1"} 2
nv_inference_pending_request_count{model="dlrm_dense",version="2"} 1
nv_inference_pending_request_count{model="someone_else",version="1"} 900
nv_inference_request_failure{model="dlrm_router",reason="REJECTED",version="1"} 3
nv_inference_exec_count{model="dlrm_router",version="1"} 10
"""


def _spec(budget_us: int = 500) -> specs.AdmissionParams:
    steps = (specs.AdmissionStep("dlrm_router", 2), specs.AdmissionStep("dlrm_dense", 1))
    return specs.AdmissionParams(budget_us, steps, "/dev/shm")


def test_metrics_are_summed_over_versions_for_the_named_models_only() -> None:
    values = admission.parse_metrics(METRICS, ["dlrm_router", "dlrm_dense"])
    assert values["dlrm_router"] == {admission.PENDING: 6.0, "nv_inference_exec_count": 10.0}
    assert values["dlrm_dense"] == {admission.PENDING: 3.0}
    assert "someone_else" not in values


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.integers(1, 64), st.floats(1e-5, 1e-2)), min_size=1, max_size=40),
    st.integers(1, 8),
)
def test_time_per_request_undoes_the_batching(batches: list[tuple[int, float]], pending: int) -> None:
    """Triton charges each request of a batch the batch's time; the estimate is the busy time per request."""
    requests = sum(size for size, _ in batches)
    charged_us = sum(size * seconds * 1e6 for size, seconds in batches)  # what the counters add up
    busy_s = sum(seconds for _, seconds in batches)  # what the instance really spent
    load = admission.StepLoad(instances=2)
    load.update({name: 0.0 for name in admission._COUNTERS})
    counters = {
        "nv_inference_request_success": float(requests),
        "nv_inference_exec_count": float(len(batches)),
        "nv_inference_compute_input_duration_us": 0.0,
        "nv_inference_compute_infer_duration_us": charged_us,
        "nv_inference_compute_output_duration_us": 0.0,
    }
    for _ in range(150):  # the same window again and again: the smoothed figure converges on it
        load.update(counters)
        counters = {name: 2 * value if name != "nv_inference_compute_input_duration_us" else 0.0 for name, value in
                    counters.items()}  # fmt: skip
    sizes = {size for size, _ in batches}
    if len(sizes) == 1:  # equal batches: exact
        assert load.seconds_per_request == pytest.approx(busy_s / requests, rel=1e-6)
    wait = admission.estimated_wait_s({"m": load}, {"m": {admission.PENDING: float(pending)}})
    assert wait == pytest.approx(pending * load.seconds_per_request / 2)


def test_a_window_without_served_requests_keeps_the_last_figure() -> None:
    load = admission.StepLoad(instances=1)
    load.update({"nv_inference_request_success": 5.0})
    load.update({"nv_inference_request_success": 5.0})
    assert load.seconds_per_request == admission.DEFAULT_SECONDS_PER_REQUEST


def test_the_estimate_is_shared_and_a_stale_one_admits(tmp_path: Path) -> None:
    writer = admission.SharedEstimate(tmp_path / "m.estimate")
    reader = admission.SharedEstimate(tmp_path / "m.estimate")
    assert reader.read() == 0.0  # never written
    writer.write(0.25)
    assert reader.read() == 0.25
    admission._ESTIMATE.pack_into(writer._map, 0, 0.25, time.monotonic() - admission.STALE_AFTER_S - 1)
    assert reader.read() == 0.0
    assert (tmp_path / "m.estimate").stat().st_mode & 0o077 == 0


def _wait_for(condition, timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return False


def test_one_instance_polls_and_every_instance_sheds_above_the_budget(tmp_path: Path) -> None:
    calls = {"first": 0, "second": 0}
    text = {"now": METRICS}
    lock = threading.Lock()

    def fetcher(name: str):
        def fetch(url: str) -> str:
            with lock:
                calls[name] += 1
            return text["now"]

        return fetch

    first = admission.Admission(_spec(), "dlrm_router", fetch=fetcher("first"), folder=tmp_path)
    second = admission.Admission(_spec(), "dlrm_router", fetch=fetcher("second"), folder=tmp_path)
    try:
        # the longer queue: 6 pending x 750 us / 2 instances, or 3 pending x 750 us: 2.25 ms, over 0.5 ms
        assert _wait_for(lambda: first.shed_message() is not None and second.shed_message() is not None)
        message = second.shed_message()
        assert message is not None and message.startswith(admission.SHED_MESSAGE) and "0.5 ms" in message
        assert "about 2 ms" in message
        assert min(calls.values()) == 0 and max(calls.values()) > 0  # one poller only
        text["now"] = METRICS.replace("} 6\n", "} 0\n").replace("} 2\n", "} 0\n").replace("} 1\n", "} 0\n")
        assert _wait_for(lambda: first.shed_message() is None and second.shed_message() is None)
        poller = first if calls["first"] else second
        poller.close()  # the other one takes over
        before = dict(calls)
        assert _wait_for(lambda: calls["first"] + calls["second"] > sum(before.values()) + 3)
    finally:
        first.close()
        second.close()


def test_unreadable_metrics_shed_nothing_and_are_reported_after_a_grace(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(admission, "METRICS_GRACE_S", 0.05)
    logged: list[str] = []

    def refuse(url: str) -> str:
        raise OSError("connection refused")

    gate = admission.Admission(_spec(), "dlrm_router", fetch=refuse, folder=tmp_path, log=logged.append)
    try:
        assert _wait_for(lambda: bool(logged))
        assert "admission control is off" in logged[0] and admission.METRICS_URL_ENV in logged[0]
        assert gate.shed_message() is None
    finally:
        gate.close()

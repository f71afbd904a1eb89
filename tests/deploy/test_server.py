"""Real-server tier: the embedded server's lifecycle and failure reporting."""

from __future__ import annotations

import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from generator import native
from generator.check import client
from generator.deploy import installation
from generator.deploy import server as serve
from generator.errors import ModelLoadError, ServerError
from generator.planning.plan import uniform_plan
from generator.repository import build
from tests.conftest import requires_server, tiny_model

pytestmark = [requires_server, pytest.mark.server]


def _gpu_present() -> bool:
    if shutil.which("nvidia-smi") is None:
        return False
    return subprocess.run(["nvidia-smi", "-L"], capture_output=True, check=False).returncode == 0


def _build(tmp_path: Path, **plan_args) -> build.BuildResult:
    model = tiny_model()
    plan = uniform_plan(model, shards_per_table=2, lookup_step="separate", **plan_args)
    return build.build(model, plan, tmp_path / "repo", tmp_path / "ens", backend="onnx" if plan_args else "python")


def test_start_ready_stop(tmp_path: Path) -> None:
    result = _build(tmp_path)
    server = serve.TritonServer(serve.ServerConfig((result.repository, result.ensembles)), tmp_path / "log")
    server.start()
    try:
        server.wait_until_ready(["dlrm", "dlrm_router", "dlrm_dense"], timeout_s=120)
        assert serve.port_answers("127.0.0.1", server.http_port)
        assert server._get("/v2/models/dlrm_shards_0/ready") == 200
        assert "backend-directory" in " ".join(server.command())
    finally:
        code = server.stop()
    assert code == 0
    assert not serve.port_answers("127.0.0.1", server.http_port)
    log = (tmp_path / "log").read_text()
    assert "successfully loaded 'dlrm'" in log
    for step, model in (("router", "dlrm_router"), ("shard_group", "dlrm_shards_0")):  # the default engine
        assert f"recgen native step '{step}' for model '{model}'" in log
    assert "dlrm_dense: per-request kernels" not in log  # the dense step runs numpy and does not load numba


@pytest.mark.skipif(_gpu_present(), reason="a GPU is present: KIND_GPU loads")
def test_gpu_instances_without_gpu_fail_with_the_servers_own_error(tmp_path: Path) -> None:
    result = _build(tmp_path, device="gpu")
    with (
        pytest.raises(ModelLoadError, match="KIND_GPU but no GPUs are available"),
        serve.running_server(result.repositories, timeout_s=120),
    ):
        pass


@pytest.mark.skipif(not _gpu_present(), reason="needs an NVIDIA GPU")
def test_gpu_build_serves_scores_equal_to_pytorch(tmp_path: Path) -> None:
    result = _build(tmp_path, device="gpu")
    with serve.running_server(result.repositories, timeout_s=240) as server:
        report = client.check(tiny_model(), server.http_url, requests=3, batch_size=32)
    assert report.passed, str(report)


def test_busy_port_is_reported_before_starting(tmp_path: Path) -> None:
    result = _build(tmp_path)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        server = serve.TritonServer(serve.ServerConfig((result.repository, result.ensembles), http_port=port))
        with pytest.raises(ServerError, match=f"{port}.*already answer"):
            server.start()
        assert server.process is None


def test_missing_repository_is_a_clear_error(tmp_path: Path) -> None:
    server = serve.TritonServer(serve.ServerConfig((tmp_path / "absent",)))
    with pytest.raises(ServerError, match="recgen build"):
        server.start()


def test_backend_dir_has_the_stub_for_this_python() -> None:
    backends = installation.prepare_backend_dir()
    assert (backends / "python" / "triton_python_backend_stub").is_file()
    assert (backends / "python" / "libtriton_python.so").is_file()
    assert installation.prepare_backend_dir() == backends
    # and the native backend, built by the set-up commands, where Triton looks for it
    assert (backends / native.BACKEND_NAME / native.LIBRARY_NAME).read_bytes() == native.library().read_bytes()


def test_a_server_killed_by_a_signal_is_reported_with_the_signal_and_no_gpu_noise(tmp_path: Path) -> None:
    result = _build(tmp_path)
    server = serve.TritonServer(serve.ServerConfig(result.repositories), tmp_path / "log")
    server.start()
    try:
        server.wait_until_ready(timeout_s=120)
        server.process.kill()
        server.process.wait(timeout=30)
        report = server.exit_report("while serving")
    finally:
        server.stop()
    assert report.startswith("tritonserver exited on signal SIGKILL while serving")
    assert "CUDA driver version is insufficient" not in report and "CudaDriverHelper" not in report

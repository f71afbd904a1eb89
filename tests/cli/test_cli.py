from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from generator.cli import main
from generator.deploy import server as serve
from generator.repository import contents
from tests.conftest import requires_server


def _run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.output


def _example_repository(tmp_path: Path, *build_args: str) -> tuple[Path, str]:
    """Example model in tmp_path/m.pt, built with one shard per table into tmp_path/r and tmp_path/e."""
    model = tmp_path / "m.pt"
    code, out = _run("example", "--out", str(model))
    assert code == 0 and "8 tables" in out and model.is_file()
    out_dirs = ["--out", str(tmp_path / "r"), "--ensembles", str(tmp_path / "e")]
    code, out = _run("build", "--model", str(model), *out_dirs, "--shards-per-table", "1", *build_args)
    assert code == 0, out
    return model, out


def _serve_command(tmp_path: Path, *ports: int) -> list[str]:
    """`python -m generator serve` on tmp_path/r and tmp_path/e with the given http, grpc and metrics ports."""
    command = [sys.executable, "-m", "generator", "serve", "--repo", str(tmp_path / "r")]
    command += ["--ensembles", str(tmp_path / "e")]
    for flag, port in zip(("--http-port", "--grpc-port", "--metrics-port"), ports, strict=True):
        command += [flag, str(port)]
    return command


def test_example_then_build_prints_what_it_wrote(tmp_path: Path) -> None:
    _, out = _example_repository(tmp_path, "--target", "container")
    # router (pooling the shards itself: fused lookup step), dense, ensemble + the ranking router, dense, ensemble
    # + the profile model (the routers' access counts)
    assert "wrote 7 models" in out and "docker run" in out and "nvcr.io/nvidia/tritonserver:24.10-py3" in out
    assert "dlrm_ranking" in out


def test_build_errors_name_the_problem(tmp_path: Path) -> None:
    code, out = _run("build", "--model", str(tmp_path / "absent.pt"), "--out", str(tmp_path / "r"))
    assert code == 1 and "ModelFileError" in out and "does not exist" in out
    model = tmp_path / "m.pt"
    _run("example", "--out", str(model))
    (tmp_path / "r").mkdir()
    code, out = _run("build", "--model", str(model), "--out", str(tmp_path / "r"), "--ensembles", str(tmp_path / "e"))
    assert code == 1 and "OutputExistsError" in out and "--force" in out
    code, out = _run("build", "--model", str(model), "--shards-per-table", "0")
    assert code == 2 and "--shards-per-table" in out


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_check_without_server_says_so_without_a_traceback(tmp_path: Path, protocol: str) -> None:
    model = tmp_path / "m.pt"
    _run("example", "--out", str(model))
    port = serve.free_ports(1)[0]
    code, out = _run("check", "--model", str(model), "--url", f"127.0.0.1:{port}", "--protocol", protocol)
    assert code == 1
    assert f"ServerUnreachableError: no Triton server answers at 127.0.0.1:{port} over {protocol}" in out
    assert "recgen serve" in out and "Traceback" not in out


@requires_server
@pytest.mark.server
def test_serve_check_and_sigterm(tmp_path: Path) -> None:
    model, _ = _example_repository(tmp_path)
    http, grpc, metrics = serve.free_ports(3)
    command = [
        *_serve_command(tmp_path, http, grpc, metrics),
        "--log-file",
        str(tmp_path / "server.log"),
    ]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=os.environ | {"PYTHONUNBUFFERED": "1"}
    )
    try:
        lines = []
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            lines.append(line)
            if "Ctrl-C to stop" in line or not line:
                break
        assert "Ctrl-C to stop" in "".join(lines), "".join(lines) + (tmp_path / "server.log").read_text()
        assert f"127.0.0.1:{http}" in "".join(lines)
        for protocol, port in (("http", http), ("grpc", grpc)):
            code, out = _run(
                "check",
                "--model",
                str(model),
                "--url",
                f"127.0.0.1:{port}",
                "--protocol",
                protocol,
                "--requests",
                "2",
                "--batch",
                "16",
            )
            assert code == 0 and out.startswith("OK"), out
        process.send_signal(signal.SIGTERM)
        rest, _ = process.communicate(timeout=60)
        assert process.returncode == 0, rest
        assert "tritonserver stopped." in rest
        assert not serve.port_answers("127.0.0.1", http)
    finally:
        if process.poll() is None:
            process.kill()


@requires_server
@pytest.mark.server
def test_serve_exits_nonzero_with_the_servers_error_lines(tmp_path: Path) -> None:
    _example_repository(tmp_path)
    dense_code = tmp_path / "r" / "dlrm_dense" / "1" / "model.py"
    dense_code.write_text("raise RuntimeError('broken dense model for the test')\n")
    command = [*_serve_command(tmp_path, 0, 0, 0), "--timeout-s", "120"]
    refused = subprocess.run(command, capture_output=True, text=True, timeout=240, check=False)
    assert refused.returncode != 0 and "dlrm_dense/1/model.py was changed" in refused.stderr  # not what was built
    contents.record(tmp_path / "r")  # as if the build itself had written the broken model
    result = subprocess.run(command, capture_output=True, text=True, timeout=240, check=False)
    assert result.returncode == 1
    assert "ModelLoadError" in result.stderr and "broken dense model for the test" in result.stderr


def test_profile_plan_build_from_the_command_line(tmp_path: Path) -> None:
    model = tmp_path / "m.pt"
    _run("example", "--out", str(model))
    code, out = _run(
        "profile",
        "--model",
        str(model),
        "--zipf",
        "1.1",
        "--zipf",
        "user_id=1.3",
        "--samples",
        "5000",
        "-o",
        str(tmp_path / "p.npz"),
    )
    assert code == 0, out
    assert "user_id=1.3" in out and "top 1%" in out
    code, out = _run(
        "plan",
        "--model",
        str(model),
        "--profile",
        str(tmp_path / "p.npz"),
        "--target-qps",
        "3000",
        "--max-shards-per-table",
        "3",
        "--replica-overhead-mb",
        "1",
        "--front-cache-mb",
        "0.5",
        "-o",
        str(tmp_path / "plan.json"),
    )
    assert code == 0, out
    assert "memory allocated: model-wise" in out and "memory utility" in out
    assert "front cache: 0.52 MB in the router" in out and "expected hit rate" in out
    assert (tmp_path / "plan.png").stat().st_size > 10_000
    assert (tmp_path / "plan.rows.npz").is_file()
    code, out = _run(
        "build",
        "--model",
        str(model),
        "--plan",
        str(tmp_path / "plan.json"),
        "--out",
        str(tmp_path / "r"),
        "--ensembles",
        str(tmp_path / "e"),
    )
    assert code == 0, out
    assert list((tmp_path / "r" / "dlrm_router" / "1").glob("row_ranks__*.npy"))
    assert list((tmp_path / "r" / "dlrm_router" / "1").glob("front_cache__*.npy"))
    code, out = _run(
        "build",
        "--model",
        str(model),
        "--plan",
        str(tmp_path / "plan.json"),
        "--out",
        str(tmp_path / "r2"),
        "--ensembles",
        str(tmp_path / "e2"),
        "--shards-per-table",
        "4",
    )
    assert code == 1 and "--shards-per-table" in out
    plan = ["plan", "--model", str(model), "--profile", str(tmp_path / "p.npz"), "--replica-overhead-mb", "1"]
    code, out = _run(*plan, "--target-qps", "30000", "--previous", str(tmp_path / "plan.json"), "-o",
                     str(tmp_path / "plan2.json"))  # fmt: skip
    assert code == 0, out
    assert "against the previous plan" in out and "rows moved" in out and "memory allocated" in out
    assert "front cache hit rate: previous plan" in out
    code, out = _run(*plan, "--target-qps", "10", "--previous", str(tmp_path / "absent.json"), "-o",
                     str(tmp_path / "plan3.json"))  # fmt: skip
    assert code == 1 and "absent.json" in out and not (tmp_path / "plan3.json").exists()


def _profile(tmp_path: Path, model: Path) -> Path:
    code, out = _run(
        "profile", "--model", str(model), "--zipf", "1.1", "--samples", "2000", "-o", str(tmp_path / "p.npz")
    )
    assert code == 0, out
    return tmp_path / "p.npz"


def test_update_without_serve_says_so(tmp_path: Path) -> None:
    model = tmp_path / "m.pt"
    _run("example", "--tiny", "--out", str(model))
    port = serve.free_ports(1)[0]
    code, out = _run("update", "--model", str(model), "--http-port", str(port))
    assert code == 1 and "ServerUnreachableError: no `recgen serve` listens on" in out
    assert f"serve-{port}.sock" in out and "Traceback" not in out
    code, out = _run("plan", "--model", str(model), "--profile", str(_profile(tmp_path, model)), "--target-qps", "100",
                     "-o", str(tmp_path / "plan.json"))  # fmt: skip
    assert code == 0, out
    code, out = _run("update", "--model", str(model), "--plan", str(tmp_path / "plan.json"), "--http-port", str(port))
    assert code == 1 and "ServerUnreachableError" in out  # the plan was read; only the server is missing
    code, out = _run("update", "--model", str(model), "--plan", str(tmp_path / "plan.json"), "--instances", "2")
    assert code == 1 and "--plan sets --instances; drop them" in out


def test_profile_and_plan_errors(tmp_path: Path) -> None:
    code, out = _run("profile", "--table", "a:100", "-o", str(tmp_path / "p.npz"))
    assert code == 1 and "--zipf, --trace or --meta-trace" in out
    code, out = _run("profile", "--table", "a:lots", "--zipf", "1", "-o", str(tmp_path / "p.npz"))
    assert code == 1 and "NAME:ROWS" in out
    code, out = _run("profile", "--table", "a:100:2", "--zipf", "a=x", "-o", str(tmp_path / "p.npz"))
    assert code == 1 and "TABLE=ALPHA" in out
    code, out = _run("profile", "--table", "a:100:2", "--table", "b:5", "--zipf", "0.9", "-o", str(tmp_path / "p.npz"))
    assert code == 0, out
    model = tmp_path / "m.pt"
    _run("example", "--out", str(model))
    code, out = _run(
        "plan",
        "--model",
        str(model),
        "--profile",
        str(tmp_path / "p.npz"),
        "--target-qps",
        "10",
        "-o",
        str(tmp_path / "plan.json"),
    )
    assert code == 1 and "has no table 'user_id'" in out


def test_group_by_shard_writes_one_model_per_shard(tmp_path: Path) -> None:
    _, out = _example_repository(tmp_path, "--group-by", "shard", "--lookup-step", "separate", "--force")
    assert "wrote 15 models" in out and "dlrm_shard_user_id_0" in out  # 8 shards, the profile model and 6 more


@requires_server
def test_distributed_build_serve_check_and_k8s(tmp_path: Path) -> None:
    model = tmp_path / "m.pt"
    _run("example", "--out", str(model))
    layout = tmp_path / "dist"
    build_args = ["build", "--model", str(model), "--layout", "distributed", "--out", str(layout)]
    code, out = _run(*build_args, "--shards-per-table", "1", "--group-by", "placement", "--remote-deadline-s", "3")
    assert code == 0, out
    assert "recgen serve --distributed" in out and (layout / "plan.json").is_file()
    code, out = _run(*build_args, "--ensembles", str(tmp_path / "e"), "--force")
    assert code == 1 and "--ensembles is for --layout single" in out

    code, out = _run("k8s", "--layout-dir", str(layout), "-o", str(tmp_path / "deploy"))
    assert code == 0, out
    assert "dlrm-shards-0" in out and (tmp_path / "deploy" / "kustomization.yaml").is_file()
    code, out = _run("k8s", "--layout-dir", str(layout), "--group-by", "shard", "-o", str(tmp_path / "d2"))
    assert code == 1 and "same plan and --group-by" in out
    code, out = _run("k8s", "-o", str(tmp_path / "d3"))
    assert code == 1 and "--plan" in out

    command = [sys.executable, "-m", "generator", "serve", "--distributed", str(layout)]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=os.environ | {"PYTHONUNBUFFERED": "1"}
    )
    try:
        lines = []
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            lines.append(line)
            if "Ctrl-C to stop" in line or not line:
                break
        text = "".join(lines)
        assert "Ctrl-C to stop" in text, text
        front_http = text.split("front      'dlrm': http ", 1)[1].split(",", 1)[0]
        code, out = _run("check", "--model", str(model), "--url", front_http, "--requests", "2", "--batch", "16")
        assert code == 0 and out.startswith("OK"), out
        code, out = _run("check", "--model", str(model), "--url", front_http, "--batch", "16", "--ranking")
        assert code == 0 and out.startswith("OK") and "dlrm_ranking" in out, out  # the front's ranking ensemble
        process.send_signal(signal.SIGTERM)
        rest, _ = process.communicate(timeout=60)
        assert process.returncode == 0, rest
        assert "all servers stopped" in rest
        assert not serve.port_answers("127.0.0.1", int(front_http.rsplit(":", 1)[1]))
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_ctrl_c_during_a_build_prints_one_line_and_keeps_the_old_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, _ = _example_repository(tmp_path)
    before = sorted(str(p.relative_to(tmp_path)) for p in (tmp_path / "r").rglob("*"))
    from generator.repository import build as builds

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(builds.dense_graphs, "export_dense", interrupted)
    result = CliRunner().invoke(
        main, ["build", "--model", str(model), "--out", str(tmp_path / "r"), "--ensembles", str(tmp_path / "e"),
               "--force"],
    )  # fmt: skip
    assert result.exit_code == 130, result.output
    assert (
        result.output.strip().splitlines()[-1]
        == "interrupted: no output was changed (outputs are replaced all or nothing)"
    )
    assert "Traceback" not in result.output and "KeyboardInterrupt" not in result.output
    assert sorted(str(p.relative_to(tmp_path)) for p in (tmp_path / "r").rglob("*")) == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".r.")]


def test_force_refuses_an_output_that_holds_the_model(tmp_path: Path) -> None:
    model, _ = _example_repository(tmp_path)
    inside = tmp_path / "r" / "m.pt"
    inside.write_bytes(model.read_bytes())
    code, out = _run("build", "--model", str(inside), "--out", str(tmp_path / "r"), "--ensembles",
                     str(tmp_path / "e"), "--force")  # fmt: skip
    assert code == 1 and "holds the input" in out and inside.is_file()


@requires_server
@pytest.mark.server
def test_serve_restarts_a_server_that_crashed_on_the_same_ports(tmp_path: Path) -> None:
    """A fault in a native step takes tritonserver down with it (SIGSEGV here): serve starts it again.

    serve is started as `recgen serve &` in a script starts it, with SIGINT ignored, and SIGINT still stops it.
    """
    model, out = _example_repository(tmp_path)
    assert "lookup engine native" in out
    http, grpc, metrics = serve.free_ports(3)
    process = _start_serve(tmp_path, http, grpc, metrics, ignore_sigint=True)
    try:
        lines: list[str] = []

        def read_until(text: str) -> None:
            _read_until(process, lines, text)

        read_until("Ctrl-C to stop")
        (server_pid,) = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and _is_child_tritonserver(
            int(p.name), process.pid)]  # fmt: skip
        os.kill(server_pid, signal.SIGSEGV)
        read_until("tritonserver: restarted, ready again")
        code, out = _run("check", "--model", str(model), "--url", f"127.0.0.1:{grpc}", "--protocol", "grpc",
                         "--requests", "2", "--batch", "16")  # fmt: skip
        assert code == 0 and out.startswith("OK"), out
        process.send_signal(signal.SIGINT)
        rest, _ = process.communicate(timeout=60)
        assert "tritonserver stopped" in rest and process.returncode == 0, rest
    finally:
        if process.poll() is None:
            process.kill()


def _start_serve(tmp_path: Path, *ports: int, ignore_sigint: bool = False) -> subprocess.Popen[str]:
    """`recgen serve` (see _serve_command) with its output readable line by line as it comes.

    `ignore_sigint`: start it with SIGINT ignored, as a non-interactive shell starts a background job.
    """

    def ignoring_sigint() -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    return subprocess.Popen(_serve_command(tmp_path, *ports), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=os.environ | {"PYTHONUNBUFFERED": "1"},
                            preexec_fn=ignoring_sigint if ignore_sigint else None)  # fmt: skip


def _read_until(process: subprocess.Popen[str], lines: list[str], text: str, timeout_s: float = 180) -> None:
    """Read `process`'s output into `lines` until `text` appears (an assertion error with the output if not)."""
    assert process.stdout is not None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and text not in "".join(lines):
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line)
    assert text in "".join(lines), "".join(lines)


def _is_child_tritonserver(pid: int, parent: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        name = Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return False
    return name == "tritonserver" and int(stat.rsplit(")", 1)[1].split()[1]) == parent


@requires_server
@pytest.mark.server
def test_serve_restores_a_model_whose_stub_was_killed(tmp_path: Path) -> None:
    from generator.deploy import stub_health

    model, _ = _example_repository(tmp_path, "--lookup-step", "separate")
    http, grpc, metrics = serve.free_ports(3)
    process = _start_serve(tmp_path, http, grpc, metrics)
    try:
        lines: list[str] = []

        def read_until(text: str) -> None:
            _read_until(process, lines, text)

        read_until("Ctrl-C to stop")
        shard_dir = str(tmp_path / "r" / "dlrm_dense") + "/"  # a Python stub (the lookup side is native)
        (stub,) = [
            s for s in stub_health.stub_processes() if Path(f"/proc/{s.pid}/cmdline").read_bytes().find(
                shard_dir.encode()) >= 0
        ]  # fmt: skip
        os.kill(stub.pid, signal.SIGKILL)
        read_until("model 'dlrm_dense' restored in")
        assert "model 'dlrm_dense' is broken (" in "".join(lines)
        code, out = _run("check", "--model", str(model), "--url", f"127.0.0.1:{grpc}", "--protocol", "grpc",
                         "--requests", "2", "--batch", "16")  # fmt: skip
        assert code == 0 and out.startswith("OK"), out
        process.send_signal(signal.SIGTERM)
        rest, _ = process.communicate(timeout=60)
        assert "tritonserver stopped" in rest
    finally:
        if process.poll() is None:
            process.kill()


def test_a_one_server_plan_built_distributed_says_what_its_price_left_out(tmp_path: Path) -> None:
    model, profile = tmp_path / "m.pt", tmp_path / "p.npz"
    _run("example", "--tiny", "--out", str(model))
    assert _run("profile", "--model", str(model), "--zipf", "1.1", "--samples", "2000", "-o", str(profile))[0] == 0
    common = ["plan", "--model", str(model), "--profile", str(profile), "--lookup-step", "separate"]
    assert _run(*common, "--target-qps", "100", "-o", str(tmp_path / "plan.json"))[0] == 0
    build = ["build", "--model", str(model), "--plan", str(tmp_path / "plan.json"), "--layout", "distributed"]
    code, out = _run(*build, "--out", str(tmp_path / "dist"))
    assert code == 0, out
    assert "fits one server, where its memory is priced as one tritonserver" in out, out


def test_plan_places_replicas_on_the_servers_it_is_given(tmp_path: Path) -> None:
    model, profile = tmp_path / "m.pt", tmp_path / "p.npz"
    _run("example", "--out", str(model))
    assert _run("profile", "--model", str(model), "--zipf", "1.1", "--samples", "3000", "-o", str(profile))[0] == 0
    common = ["plan", "--model", str(model), "--profile", str(profile), "--target-qps", "20000"]
    code, out = _run(*common, "--server-cores", "2", "--server-memory-gb", "8", "-o", str(tmp_path / "plan.json"))
    assert code == 0, out
    assert "servers of 2 cores, 8 GB: planned" in out and "cores busy" in out and "front x" in out
    totals = json.loads((tmp_path / "plan.json").read_text())["planner"]["totals"]
    assert totals["servers"]["server"] == {"cores": 2, "memory_bytes": 8 * 10**9, "gpus": 0, "gpu_memory_bytes": 0}
    assert len(totals["model_wise_servers"]["servers"]) > 1
    code, out = _run(*common, "--server-memory-gb", "0.05", "-o", str(tmp_path / "small.json"))
    assert code != 0 and "(--server-memory-gb)" in out
    assert not (tmp_path / "small.json").exists()

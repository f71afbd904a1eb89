"""`recgen` command line: a thin layer over the library (each command calls one library function)."""

from __future__ import annotations

import signal
import sys
import time
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import click

from generator import build as build_module
from generator import client, demo, models, naming, plan, render, serve
from generator.errors import RecgenError

F = TypeVar("F", bound=Callable[..., Any])


def _reports_errors(function: F) -> F:
    """Print `ErrorType: message` and exit 1 instead of a traceback for errors recgen raises on purpose."""

    @wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except RecgenError as error:
            click.echo(f"{type(error).__name__}: {error}", err=True)
            sys.exit(1)

    return wrapper  # type: ignore[return-value]


@click.group()
@click.version_option(package_name="recgen")
def main() -> None:
    """Turn a PyTorch DLRM into a sharded NVIDIA Triton model repository, serve it, and check it."""


@main.command()
@click.option(
    "--out",
    "out_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("example.pt"),
    show_default=True,
    help="Where to write the model file.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Weight initialisation seed.")
@_reports_errors
def example(out_path: Path, seed: int) -> None:
    """Write the bundled example DLRM (8 tables of 1 to 200k rows)."""
    model = models.example_model(seed)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    model.save(out_path)
    click.echo(f"wrote {out_path}: {len(model.tables)} tables, {model.embedding_bytes():,} embedding bytes")
    for table in model.tables:
        click.echo(
            f"  {table.name:<16} rows {table.num_rows:>8}  dim {table.dim}  ids/sample {table.max_ids_per_sample}"
        )


@main.command("build")
@click.option(
    "--model",
    "model_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Model file written by DLRM.save / `recgen example`.",
)
@click.option(
    "--out",
    "repository",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("model_repository"),
    show_default=True,
    help="Repository for router, shards, dense.",
)
@click.option(
    "--ensembles",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("ensembles"),
    show_default=True,
    help="Repository for the ensemble.",
)
@click.option("--name", default="dlrm", show_default=True, help="Model name = the ensemble clients call.")
@click.option(
    "--backend",
    type=click.Choice(render.BACKENDS),
    default="python",
    show_default=True,
    help="numpy models (python) or models exported with torch.onnx.export (onnx).",
)
@click.option(
    "--target",
    type=click.Choice(render.TARGETS),
    default="embedded",
    show_default=True,
    help="embedded: the pytriton server (ONNX runs via ORT in a Python model); "
    "container: native onnxruntime configs for the NGC image.",
)
@click.option(
    "--shards-per-table",
    type=click.IntRange(1, 4096),
    default=2,
    show_default=True,
    help="Cut every table into up to K contiguous row ranges.",
)
@click.option(
    "--device",
    type=click.Choice(plan.DEVICES),
    default="cpu",
    show_default=True,
    help="Instance kind of shards and the dense model (the router always runs on CPU).",
)
@click.option("--instances", type=click.IntRange(1, 256), default=1, show_default=True, help="Instances per model.")
@click.option(
    "--max-batch-size",
    type=click.IntRange(1, 1 << 20),
    default=plan.DEFAULT_MAX_BATCH_SIZE,
    show_default=True,
    help="Largest number of candidates per request.",
)
@click.option("--force", is_flag=True, help="Replace existing output directories.")
@_reports_errors
def build_command(
    model_path: Path,
    repository: Path,
    ensembles: Path,
    name: str,
    backend: render.Backend,
    target: render.Target,
    shards_per_table: int,
    device: plan.Device,
    instances: int,
    max_batch_size: int,
    force: bool,
) -> None:
    """Generate the sharded repository and the ensemble for a model."""
    model = models.DLRM.load(model_path)
    the_plan = plan.uniform_plan(
        model,
        name=name,
        shards_per_table=shards_per_table,
        device=device,
        instance_count=instances,
        max_batch_size=max_batch_size,
    )
    click.echo(str(the_plan))
    result = build_module.build(model, the_plan, repository, ensembles, backend=backend, target=target, force=force)
    click.echo(str(result))
    if device == "gpu" and backend == "python":
        click.echo(
            "note: numpy models on KIND_GPU instances still compute on the host; use --backend onnx for GPU execution."
        )


@main.command("serve")
@click.option(
    "--repo",
    "repository",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("model_repository"),
    show_default=True,
)
@click.option(
    "--ensembles",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("ensembles"),
    show_default=True,
)
@click.option("--http-port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="0 = any free port.")
@click.option("--grpc-port", type=click.IntRange(0, 65535), default=8001, show_default=True, help="0 = any free port.")
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    default=8002,
    show_default=True,
    help="0 = any free port.",
)
@click.option("--address", default="127.0.0.1", show_default=True, help="Address to bind (0.0.0.0 for all).")
@click.option(
    "--timeout-s",
    type=click.FloatRange(1),
    default=serve.DEFAULT_READY_TIMEOUT_S,
    show_default=True,
    help="Seconds every model gets to become ready.",
)
@click.option(
    "--log-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Keep the server log here (default: a temporary file).",
)
@_reports_errors
def serve_command(
    repository: Path,
    ensembles: Path,
    http_port: int,
    grpc_port: int,
    metrics_port: int,
    address: str,
    timeout_s: float,
    log_file: Path | None,
) -> None:
    """Run the embedded tritonserver until Ctrl-C / SIGTERM."""
    config = serve.ServerConfig((repository, ensembles), http_port, grpc_port, metrics_port, address)
    server = serve.TritonServer(config, log_path=log_file)
    stop_requested = []
    signal.signal(signal.SIGTERM, lambda *_: stop_requested.append(True))
    server.start()
    try:
        server.wait_until_ready(timeout_s=timeout_s)
        click.echo(f"tritonserver ready (log: {server.log_path})")
        click.echo(f"  HTTP     {server.http_url}\n  gRPC     {server.grpc_url}\n  metrics  {server.metrics_url}")
        for ensemble in sorted(path.name for path in ensembles.iterdir() if (path / naming.CONFIG_FILE).exists()):
            click.echo(f"  ensemble {ensemble}: POST http://{server.http_url}/v2/models/{ensemble}/infer")
        click.echo("Ctrl-C to stop.")
        while not stop_requested:
            if server.process is None or server.process.poll() is not None:
                lines = "\n".join(server.error_lines()[-20:])
                raise serve.ServerError(f"tritonserver exited unexpectedly:\n{lines}")
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        code = server.stop()
    click.echo(f"tritonserver stopped (exit code {code}).")


@main.command("check")
@click.option("--model", "model_path", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--url", default=None, help="host:port (default localhost:8000 for http, localhost:8001 for grpc).")
@click.option("--protocol", type=click.Choice(client.PROTOCOLS), default="http", show_default=True)
@click.option("--name", default="dlrm", show_default=True, help="Ensemble to call.")
@click.option("--requests", "num_requests", type=click.IntRange(1), default=10, show_default=True)
@click.option("--batch", type=click.IntRange(1), default=64, show_default=True, help="Samples per request.")
@click.option("--seed", type=int, default=0, show_default=True)
@_reports_errors
def check_command(
    model_path: Path,
    url: str | None,
    protocol: client.Protocol,
    name: str,
    num_requests: int,
    batch: int,
    seed: int,
) -> None:
    """Compare served scores with the PyTorch model; exit 1 above 1e-5."""
    model = models.DLRM.load(model_path)
    report = client.check(
        model,
        url or client.default_url(protocol),
        protocol=protocol,
        model_name=name,
        requests=num_requests,
        batch_size=batch,
        seed=seed,
    )
    click.echo(str(report))
    if not report.passed:
        sys.exit(1)


@main.command("demo")
@click.option(
    "--workdir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("runs/demo"),
    show_default=True,
    help="Where the example model and its repositories are written (replaced).",
)
@click.option("--backend", type=click.Choice(render.BACKENDS), default="python", show_default=True)
@click.option("--shards-per-table", type=click.IntRange(1, 4096), default=2, show_default=True)
@_reports_errors
def demo_command(workdir: Path, backend: render.Backend, shards_per_table: int) -> None:
    """Example model -> repository -> embedded server -> requests over HTTP and gRPC -> compare -> stop."""
    report = demo.run_demo(workdir, backend=backend, shards_per_table=shards_per_table, echo=click.echo)
    if not report.passed:
        sys.exit(1)

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
from click.core import ParameterSource

from generator import build as build_module
from generator import (
    calibrate,
    capacity,
    client,
    demo,
    k8s,
    loadtest,
    models,
    naming,
    plan,
    plan_figure,
    planner,
    render,
    serve,
)
from generator import profile as profiles
from generator.errors import RecgenError, UserInputError

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
@click.option(
    "--group-by",
    type=click.Choice(plan.GROUP_BY),
    default="placement",
    show_default=True,
    help="Serve shards with the same placement as one model (fewer ensemble steps), or one model per shard.",
)
@click.option("--force", is_flag=True, help="Replace existing output directories.")
@click.option(
    "--layout",
    type=click.Choice(["single", "distributed"]),
    default="single",
    show_default=True,
    help="single: one server (--out + --ensembles); distributed: --out DIR holds DIR/front and one repository "
    "per shard group, served by `recgen serve --distributed DIR` or `recgen k8s`.",
)
@click.option(
    "--remote-deadline-s",
    type=click.FloatRange(0.01, 600),
    default=render.RemoteCallPolicy.deadline_s,
    show_default=True,
    help="distributed: deadline of one front -> shard group call, retries included.",
)
@click.option(
    "--remote-attempts",
    type=click.IntRange(1, 16),
    default=render.RemoteCallPolicy.max_attempts,
    show_default=True,
    help="distributed: attempts per call, each on the next replica, on UNAVAILABLE only.",
)
@click.option(
    "--plan",
    "plan_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="plan.json from `recgen plan`: hotness order, cuts, replicas and devices (replaces "
    "--shards-per-table, --device, --instances, --name, --max-batch-size).",
)
@click.pass_context
@_reports_errors
def build_command(
    context: click.Context,
    plan_path: Path | None,
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
    group_by: plan.GroupBy,
    force: bool,
    layout: str,
    remote_deadline_s: float,
    remote_attempts: int,
) -> None:
    """Generate the sharded repository and the ensemble for a model (or the distributed layout)."""
    model = models.DLRM.load(model_path)
    explicit_group_by = context.get_parameter_source("group_by") != ParameterSource.DEFAULT
    if plan_path is not None:
        replaced = ["shards_per_table", "device", "instances", "name", "max_batch_size"]
        replaced += [] if layout == "distributed" else ["group_by"]
        given = [name for name in replaced if context.get_parameter_source(name) != ParameterSource.DEFAULT]
        if given:
            raise UserInputError(f"--plan sets {', '.join('--' + g.replace('_', '-') for g in given)}; drop them")
        the_plan = plan.load_plan(plan_path)
    else:
        the_plan = plan.uniform_plan(
            model,
            name=name,
            shards_per_table=shards_per_table,
            device=device,
            instance_count=instances,
            max_batch_size=max_batch_size,
            group_by=group_by,
        )
    click.echo(str(the_plan))
    if layout == "distributed":
        if context.get_parameter_source("ensembles") != ParameterSource.DEFAULT:
            raise UserInputError("--ensembles is for --layout single; the distributed front holds its ensemble")
        if context.get_parameter_source("repository") == ParameterSource.DEFAULT:
            repository = Path("distributed")
        policy = render.RemoteCallPolicy(deadline_s=remote_deadline_s, max_attempts=remote_attempts)
        result: build_module.BuildResult | build_module.DistributedBuild = build_module.build_distributed(
            model,
            the_plan,
            repository,
            backend=backend,
            target=target,
            policy=policy,
            group_by=group_by if explicit_group_by else "shard",
            force=force,
        )
    else:
        result = build_module.build(model, the_plan, repository, ensembles, backend=backend, target=target, force=force)
    click.echo(str(result))
    if backend == "python" and any(m.device == "gpu" for m in result.models):
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
@click.option(
    "--distributed",
    "distributed_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Serve a `--layout distributed` build: one server per shard-group replica plus the front, on free "
    "loopback ports (logs in DIR/logs).",
)
@click.pass_context
@_reports_errors
def serve_command(
    context: click.Context,
    repository: Path,
    ensembles: Path,
    http_port: int,
    grpc_port: int,
    metrics_port: int,
    address: str,
    timeout_s: float,
    log_file: Path | None,
    distributed_dir: Path | None,
) -> None:
    """Run the embedded tritonserver until Ctrl-C / SIGTERM."""
    if distributed_dir is not None:
        fixed = ["repository", "ensembles", "http_port", "grpc_port", "metrics_port", "log_file"]
        given = [name for name in fixed if context.get_parameter_source(name) != ParameterSource.DEFAULT]
        if given:
            raise UserInputError(f"--distributed picks its own ports and logs; drop --{given[0].replace('_', '-')}")
        _serve_distributed(distributed_dir, address, timeout_s)
        return
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


def _serve_distributed(root: Path, address: str, timeout_s: float) -> None:
    topology = serve.Topology.load(root)
    log_dir = root / "logs"
    log_dir.mkdir(exist_ok=True)
    stop_requested = []
    signal.signal(signal.SIGTERM, lambda *_: stop_requested.append(True))
    with serve.LocalTopology(topology, log_dir=log_dir, address=address) as local:
        local.start(timeout_s=timeout_s)
        click.echo(f"distributed topology of {topology.model_name!r} ready (logs: {log_dir})")
        click.echo(str(local))
        click.echo(
            f"  ensemble {topology.ensemble}: POST http://{local.front.http_url}/v2/models/{topology.ensemble}/infer"
        )
        click.echo("Ctrl-C to stop.")
        try:
            while not stop_requested:
                dead = [s for s in local.servers() if s.process is None or s.process.poll() is not None]
                if dead:
                    raise serve.ServerError(f"a server exited unexpectedly; see {dead[0].log_path}")
                time.sleep(0.2)
        except KeyboardInterrupt:
            pass
    click.echo("all servers stopped.")


@main.command("check")
@click.option("--model", "model_path", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--url", default=None, help="host:port (default localhost:8000 for http, localhost:8001 for grpc).")
@click.option("--protocol", type=click.Choice(client.PROTOCOLS), default="http", show_default=True)
@click.option("--name", default="dlrm", show_default=True, help="Ensemble to call.")
@click.option("--requests", "num_requests", type=click.IntRange(1), default=10, show_default=True)
@click.option("--batch", type=click.IntRange(1), default=64, show_default=True, help="Samples per request.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--ranking",
    is_flag=True,
    help="Call `<name>_ranking` with one user and --batch candidates; compare with the flattened forward.",
)
@_reports_errors
def check_command(
    model_path: Path,
    url: str | None,
    protocol: client.Protocol,
    name: str,
    num_requests: int,
    batch: int,
    seed: int,
    ranking: bool,
) -> None:
    """Compare served scores with the PyTorch model; exit 1 above 1e-5."""
    model = models.DLRM.load(model_path)
    report = client.check(
        model,
        url or client.default_url(protocol),
        protocol=protocol,
        model_name=naming.ranking_ensemble(name) if ranking else name,
        requests=num_requests,
        batch_size=batch,
        seed=seed,
        structured=ranking,
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


def _table_shapes(model_path: Path | None, table_options: tuple[str, ...]) -> list[profiles.TableShape]:
    if (model_path is None) == (not table_options):
        raise UserInputError("give exactly one of --model or --table")
    if model_path is not None:
        model = models.DLRM.load(model_path)
        return [profiles.TableShape(t.name, t.num_rows, t.max_ids_per_sample) for t in model.tables]
    shapes = []
    for option in table_options:
        parts = option.split(":")
        try:
            shapes.append(profiles.TableShape(parts[0], int(parts[1]), int(parts[2]) if len(parts) > 2 else 1))
        except (IndexError, ValueError) as error:
            raise UserInputError(f"`--table` must be NAME:ROWS[:IDS_PER_SAMPLE], got {option!r}") from error
    return shapes


def _zipf_alpha(options: tuple[str, ...], shapes: list[profiles.TableShape]) -> float | dict[str, float]:
    """`--zipf 1.05` for all tables; `--zipf user_id=1.2` for one (a bare value is the default for the rest)."""
    default: float | None = None
    per_table: dict[str, float] = {}
    for option in options:
        name, _, value = option.rpartition("=")
        try:
            alpha = float(value)
        except ValueError as error:
            raise UserInputError(f"`--zipf` must be ALPHA or TABLE=ALPHA, got {option!r}") from error
        if name:
            per_table[name] = alpha
        else:
            default = alpha
    if not per_table and default is not None:
        return default
    if default is not None:
        return {shape.name: per_table.get(shape.name, default) for shape in shapes} | per_table
    return per_table


@main.command("profile")
@click.option(
    "--model",
    "model_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Take table names and sizes from this model.",
)
@click.option("--table", "table_options", multiple=True, help="NAME:ROWS[:IDS_PER_SAMPLE] (instead of --model).")
@click.option("--zipf", "zipf_options", multiple=True, help="Synthetic Zipf traffic: ALPHA, or TABLE=ALPHA.")
@click.option(
    "--trace",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help=".npz with one id array per table ([samples, width] padded with -1, or 1-D).",
)
@click.option(
    "--meta-trace",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Meta dlrm_datasets trace: torch file of (indices, offsets, lengths).",
)
@click.option("--samples", type=click.IntRange(1), default=100_000, show_default=True, help="Synthetic samples.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("-o", "--out", "out_path", required=True, type=click.Path(dir_okay=False, path_type=Path))
@_reports_errors
def profile_command(
    model_path: Path | None,
    table_options: tuple[str, ...],
    zipf_options: tuple[str, ...],
    trace: Path | None,
    meta_trace: Path | None,
    samples: int,
    seed: int,
    out_path: Path,
) -> None:
    """Record per-row access counts of every table (synthetic Zipf or a trace) into PROFILE.npz."""
    shapes = _table_shapes(model_path, table_options)
    sources = [bool(zipf_options), trace is not None, meta_trace is not None]
    if sum(sources) != 1:
        raise UserInputError("give exactly one of --zipf, --trace or --meta-trace")
    if zipf_options:
        result = profiles.zipf_profile(shapes, _zipf_alpha(zipf_options, shapes), samples=samples, seed=seed)
    elif trace is not None:
        result = profiles.profile_from_npz(trace, shapes)
    else:
        assert meta_trace is not None
        result = profiles.profile_from_meta_trace(meta_trace, shapes)
    result.save(out_path)
    click.echo(str(result))
    click.echo(f"wrote {out_path}")


@main.command("calibrate")
@click.option(
    "--model",
    "model_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Model to measure (default: the bundled example).",
)
@click.option("--batch", type=click.IntRange(1, 1 << 16), default=256, show_default=True)
@click.option(
    "--requests",
    "num_requests",
    type=click.IntRange(5),
    default=40,
    show_default=True,
    help="Requests per measured point.",
)
@click.option("-o", "--out", "out_path", required=True, type=click.Path(dir_okay=False, path_type=Path))
@_reports_errors
def calibrate_command(model_path: Path | None, batch: int, num_requests: int, out_path: Path) -> None:
    """Measure the capacity model (per-request and per-row costs, memory per replica) on the embedded server."""
    model = models.DLRM.load(model_path) if model_path else models.example_model()
    measured = calibrate.calibrate(model, batch_size=batch, requests=num_requests, echo=click.echo)
    measured.save(out_path)
    click.echo(str(measured))
    click.echo(f"wrote {out_path}")


@main.command("plan")
@click.option("--model", "model_path", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--profile", "profile_path", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--target-qps",
    type=click.FloatRange(0, min_open=True),
    required=True,
    help="Queries (requests) per second to serve.",
)
@click.option("--batch", type=click.IntRange(1), default=256, show_default=True, help="Candidates per query.")
@click.option(
    "--capacity",
    "capacity_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="capacity.json from `recgen calibrate` (default: built-in figures).",
)
@click.option("--max-shards-per-table", type=click.IntRange(1, 1024), default=8, show_default=True)
@click.option(
    "--gpu-memory-gb",
    type=click.FloatRange(0, min_open=True),
    default=None,
    help="Put the dense model, then the hottest shards, on GPU while they fit.",
)
@click.option(
    "--window-s",
    type=click.FloatRange(0, min_open=True),
    default=1.0,
    show_default=True,
    help="Replay window for memory utility.",
)
@click.option("--name", default="dlrm", show_default=True)
@click.option("--shard-fixed-us", type=click.FloatRange(0), default=None, help="Override: shard cost per request.")
@click.option("--shard-per-row-ns", type=click.FloatRange(0), default=None, help="Override: shard cost per row.")
@click.option("--router-fixed-us", type=click.FloatRange(0), default=None, help="Override: router cost per request.")
@click.option("--router-per-id-ns", type=click.FloatRange(0), default=None, help="Override: router cost per id.")
@click.option("--dense-samples-per-s", type=click.FloatRange(0, min_open=True), default=None, help="Override.")
@click.option("--replica-overhead-mb", type=click.FloatRange(0), default=None, help="Override: bytes per replica.")
@click.option("--server-overhead-mb", type=click.FloatRange(0), default=None, help="Override: bytes per server.")
@click.option("--target-utilization", type=click.FloatRange(0, 1, min_open=True), default=None, help="Override.")
@click.option("-o", "--out", "out_path", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--figure",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="PNG of access CDFs, cuts and memory (default: next to the plan).",
)
@click.option(
    "--front-cache-mb",
    type=click.FloatRange(0, 1_000_000),
    default=0.0,
    show_default=True,
    help="Keep this many MB of the hottest rows (by the profile, across tables) in the router, which pools them "
    "itself; their lookups reach no shard (FlexEMR).",
)
@_reports_errors
def plan_command(
    model_path: Path,
    profile_path: Path,
    target_qps: float,
    batch: int,
    capacity_path: Path | None,
    max_shards_per_table: int,
    gpu_memory_gb: float | None,
    window_s: float,
    name: str,
    shard_fixed_us: float | None,
    shard_per_row_ns: float | None,
    router_fixed_us: float | None,
    router_per_id_ns: float | None,
    dense_samples_per_s: float | None,
    replica_overhead_mb: float | None,
    server_overhead_mb: float | None,
    target_utilization: float | None,
    out_path: Path,
    figure: Path | None,
    front_cache_mb: float,
) -> None:
    """Size every shard from its access share (ElasticRec) and write plan.json, its row orders and a PNG."""
    model = models.DLRM.load(model_path)
    access = profiles.AccessProfile.load(profile_path)

    def scaled(value: float | None, factor: float) -> float | None:
        return None if value is None else value * factor

    figures = capacity.Capacity.load(capacity_path) if capacity_path else capacity.Capacity()
    figures = figures.with_overrides(
        shard_fixed_s=scaled(shard_fixed_us, 1e-6),
        shard_per_row_s=scaled(shard_per_row_ns, 1e-9),
        router_fixed_s=scaled(router_fixed_us, 1e-6),
        router_per_id_s=scaled(router_per_id_ns, 1e-9),
        dense_samples_per_s=dense_samples_per_s,
        replica_overhead_bytes=None if replica_overhead_mb is None else int(replica_overhead_mb * 1e6),
        server_overhead_bytes=None if server_overhead_mb is None else int(server_overhead_mb * 1e6),
        target_utilization=target_utilization,
    )
    shape = planner.ModelShape.of(model)
    report = planner.plan_model(
        shape,
        access,
        target_qps=target_qps,
        batch_size=batch,
        capacity=figures,
        max_shards_per_table=max_shards_per_table,
        gpu_memory_bytes=None if gpu_memory_gb is None else int(gpu_memory_gb * 1e9),
        window_s=window_s,
        front_cache_bytes=int(front_cache_mb * 2**20),
    )
    the_plan = planner.plan_from_report(report, shape, access, name=name)
    planner.save(the_plan, report, out_path, profile_source=access.source)
    figure_path = plan_figure.plot_plan(report, access, figure or out_path.with_suffix(".png"))
    click.echo(str(report))
    click.echo(f"wrote {out_path}, {plan.row_order_path(out_path)} and {figure_path}")
    click.echo(f"build it: recgen build --model {model_path} --plan {out_path}")


@main.command("k8s")
@click.option(
    "--plan",
    "plan_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="plan.json (default: the one the distributed build in --layout-dir saved).",
)
@click.option(
    "--image", default=k8s.DEFAULT_IMAGE, show_default=True, help="Triton image the pods run (or build FROM)."
)
@click.option(
    "--source",
    type=click.Choice(k8s.SOURCES),
    default="image",
    show_default=True,
    help="How repositories reach the pods: baked into images (Dockerfiles written), a read-only PVC holding the "
    "distributed build, or object storage.",
)
@click.option("--registry", default=k8s.K8sOptions.registry, show_default=True, help="Where built images are pushed.")
@click.option("--tag", default=k8s.K8sOptions.tag, show_default=True, help="Tag of the built images.")
@click.option("--pvc", default=None, help="--source pvc: the claim holding the distributed build.")
@click.option("--repository-url", default=None, help="--source url: s3://, gs:// or as:// prefix of the build.")
@click.option("--namespace", default=None, help="Namespace set by the kustomization.")
@click.option(
    "--group-by",
    type=click.Choice(plan.GROUP_BY),
    default=None,
    help="One service per shard (scaled on its own), or per placement; must match the distributed build "
    "[default: the build's in --layout-dir, else shard].",
)
@click.option("--max-replica-factor", type=click.FloatRange(1, 1000), default=4.0, show_default=True)
@click.option(
    "--queue-target-us",
    type=click.IntRange(1, 10_000_000),
    default=1000,
    show_default=True,
    help="HPA target: Triton queue time per request, averaged over the pods.",
)
@click.option("--front-replicas", type=click.IntRange(1, 1000), default=1, show_default=True)
@click.option(
    "--layout-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="The `recgen build --layout distributed` output: its groups must be the manifests' groups.",
)
@click.option("-o", "--out", "out_path", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--force", is_flag=True, help="Replace an existing output directory.")
@_reports_errors
def k8s_command(
    plan_path: Path,
    image: str,
    source: k8s.Source,
    registry: str,
    tag: str,
    pvc: str | None,
    repository_url: str | None,
    namespace: str | None,
    group_by: plan.GroupBy | None,
    max_replica_factor: float,
    queue_target_us: int,
    front_replicas: int,
    layout_dir: Path | None,
    out_path: Path,
    force: bool,
) -> None:
    """Write Kubernetes manifests: per shard group a Deployment, headless Service and HPA, plus the front."""
    if plan_path is None and layout_dir is None:
        raise UserInputError("give --plan plan.json, or --layout-dir DIR of a `recgen build --layout distributed`")
    the_plan = plan.load_plan(plan_path if plan_path is not None else layout_dir / naming.DISTRIBUTED_PLAN_FILE)
    if group_by is None:
        group_by = the_plan.group_by if plan_path is None else "shard"
    options = k8s.K8sOptions(
        image=image,
        registry=registry,
        tag=tag,
        source=source,
        pvc=pvc,
        repository_url=repository_url,
        namespace=namespace,
        group_by=group_by,
        max_replica_factor=max_replica_factor,
        queue_target_us=queue_target_us,
        front_replicas=front_replicas,
    )
    manifests = k8s.render_manifests(the_plan, options)
    if layout_dir is not None:
        built = [group.model for group in serve.Topology.load(layout_dir).groups]
        planned = [c.models[0] for c in manifests.components if c.role == "shard-group"]
        if built != planned:
            raise UserInputError(
                f"--layout-dir {layout_dir} holds groups {built}, the manifests have {planned}; "
                "build and k8s must use the same plan and --group-by"
            )
    out = manifests.write(out_path, force=force)
    click.echo(str(manifests))
    click.echo(f"wrote {out}: `kubectl apply -k {out}`")
    click.echo(f"build the images first: {out}/{k8s.IMAGES_DIR}/build.sh <distributed build dir>")


@main.command("loadtest")
@click.option("--url", required=True, help="host:port of the protocol's endpoint (8000 http, 8001 grpc).")
@click.option("--protocol", type=click.Choice(client.PROTOCOLS), default="http", show_default=True)
@click.option("--name", default="dlrm", show_default=True, help="Ensemble to call.")
@click.option("--users", type=click.IntRange(1), default=4, show_default=True, help="Concurrent locust users.")
@click.option("--spawn-rate", type=click.FloatRange(0, min_open=True), default=4.0, show_default=True)
@click.option("--run-time", default="60s", show_default=True, help="locust duration, e.g. 30s, 2m.")
@click.option("--batch", type=click.IntRange(1), default=64, show_default=True, help="Candidates per request.")
@click.option(
    "--profile",
    "profile_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Access profile: ids and pooling lengths follow it (default: uniform ids).",
)
@click.option(
    "--model",
    "model_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Spot-check responses against this PyTorch model.",
)
@click.option(
    "--spot-check-every",
    type=click.IntRange(0),
    default=50,
    show_default=True,
    help="With --model: compare every Nth response.",
)
@click.option(
    "--structured",
    is_flag=True,
    help="Ranking requests to NAME_ranking: the user's features once and --batch candidates (RecServe).",
)
@click.option("-o", "--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path))
@_reports_errors
def loadtest_command(
    url: str,
    protocol: client.Protocol,
    name: str,
    users: int,
    spawn_rate: float,
    run_time: str,
    batch: int,
    profile_path: Path | None,
    model_path: Path | None,
    spot_check_every: int,
    structured: bool,
    out_dir: Path,
) -> None:
    """Headless locust against a running ensemble: CSV, HTML, summary (JSON, markdown) and a PNG in OUT."""
    summary = loadtest.run_loadtest(
        url,
        out_dir,
        protocol=protocol,
        ensemble=name,
        users=users,
        spawn_rate=spawn_rate,
        run_time=run_time,
        batch_size=batch,
        profile_path=profile_path,
        model_path=model_path,
        spot_check_every=spot_check_every,
        structured=structured,
    )
    click.echo(str(summary))
    click.echo(f"wrote {out_dir}/summary.json, summary.md, report.html, locust_*.csv, throughput_latency.png")
    if summary.failures:
        sys.exit(1)

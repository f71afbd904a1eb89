"""`recgen check`, `recgen loadtest`, `recgen demo` and `recgen calibrate`: the served model, measured and checked."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import click

from generator import naming
from generator.check import calibrate as calibration
from generator.check import client, quality
from generator.check import demo as demos
from generator.check import loadtest as loadtests
from generator.cli import options
from generator.model.examples import example_model
from generator.model.loading import load_model
from generator.planning import precision
from generator.planning.choices import LOOKUP_ENGINES, LookupEngine
from generator.planning.plan import Plan
from generator.repository.configs import Backend
from generator.repository.settings import built_plan
from generator.traffic.profile import AccessProfile


@click.command()
@options.model_file()
@options.max_ids
@options.user_features
@click.option("--url", default=None, help="host:port (default localhost:8000 for http, localhost:8001 for grpc).")
@options.protocol
@click.option("--name", default="dlrm", show_default=True, help="Ensemble to call.")
@click.option("--requests", "num_requests", type=click.IntRange(1), default=10, show_default=True)
@options.batch(64, "Samples per request.")
@options.seed
@click.option(
    "--ranking",
    is_flag=True,
    help="Call `<name>_ranking` with one user and --batch candidates; compare with the flattened forward.",
)
@options.built_plan
@options.row_dtype
@options.reports_errors
def check(
    model_path: Path,
    max_ids: dict[str, int],
    user_features: tuple[str, ...],
    plan_path: Path | None,
    row_dtypes: tuple[str, ...],
    url: str | None,
    protocol: client.Protocol,
    name: str,
    num_requests: int,
    batch: int,
    seed: int,
    ranking: bool,
) -> None:
    """Compare served outputs with the PyTorch model (or the imported program); exit 1 above 1e-5.

    With reduced-precision rows (give the build's --plan or --row-dtype), the model compared with is the one whose
    rows went through the same quantize and dequantize.
    """
    model = load_model(model_path, max_ids=max_ids, user_features=user_features)
    the_plan = built_plan(model, plan_path, row_dtypes)
    report = client.check(
        precision.with_rounded_rows(model, the_plan),
        url or client.default_url(protocol),
        protocol=protocol,
        model_name=naming.ranking_ensemble(name) if ranking else name,
        requests=num_requests,
        batch_size=batch,
        seed=seed,
        structured=ranking,
    )
    if precision.has_reduced_rows(the_plan):
        report = dataclasses.replace(report, reference=f"PyTorch, rows {precision.dtype_summary(the_plan)}")
    click.echo(str(report))
    if not report.passed:
        _hint_row_dtypes(report, protocol, the_plan)
        sys.exit(1)


def _hint_row_dtypes(report: client.CheckReport, protocol: client.Protocol, the_plan: Plan) -> None:
    """Say so when the server pools reduced-precision rows that the check was not told about."""
    with client.RankingClient(report.url, protocol, report.model_name) as served:
        reduced = sorted(served.served_row_dtypes() - {"fp32"})
    if reduced and not precision.has_reduced_rows(the_plan):
        click.echo(
            f"the served model stores rows as {', '.join(reduced)}: pass the build's --plan or --row-dtype, so that "
            "the check compares with the model whose rows went through the same quantize and dequantize"
        )


@click.command()
@options.model_file()
@options.max_ids
@options.user_features
@options.built_plan
@options.row_dtype
@click.option(
    "--profile",
    "profile_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Access profile the requests' ids follow (default: uniform ids).",
)
@click.option("--requests", "num_requests", type=click.IntRange(1, 10_000), default=32, show_default=True)
@click.option("--candidates", type=click.IntRange(2, 1 << 16), default=quality.DEFAULT_CANDIDATES, show_default=True)
@click.option("--top-k", type=click.IntRange(1), default=quality.DEFAULT_TOP_K, show_default=True)
@options.seed
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None)
@options.reports_errors
def quality_command(
    model_path: Path,
    max_ids: dict[str, int],
    user_features: tuple[str, ...],
    plan_path: Path | None,
    row_dtypes: tuple[str, ...],
    profile_path: Path | None,
    num_requests: int,
    candidates: int,
    top_k: int,
    seed: int,
    json_path: Path | None,
) -> None:
    """What the row dtypes cost before deploying: output change, ranking agreement and memory saved vs fp32."""
    model = load_model(model_path, max_ids=max_ids, user_features=user_features)
    report = quality.measure_quality(
        model,
        built_plan(model, plan_path, row_dtypes),
        profile=AccessProfile.load(profile_path) if profile_path else None,
        requests=num_requests,
        candidates=candidates,
        top_k=top_k,
        seed=seed,
    )
    click.echo(str(report))
    if json_path is not None:
        json_path.write_text(json.dumps(report.to_dict(), indent=2) + "\n")
        click.echo(f"wrote {json_path}")


quality_command.name = "quality"


@click.command()
@options.directory("workdir", "runs/demo", "Where the example model and its repositories are written (replaced).")
@options.backend
@click.option("--shards-per-table", type=click.IntRange(1, 4096), default=2, show_default=True)
@options.reports_errors
def demo(workdir: Path, backend: Backend, shards_per_table: int) -> None:
    """Example model -> repository -> embedded server -> requests over HTTP and gRPC -> compare -> stop."""
    report = demos.run_demo(workdir, backend=backend, shards_per_table=shards_per_table, echo=click.echo)
    if not report.passed:
        sys.exit(1)


@click.command()
@options.model_file(required=False, help_text="Model to measure (default: the bundled example).")
@options.max_ids
@click.option("--batch", type=click.IntRange(1, 1 << 16), default=256, show_default=True)
@click.option(
    "--requests",
    "num_requests",
    type=click.IntRange(5),
    default=40,
    show_default=True,
    help="Requests per measured point.",
)
@options.out_file(help_text="Where to write capacity.json.")
@click.option(
    "--lookup-engine",
    type=click.Choice(LOOKUP_ENGINES),
    default="native",
    show_default=True,
    help="The engine whose routers and shard groups are measured (plans charge its costs).",
)
@options.reports_errors
def calibrate(
    model_path: Path | None, max_ids: dict[str, int], batch: int, num_requests: int, out_path: Path,
    lookup_engine: LookupEngine,
) -> None:  # fmt: skip
    """Measure the capacity model (per-request and per-row costs, memory per replica) on the embedded server."""
    model = load_model(model_path, max_ids=max_ids) if model_path else example_model()
    measured = calibration.calibrate(model, batch_size=batch, requests=num_requests, echo=click.echo,
                                     lookup_engine=lookup_engine)  # fmt: skip
    measured.save(out_path)
    click.echo(str(measured))
    click.echo(f"wrote {out_path}")


@click.command()
@click.option("--url", required=True, help="host:port of the protocol's endpoint (8000 http, 8001 grpc).")
@options.protocol
@click.option("--name", default="dlrm", show_default=True, help="Ensemble to call.")
@click.option("--users", type=click.IntRange(1), default=4, show_default=True, help="Concurrent locust users.")
@click.option("--spawn-rate", type=click.FloatRange(0, min_open=True), default=4.0, show_default=True)
@click.option("--run-time", default="60s", show_default=True, help="locust duration, e.g. 30s, 2m.")
@options.batch(64)
@click.option(
    "--profile",
    "profile_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Access profile: ids and pooling lengths follow it (default: uniform ids).",
)
@options.model_file(required=False, help_text="Spot-check responses against this PyTorch model.")
@options.max_ids
@click.option(
    "--spot-check-every",
    type=click.IntRange(0),
    default=50,
    show_default=True,
    help="With --model: compare every Nth response.",
)
@options.built_plan
@options.row_dtype
@click.option(
    "--structured",
    is_flag=True,
    help="Ranking requests to NAME_ranking: the user's features once and --batch candidates (RecServe).",
)
@options.out_dir(help_text="Where locust's CSV and HTML, the summary and the PNG go.", dest="out_dir")
@options.reports_errors
def loadtest(
    url: str,
    protocol: client.Protocol,
    name: str,
    users: int,
    spawn_rate: float,
    run_time: str,
    batch: int,
    profile_path: Path | None,
    model_path: Path | None,
    max_ids: dict[str, int],
    spot_check_every: int,
    plan_path: Path | None,
    row_dtypes: tuple[str, ...],
    structured: bool,
    out_dir: Path,
) -> None:
    """Headless locust against a running ensemble: CSV, HTML, summary (JSON, markdown) and a PNG in OUT."""
    summary = loadtests.run_loadtest(
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
        max_ids=max_ids,
        spot_check_every=spot_check_every,
        structured=structured,
        plan_path=plan_path,
        row_dtypes=row_dtypes,
    )
    click.echo(str(summary))
    click.echo(f"wrote {out_dir}/summary.json, summary.md, report.html, locust_*.csv, throughput_latency.png")
    if summary.rejections:
        click.echo(
            f"{summary.rejections} requests were shed by the server: the offered load exceeded what the "
            "build's --latency-slo-ms allows (load shed on purpose, not errors)"
        )
    if summary.errors:
        sys.exit(1)

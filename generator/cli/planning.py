"""`recgen plan`: shards, replicas and placement from an access profile (ElasticRec), written as plan.json."""

from __future__ import annotations

from pathlib import Path

import click

from generator.cli import options
from generator.planning import capacity, planner, precision, servers
from generator.planning.plan import LookupStep
from generator.triton_models.recgen_rows import ROW_DTYPES, RowDtype


@click.command()
@options.model_file()
@options.max_ids
@options.user_features
@click.option("--profile", "profile_path", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--target-qps",
    type=click.FloatRange(0, min_open=True),
    required=True,
    help="Queries (requests) per second to serve.",
)
@options.batch(256, "Candidates per query.")
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
    "--server-cores",
    type=click.IntRange(1, 4096),
    default=None,
    help=f"Cores of one server the replicas are placed on [default: {servers.DEFAULT_SERVER_CORES}].",
)
@click.option(
    "--server-memory-gb",
    type=click.FloatRange(0, min_open=True),
    default=None,
    help=f"Memory of one server [default: {servers.DEFAULT_SERVER_MEMORY_BYTES / 1e9:g}].",
)
@click.option("--server-gpus", type=click.IntRange(0, 64), default=None, help="GPUs of one server [default: 0].")
@click.option(
    "--server-gpu-memory-gb", type=click.FloatRange(0, min_open=True), default=None, help="Memory of each GPU."
)
@options.no_access_counts
@click.option(
    "--page-cold-rows",
    is_flag=True,
    default=False,
    help="Leave the rows of cold shards on disk until a request reads them (paged), where a copy would keep under "
    "half of them in memory; priced at the bytes it is expected to keep.",
)
@click.option(
    "--window-s",
    type=click.FloatRange(0, min_open=True),
    default=1.0,
    show_default=True,
    help="Replay window for memory utility.",
)
@options.ensemble_name
@click.option("--shard-fixed-us", type=click.FloatRange(0), default=None, help="Override: shard cost per request.")
@click.option("--shard-per-row-ns", type=click.FloatRange(0), default=None, help="Override: shard cost per row.")
@click.option("--router-fixed-us", type=click.FloatRange(0), default=None, help="Override: router cost per request.")
@click.option("--router-per-id-ns", type=click.FloatRange(0), default=None, help="Override: router cost per id.")
@click.option("--dense-samples-per-s", type=click.FloatRange(0, min_open=True), default=None, help="Override.")
@click.option(
    "--replica-overhead-mb", type=click.FloatRange(0), default=None, help="Override: MB per dense replica (a stub)."
)
@click.option(
    "--lookup-replica-overhead-mb",
    type=click.FloatRange(0),
    default=None,
    help="Override: MB per router or shard replica beyond its data (native: an instance thread).",
)
@click.option("--server-overhead-mb", type=click.FloatRange(0), default=None, help="Override: bytes per server.")
@click.option(
    "--fault-kib",
    type=click.FloatRange(0.5, 16384),
    default=None,
    help="Override: KiB one page fault of a paged shard reads (what `recgen calibrate` measures where it builds).",
)
@click.option("--target-utilization", type=click.FloatRange(0, 1, min_open=True), default=None, help="Override.")
@options.out_file(help_text="plan.json (its row orders go beside it as <stem>.rows.npz).")
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
@options.latency_slo_ms
@options.lookup_step
@options.row_dtype
@click.option(
    "--row-dtype-by-hotness",
    "hot_share",
    type=click.FloatRange(0, 1),
    default=None,
    help="Precision by hotness: the hottest rows that serve this share of a table's accesses keep "
    "--hot-row-dtype, the other shards use --cold-row-dtype (tables named by --row-dtype TABLE=DTYPE keep theirs).",
)
@click.option(
    "--previous",
    "previous_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="The plan.json the deployment runs: also print what switching to the new plan changes (rows and "
    "accesses that move, replicas, memory, front-cache hit rate).",
)
@click.option("--hot-row-dtype", type=click.Choice(ROW_DTYPES), default="fp32", show_default=True)
@click.option("--cold-row-dtype", type=click.Choice(ROW_DTYPES), default="int8", show_default=True)
@options.reports_errors
def plan(
    model_path: Path,
    max_ids: dict[str, int],
    user_features: tuple[str, ...],
    profile_path: Path,
    target_qps: float,
    batch: int,
    capacity_path: Path | None,
    max_shards_per_table: int,
    gpu_memory_gb: float | None,
    server_cores: int | None,
    server_memory_gb: float | None,
    server_gpus: int | None,
    server_gpu_memory_gb: float | None,
    no_access_counts: bool,
    page_cold_rows: bool,
    window_s: float,
    name: str,
    out_path: Path,
    figure: Path | None,
    front_cache_mb: float,
    latency_slo_ms: float,
    lookup_step: LookupStep | None,
    row_dtypes: tuple[str, ...],
    hot_share: float | None,
    hot_row_dtype: RowDtype,
    cold_row_dtype: RowDtype,
    previous_path: Path | None,
    **overrides: float | None,
) -> None:
    """Size every shard from its access share (ElasticRec) and write plan.json, its row orders and a PNG."""
    targets = planner.PlanTargets(
        target_qps=target_qps,
        batch_size=batch,
        max_shards_per_table=max_shards_per_table,
        gpu_memory_bytes=None if gpu_memory_gb is None else int(gpu_memory_gb * 1e9),
        window_s=window_s,
        front_cache_bytes=int(front_cache_mb * 2**20),
        latency_slo_ms=latency_slo_ms,
        lookup_step=lookup_step or "fused",
        precision=precision.row_precision(row_dtypes, hot_share, hot_row_dtype, cold_row_dtype),
        servers=servers.server_size(server_cores, server_memory_gb, server_gpus, server_gpu_memory_gb),
        page_cold_rows=page_cold_rows,
        count_accesses=not no_access_counts,
    )
    figures = capacity.load_with_overrides(capacity_path, **overrides)
    written = planner.plan_to_files(
        model_path,
        profile_path,
        targets,
        out_path,
        capacity=figures,
        figure_path=figure,
        name=name,
        max_ids=max_ids,
        user_features=user_features,
        previous_path=previous_path,
    )
    click.echo(str(written))

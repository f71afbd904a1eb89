"""`recgen profile`: access profiles from synthetic Zipf traffic or recorded traces."""

from __future__ import annotations

from pathlib import Path

import click

from generator.check import live
from generator.check.client import Protocol
from generator.cli import options
from generator.errors import UserInputError
from generator.model.loading import load_model
from generator.planning import drift as drifts
from generator.planning.plan_file import load_plan
from generator.traffic import profile as profiles


@click.command()
@options.model_file(required=False, help_text="Take table names and sizes from this model.")
@options.max_ids
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
@options.seed
@click.option(
    "--from-server",
    "server_url",
    default=None,
    multiple=True,
    help="host:port of a running server: read what its routers counted (instead of --model/--table). Repeat it "
    "for every front server of one deployment (each Kubernetes front pod through its own port-forward): their "
    "counts are summed.",
)
@options.protocol
@click.option("--name", default="dlrm", show_default=True, help="With --from-server: the ensemble.")
@click.option("--reset", is_flag=True, help="With --from-server: start a new counting window after the read.")
@click.option(
    "--plan",
    "plan_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="With --from-server: the running plan.json; also print how far the traffic drifted from its profile.",
)
@options.out_file(help_text="Where to write the profile (.npz).")
@options.reports_errors
def profile(
    model_path: Path | None,
    max_ids: dict[str, int],
    table_options: tuple[str, ...],
    zipf_options: tuple[str, ...],
    trace: Path | None,
    meta_trace: Path | None,
    samples: int,
    seed: int,
    server_url: tuple[str, ...],
    protocol: Protocol,
    name: str,
    reset: bool,
    plan_path: Path | None,
    out_path: Path,
) -> None:
    """Record per-row access counts of every table (synthetic Zipf, a trace, or a server's routers) into PROFILE.npz."""
    if server_url:
        if model_path or table_options or zipf_options or trace or meta_trace:
            raise UserInputError("--from-server reads the server's counts: drop --model, --table, --zipf and traces")
        result = live.collect_profiles(server_url, protocol, name, reset=reset)
        result.save(out_path)
        click.echo(f"{result}\nwrote {out_path}")
        if plan_path is not None:
            shares, hit_rate = drifts.planned_expectations(plan_path)
            click.echo(str(drifts.drift(load_plan(plan_path), shares, hit_rate, result)))
        return
    if (model_path is None) == (not table_options):
        raise UserInputError("give exactly one of --model or --table")
    if model_path is not None:
        shapes = profiles.table_shapes(load_model(model_path, max_ids=max_ids).tables)
    else:
        shapes = [profiles.parse_table_shape(option) for option in table_options]
    result = profiles.make_profile(
        shapes, zipf=zipf_options, trace=trace, meta_trace=meta_trace, samples=samples, seed=seed
    )
    result.save(out_path)
    click.echo(str(result))
    click.echo(f"wrote {out_path}")

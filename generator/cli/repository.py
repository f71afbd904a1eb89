"""`recgen build`: the sharded repository and its ensembles, or the distributed layout."""

from __future__ import annotations

from pathlib import Path

import click

from generator.cli import options
from generator.deploy.distributed import DistributedBuild, build_distributed
from generator.errors import UserInputError
from generator.model.loading import load_model
from generator.planning.plan import Device, GroupBy, LookupEngine, LookupStep, Shedding
from generator.planning.plan_file import load_planner_figures
from generator.repository import build as builds
from generator.repository import settings
from generator.repository.configs import Backend, Target
from generator.repository.params import RemoteCallPolicy


@click.command()
@options.model_file()
@options.max_ids
@options.user_features
@options.out_dir(default=Path("model_repository"), help_text="Repository for router, shards, dense.", dest="repository")
@options.directory("ensembles", "ensembles", "Repository for the ensemble.")
@options.ensemble_name
@options.backend
@options.target
@options.shards_per_table
@options.device
@options.instances
@options.max_batch_size
@options.latency_slo_ms
@options.shedding
@options.group_by
@options.lookup_step
@options.lookup_engine
@options.row_dtype
@options.force
@click.option(
    "--layout",
    type=click.Choice(builds.LAYOUTS),
    default="single",
    show_default=True,
    help="single: one server (--out + --ensembles); distributed: --out DIR holds DIR/front and one repository "
    "per shard group, served by `recgen serve --distributed DIR` or `recgen k8s`.",
)
@click.option(
    "--remote-deadline-s",
    type=click.FloatRange(0.01, 600),
    default=RemoteCallPolicy.deadline_s,
    show_default=True,
    help="distributed: deadline of one front -> shard group call, retries included.",
)
@click.option(
    "--remote-attempts",
    type=click.IntRange(1, 16),
    default=RemoteCallPolicy.max_attempts,
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
@options.allow_non_finite
@options.no_access_counts
@click.pass_context
@options.reports_errors
def build(
    context: click.Context,
    model_path: Path,
    max_ids: dict[str, int],
    user_features: tuple[str, ...],
    repository: Path,
    ensembles: Path,
    name: str,
    backend: Backend,
    target: Target,
    shards_per_table: int,
    device: Device,
    instances: int,
    max_batch_size: int,
    latency_slo_ms: float,
    shedding: Shedding | None,
    group_by: GroupBy | None,
    lookup_step: LookupStep | None,
    lookup_engine: LookupEngine | None,
    row_dtypes: tuple[str, ...],
    force: bool,
    layout: builds.Layout,
    remote_deadline_s: float,
    remote_attempts: int,
    plan_path: Path | None,
    allow_non_finite: bool,
    no_access_counts: bool,
) -> None:
    """Generate the sharded repository and the ensemble for a model (or the distributed layout)."""
    distributed = layout == "distributed"
    model = load_model(model_path, max_ids=max_ids, user_features=user_features)
    uniform = settings.UniformOptions(name, shards_per_table, device, instances, max_batch_size,
                                      group_by or "placement", latency_slo_ms)  # fmt: skip
    deployment = settings.DeploymentOptions(not allow_non_finite, not no_access_counts, shedding, lookup_step,
                                            lookup_engine, backend, target)  # fmt: skip
    given = options.given(context, *settings.ALL_OPTIONS)
    resolved = settings.resolve_plan(model, plan_path, uniform, deployment, given, distributed=distributed,
                                     row_dtypes=row_dtypes)  # fmt: skip
    the_plan = resolved.plan
    click.echo(str(the_plan))
    for note in resolved.notes:
        click.echo(f"note: {note}")
    inputs = [model_path] if plan_path is None else [model_path, plan_path]
    if not distributed:
        built = builds.build(model, the_plan, repository, ensembles, backend=backend, target=target, force=force,
                             inputs=inputs)  # fmt: skip
        click.echo(str(built))
        return
    if options.given(context, "ensembles"):
        raise UserInputError("--ensembles is for --layout single; the distributed front holds its ensemble")
    policy = RemoteCallPolicy(deadline_s=remote_deadline_s, max_attempts=remote_attempts)
    out = repository if options.given(context, "repository") else Path("distributed")
    result = build_distributed(model, the_plan, out, backend=backend, target=target, policy=policy,
                               group_by=group_by, force=force, inputs=inputs)  # fmt: skip
    click.echo(str(result))
    if plan_path is not None:
        _note_one_server_plan(plan_path, result)


def _note_one_server_plan(plan_path: Path, result: DistributedBuild) -> None:
    """Say so when the planner priced the plan as one tritonserver, which the distributed layout does not run."""
    figures = load_planner_figures(plan_path)
    pods = result.topology.front.replica_servers + sum(group.replica_servers for group in result.groups)
    if figures is not None and figures.planned_servers == 1 and pods > 1:
        click.echo(
            f"note: {plan_path} fits one server, where its memory is priced as one tritonserver (`recgen build` "
            f"without --layout); this layout runs {pods} tritonservers, each with the overhead of its own"
        )

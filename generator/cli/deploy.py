"""`recgen serve` (the embedded server, or a distributed build on loopback) and `recgen k8s` (manifests)."""

from __future__ import annotations

from pathlib import Path

import click

from generator.check import update as updates
from generator.cli import options
from generator.deploy import k8s as manifests_module
from generator.deploy import local, supervisor
from generator.deploy import server as servers
from generator.errors import UserInputError
from generator.model.loading import load_model
from generator.planning.plan import Device, GroupBy, LookupEngine, LookupStep, Shedding
from generator.repository import build as builds
from generator.repository import settings
from generator.repository.configs import Backend, Target


@click.command()
@options.directory("repo", "model_repository", "Repository of leaf models.", dest="repository")
@options.directory("ensembles", "ensembles", "Repository of the ensembles.")
@click.option("--http-port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="0 = any free port.")
@click.option("--grpc-port", type=click.IntRange(0, 65535), default=8001, show_default=True, help="0 = any free port.")
@click.option(
    "--metrics-port", type=click.IntRange(0, 65535), default=8002, show_default=True, help="0 = any free port."
)
@click.option("--address", default="127.0.0.1", show_default=True, help="Address to bind (0.0.0.0 for all).")
@click.option(
    "--timeout-s",
    type=click.FloatRange(1),
    default=servers.DEFAULT_READY_TIMEOUT_S,
    show_default=True,
    help="Seconds every model gets to become ready.",
)
@click.option(
    "--log-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Keep the server log here (default: a temporary file).",
)
@options.directory(
    "distributed",
    None,
    "Serve a `--layout distributed` build: one server per shard-group replica plus the front, on free "
    "loopback ports (logs in DIR/logs).",
    dest="distributed_dir",
)
@click.pass_context
@options.reports_errors
def serve(
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
    if distributed_dir is None:
        config = servers.ServerConfig((repository, ensembles), http_port, grpc_port, metrics_port, address)
        supervisor.serve_until_stopped(config, timeout_s=timeout_s, log_path=log_file, echo=click.echo)
        return
    fixed = options.given(context, "repository", "ensembles", "http_port", "grpc_port", "metrics_port", "log_file")
    if fixed:
        raise UserInputError(f"--distributed picks its own ports and logs; drop {options.flag(fixed[0])}")
    local.serve_distributed(distributed_dir, address=address, timeout_s=timeout_s, echo=click.echo)


@click.command()
@click.option(
    "--plan",
    "plan_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="plan.json (default: the topology of the distributed build in --layout-dir).",
)
@click.option(
    "--image",
    default=manifests_module.DEFAULT_IMAGE,
    show_default=True,
    help="Triton image the pods run (or build FROM).",
)
@click.option(
    "--source",
    type=click.Choice(manifests_module.SOURCES),
    default="image",
    show_default=True,
    help="How repositories reach the pods: baked into images (Dockerfiles written), a read-only PVC holding the "
    "distributed build, or object storage.",
)
@click.option(
    "--registry",
    default=manifests_module.K8sOptions.registry,
    show_default=True,
    help="Where built images are pushed.",
)
@click.option("--tag", default=manifests_module.K8sOptions.tag, show_default=True, help="Tag of the built images.")
@click.option("--pvc", default=None, help="--source pvc: the claim holding the distributed build.")
@click.option("--repository-url", default=None, help="--source url: s3://, gs:// or as:// prefix of the build.")
@click.option("--namespace", default=None, help="Namespace set by the kustomization.")
@options.group_by
@click.option("--max-replica-factor", type=click.FloatRange(1, 1000), default=4.0, show_default=True)
@click.option(
    "--queue-target-us",
    type=click.IntRange(1, 10_000_000),
    default=1000,
    show_default=True,
    help="HPA target: Triton queue time per request, averaged over the pods.",
)
@click.option(
    "--front-replicas",
    type=click.IntRange(1, 1000),
    default=None,
    help="Replicas of the front [default: the topology's, 1].",
)
@options.directory(
    "layout-dir", None, "The `recgen build --layout distributed` output: its groups must be the manifests' groups."
)
@options.directory(
    "previous-layout",
    None,
    "The distributed build that runs now: rollout.sh and the summary then state the memory of the overlap.",
)
@options.out_dir(help_text="Where to write the manifests.")
@options.force
@options.reports_errors
def k8s(
    plan_path: Path | None,
    image: str,
    source: manifests_module.Source,
    registry: str,
    tag: str,
    pvc: str | None,
    repository_url: str | None,
    namespace: str | None,
    group_by: GroupBy | None,
    max_replica_factor: float,
    queue_target_us: int,
    front_replicas: int | None,
    layout_dir: Path | None,
    previous_layout: Path | None,
    out_path: Path,
    force: bool,
) -> None:
    """Write Kubernetes manifests: per shard group a Deployment, headless Service and HPA, plus the front."""
    topology = manifests_module.topology_for(plan_path, layout_dir, group_by)
    cluster = manifests_module.K8sOptions(
        image=image,
        registry=registry,
        tag=tag,
        source=source,
        pvc=pvc,
        repository_url=repository_url,
        namespace=namespace,
        max_replica_factor=max_replica_factor,
        queue_target_us=queue_target_us,
        front_replicas=front_replicas,
    )
    previous = None if previous_layout is None else manifests_module.Topology.load(previous_layout)
    rendered = manifests_module.render_manifests(topology, cluster, previous)
    inputs = [path for path in (plan_path, layout_dir, previous_layout) if path is not None]
    out = rendered.write(out_path, force=force, inputs=inputs)
    click.echo(str(rendered))
    click.echo(
        f"wrote {out}: `kubectl apply -k {out}` (a first deployment), or "
        f"{out}/{manifests_module.ROLLOUT_SCRIPT} (a new generation beside the running one)"
    )
    click.echo(f"build the images first: {out}/{manifests_module.IMAGES_DIR}/build.sh <distributed build dir>")


@click.command()
@options.model_file()
@options.max_ids
@options.user_features
@click.option(
    "--http-port",
    type=click.IntRange(1, 65535),
    default=8000,
    show_default=True,
    help="The HTTP port of the `recgen serve` to update (on this machine; the front's for --distributed).",
)
@click.option(
    "--plan",
    "plan_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="The new plan.json (from `recgen plan`) [default: a uniform plan from the options below].",
)
@options.ensemble_name
@options.backend
@options.target
@options.shards_per_table
@options.device
@options.instances
@options.max_batch_size
@options.latency_slo_ms
@options.shedding
@options.allow_non_finite
@options.no_access_counts
@options.group_by
@options.lookup_step
@options.lookup_engine
@options.row_dtype
@click.option(
    "--no-verify",
    is_flag=True,
    help="Switch without first checking the new ensembles against the model (not recommended).",
)
@click.pass_context
@options.reports_errors
def update(
    context: click.Context,
    model_path: Path,
    max_ids: dict[str, int],
    user_features: tuple[str, ...],
    http_port: int,
    plan_path: Path | None,
    name: str,
    backend: Backend,
    target: Target,
    shards_per_table: int,
    device: Device,
    instances: int,
    max_batch_size: int,
    latency_slo_ms: float,
    shedding: Shedding | None,
    allow_non_finite: bool,
    no_access_counts: bool,
    group_by: GroupBy | None,
    lookup_step: LookupStep | None,
    lookup_engine: LookupEngine | None,
    row_dtypes: tuple[str, ...],
    no_verify: bool,
) -> None:
    """Switch what `recgen serve` runs to a new plan or new weights, under load, dropping no request.

    The new generation of models is written beside the running one, loaded, checked against the model, and the
    ensembles switch to it in one step; the old generation finishes its requests and is removed. If anything
    fails, the old generation keeps serving and the error says why. Every setting the command does not name is
    the running deployment's.
    """
    model = load_model(model_path, max_ids=max_ids, user_features=user_features)
    uniform = settings.UniformOptions(name, shards_per_table, device, instances, max_batch_size,
                                      group_by or "placement", latency_slo_ms)  # fmt: skip
    deployment = settings.DeploymentOptions(not allow_non_finite, not no_access_counts, shedding, lookup_step,
                                            lookup_engine, backend, target)  # fmt: skip
    given = options.given(context, *settings.ALL_OPTIONS)
    settings.check_plan_flags(plan_path, given, distributed=False)  # before asking serve what it runs
    resolved = settings.resolve_plan(model, plan_path, uniform, deployment, given, distributed=False,
                                     row_dtypes=row_dtypes, running=updates.running_settings(http_port))  # fmt: skip
    for note in resolved.notes:
        click.echo(f"note: {note}")
    leaves = builds.check_options(resolved.backend, resolved.target, resolved.plan.lookup_engine)
    report = updates.update(
        model, resolved.plan, http_port=http_port, leaves=leaves, verify_first=not no_verify, echo=click.echo
    )
    click.echo(str(report))

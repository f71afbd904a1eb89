"""Kubernetes manifests for a distributed topology: every shard group a Deployment scaled on its own.

Per shard group: a Deployment (replicas from the topology; memory from its rows plus the server and stub
overheads; CPU or GPU from the placement; startup/readiness/liveness probes on Triton's health endpoints;
`/dev/shm` as a memory-backed emptyDir for the Python backend; model control off and admin APIs behind a key), a
headless Service (the front's remote steps resolve it to every replica and spread calls over them) and an
`autoscaling/v2` HorizontalPodAutoscaler whose floor is the planned replica count and whose signal is Triton's
queue time per request (`avg_time_queue_us`, exposed by the prometheus-adapter rule written beside the
manifests). The front (router, dense model, remote steps, ensemble) gets the same plus a ClusterIP Service.

How the repositories reach the pods (`source`): `image` (default) bakes each repository into an image built
FROM the Triton image (Dockerfiles and a build script are written); `pvc` mounts a read-only volume holding the
distributed build; `url` points Triton at object storage (`s3://`, `gs://`, `as://`). The front always runs a
built image: its remote steps need `tritonclient[grpc]`, which the Triton image does not ship.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from generator import naming, native
from generator.deploy import k8s_images, k8s_objects, k8s_security
from generator.deploy.k8s_objects import (
    ADAPTER_VALUES_FILE,
    ADMIN_KEY_FILE,
    ADMIN_SECRET,
    DEFAULT_IMAGE,
    IMAGES_DIR,
    KUSTOMIZATION_FILE,
    QUEUE_METRIC,
    SOURCES,
    Component,
    K8sOptions,
    Source,
)
from generator.deploy.k8s_rollout import ROLLOUT_SCRIPT, RolloutMemory, rollout_memory, rollout_script
from generator.deploy.topology import Topology
from generator.errors import UserInputError
from generator.planning.plan import GroupBy
from generator.planning.plan_file import load_plan
from generator.repository import staging

#: The stub probe's ConfigMap, shared by every component.
PROBE_MANIFEST = "stub-probe.yaml"

__all__ = [
    "ADAPTER_VALUES_FILE",
    "ADMIN_KEY_FILE",
    "DEFAULT_IMAGE",
    "IMAGES_DIR",
    "KUSTOMIZATION_FILE",
    "QUEUE_METRIC",
    "ROLLOUT_SCRIPT",
    "SOURCES",
    "Component",
    "K8sOptions",
    "Manifests",
    "Source",
    "Topology",
    "components",
    "render_manifests",
    "topology_for",
]


@dataclass(frozen=True)
class Manifests:
    """Rendered files (name -> text) and the objects in them, ready to write."""

    topology: Topology
    options: K8sOptions
    components: tuple[Component, ...]
    files: dict[str, str]
    objects: tuple[dict[str, Any], ...]
    rollout: RolloutMemory

    def __str__(self) -> str:
        lines = [f"Kubernetes manifests for {self.topology.model_name!r} ({len(self.objects)} objects):"]
        lines.append(f"  {'component':<40} {'role':<12} {'replicas':>8} {'max':>5} {'device':>6} {'resident':>10}")
        for c in self.components:
            lines.append(
                f"  {c.name:<40} {c.role:<12} {c.replicas:>8} {k8s_objects.max_replicas(self.options, c):>5} "
                f"{c.device:>6} {k8s_objects.mebibytes(c.memory_bytes):>10}"
            )
        lines.append(f"repositories from: {self.options.source}; autoscaling on {QUEUE_METRIC} ")
        lines.append(f"  (target {self.options.queue_target_us} us; install the rule in {ADAPTER_VALUES_FILE})")
        lines.append(str(self.rollout))
        return "\n".join(lines)

    def write(self, out: Path, *, force: bool = False, inputs: Sequence[Path] = ()) -> Path:
        """Write every file into `out` through a staged directory (all or nothing), plus a fresh admin key.

        `inputs` (the plan or layout directory they were made from) may not lie inside `out`.
        """
        out = Path(out)
        staging.check_output(out, "--out", force, inputs)
        with staging.staged([out]) as (staged,):
            for name, text in self.files.items():
                path = staged / name
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text)
                if name.endswith(".sh"):
                    path.chmod(0o755)
            key = staged / ADMIN_KEY_FILE
            key.touch(mode=0o600)
            key.write_text(secrets.token_hex(16) + "\n")
            # Keeps the key out of a commit of the manifests (kustomize reads it from here).
            (staged / ".gitignore").write_text(f"{ADMIN_KEY_FILE}\n")
        return out


def components(topology: Topology, options: K8sOptions) -> list[Component]:
    """The front and every shard group, with replicas and memory from the topology and the capacity model."""
    front = topology.front
    result = [
        Component(
            front.service,
            "front",
            front.repository,
            options.front_replicas or front.replica_servers,
            front.device,
            front.memory_bytes(options.capacity),
            front.models,
            front.counter_bytes,  # already in its memory (router bytes): only /dev/shm's size limit grows
            front.router_instances + front.dense_instances,
            front.cores_per_server,
        )
    ]
    for group in topology.groups:
        result.append(
            Component(
                group.service,
                "shard-group",
                group.repository,
                group.replica_servers,
                group.device,
                group.memory_bytes(options.capacity),
                (group.model,),
                working_instances=group.instances_per_server,
                busy_cores=group.cores_per_server,
            )
        )
    return result


class _PlainDumper(yaml.SafeDumper):
    """No `&id001` anchors for repeated label maps: people read these files."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _yaml(documents: list[dict[str, Any]]) -> str:
    return yaml.dump_all(documents, Dumper=_PlainDumper, sort_keys=False, default_flow_style=False)


def render_manifests(
    topology: Topology, options: K8sOptions | None = None, previous: Topology | None = None
) -> Manifests:
    """Every manifest, the adapter rule, the Dockerfiles, the kustomization and rollout.sh for a topology.

    `previous`: the topology that runs now, for the memory the rollout holds while both generations are up.
    """
    options = options or K8sOptions()
    parts = components(topology, options)
    names = [c.name for c in parts]
    clashes = sorted({name for name in names if names.count(name) > 1})
    if clashes:
        raise UserInputError(
            f"Kubernetes names {clashes} would serve more than one model (names are lowercased, '_' becomes '-'); "
            "rename the model or its tables"
        )
    groups = [c for c in parts if c.role == "shard-group"]
    files: dict[str, str] = {}
    probe = k8s_security.probe_configmap()
    probe["metadata"]["labels"] = {k8s_objects.ROLLOUT_LABEL: k8s_objects.ROLLOUT_GROUPS}  # needed by the groups
    objects: list[dict[str, Any]] = [probe]
    files[PROBE_MANIFEST] = _yaml(objects)
    for component in parts:
        documents = [
            k8s_objects.deployment(topology, options, component, groups),
            k8s_objects.service(topology, component),
            k8s_objects.autoscaler(topology, options, component),
            k8s_objects.network_policy(topology, component, parts[0]),
            k8s_objects.disruption_budget(topology, component),
        ]
        files[f"{component.name}.yaml"] = _yaml(documents)
        objects += documents
    built = [c for c in parts if options.source == "image" or c.role == "front"]
    for component in built:
        files[f"{IMAGES_DIR}/{component.name}.Dockerfile"] = k8s_images.dockerfile(options, component)
    files[f"{IMAGES_DIR}/build.sh"] = k8s_images.build_script(options, built)
    for name, text in native.source_files().items():  # what every image compiles its native backend from
        files[f"{IMAGES_DIR}/{k8s_images.NATIVE_SOURCES_DIR}/{name}"] = text.decode()
    files[ADAPTER_VALUES_FILE] = yaml.safe_dump(k8s_objects.adapter_values(), sort_keys=False)
    kustomization: dict[str, Any] = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [PROBE_MANIFEST, *(f"{c.name}.yaml" for c in parts)],
        "secretGenerator": [
            {
                "name": ADMIN_SECRET,
                "files": [ADMIN_KEY_FILE],
                "options": {"labels": {k8s_objects.ROLLOUT_LABEL: k8s_objects.ROLLOUT_GROUPS}},
            }
        ],
    }
    if options.namespace:
        kustomization["namespace"] = options.namespace
    files[KUSTOMIZATION_FILE] = yaml.safe_dump(kustomization, sort_keys=False)
    memory = rollout_memory(topology, options, parts, None if previous is None else components(previous, options))
    files[ROLLOUT_SCRIPT] = rollout_script(topology, options, parts, memory)
    return Manifests(topology, options, tuple(parts), files, tuple(objects), memory)


def _check_native_version(layout_dir: Path, built: Topology) -> None:
    """The images compile this recgen's native backend: a build whose native models name another is refused."""
    manifest = Path(layout_dir) / built.front.repository / naming.MANIFEST_FILE
    wanted = json.loads(manifest.read_text()).get("native_backend_version") if manifest.is_file() else None
    if wanted is not None and wanted != native.version():
        raise UserInputError(
            f"--layout-dir {layout_dir} was built for recgen's native backend {wanted}, but this recgen's images "
            f"would compile {native.version()}: build the layout again with this recgen, or deploy it with the "
            "recgen that built it"
        )


def topology_for(plan_path: Path | None, layout_dir: Path | None, group_by: GroupBy | None) -> Topology:
    """The topology to deploy: a distributed build's (`layout_dir`), or a plan's grouped by `group_by`.

    With a build, `group_by` must be the build's; with a build and a plan, the plan must give the build's groups.
    """
    if layout_dir is None:
        if plan_path is None:
            raise UserInputError("give --plan plan.json, or --layout-dir DIR of a `recgen build --layout distributed`")
        return Topology.from_plan(load_plan(plan_path), group_by=group_by or "shard")
    built = Topology.load(layout_dir)
    _check_native_version(layout_dir, built)
    if group_by is not None and group_by != built.group_by:
        raise UserInputError(
            f"--layout-dir {layout_dir} was built with --group-by {built.group_by}, not {group_by}; "
            "build and k8s must use the same plan and --group-by"
        )
    if plan_path is None:
        return built
    planned = Topology.from_plan(load_plan(plan_path), group_by=built.group_by, policy=built.remote_call)
    built.check_same_groups(planned, f"--plan {plan_path}")
    return planned

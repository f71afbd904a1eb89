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

import math
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from generator import naming, triton_runtime
from generator.deploy.topology import Topology
from generator.errors import UserInputError
from generator.planning.capacity import Capacity
from generator.planning.plan import Device, GroupBy
from generator.planning.plan_file import load_plan
from generator.repository import staging
from generator.repository.build import check_output

Source = Literal["image", "pvc", "url"]
SOURCES: tuple[Source, ...] = ("image", "pvc", "url")
#: The Triton image the generated repositories are written for (Triton 2.51).
DEFAULT_IMAGE = triton_runtime.NGC_IMAGE
#: Where repositories live inside a pod.
IMAGE_REPOSITORY_PATH = "/models"
PVC_MOUNT_PATH = "/repositories"
#: Header that unlocks the restricted admin APIs; its value comes from the generated Secret.
ADMIN_HEADER = "recgen-admin-key"
ADMIN_KEY_ENV = "RECGEN_ADMIN_KEY"
ADMIN_SECRET = "recgen-triton-admin"
ADMIN_KEY_FILE = "admin.key"
#: Admin APIs nobody needs at serving time (model control is off anyway).
RESTRICTED_APIS = "model-repository,shared-memory,trace,logging"
#: The custom metric the prometheus-adapter rule exposes and the HPAs read.
QUEUE_METRIC = "avg_time_queue_us"
TRITON_USER_ID = 1000  # `triton-server` in the NGC image
KUSTOMIZATION_FILE = "kustomization.yaml"
ADAPTER_VALUES_FILE = "prometheus-adapter-values.yaml"
IMAGES_DIR = "images"


@dataclass(frozen=True)
class K8sOptions:
    """Everything about the cluster that the topology does not say."""

    image: str = DEFAULT_IMAGE
    registry: str = "registry.example.com/recgen"
    tag: str = "v1"
    source: Source = "image"
    pvc: str | None = None
    repository_url: str | None = None
    namespace: str | None = None
    max_replica_factor: float = 4.0
    queue_target_us: int = 1000
    shm_mb: int = 256
    memory_headroom: float = 1.25
    #: Replicas of the front (None: the topology's).
    front_replicas: int | None = None
    capacity: Capacity = field(default_factory=Capacity)

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise UserInputError(f"`source` must be one of {', '.join(SOURCES)}, got {self.source!r}")
        if self.source == "pvc" and not self.pvc:
            raise UserInputError("`--source pvc` needs `--pvc NAME` (a ReadOnlyMany claim holding the build)")
        if self.source == "url" and not (self.repository_url or "").startswith(("s3://", "gs://", "as://")):
            raise UserInputError(
                f"`--source url` needs `--repository-url` starting with s3://, gs:// or as://, "
                f"got {self.repository_url!r}"
            )
        if not 1 <= self.max_replica_factor <= 1000:
            raise UserInputError(f"`max_replica_factor` must be in [1, 1000], got {self.max_replica_factor}")
        if not 1 <= self.queue_target_us <= 10_000_000:
            raise UserInputError(f"`queue_target_us` must be in [1, 10000000], got {self.queue_target_us}")
        if not 16 <= self.shm_mb <= 65536:
            raise UserInputError(f"`shm_mb` must be in [16, 65536], got {self.shm_mb}")
        if not 1 <= self.memory_headroom <= 10:
            raise UserInputError(f"`memory_headroom` must be in [1, 10], got {self.memory_headroom}")
        if self.front_replicas is not None and not 1 <= self.front_replicas <= 1000:
            raise UserInputError(f"`front_replicas` must be in [1, 1000], got {self.front_replicas}")


ComponentRole = Literal["front", "shard-group"]


@dataclass(frozen=True)
class Component:
    """One scaled service: the front or a shard group."""

    name: str  # Deployment, Service and HPA name
    role: ComponentRole
    repository: str  # relative to the distributed build
    replicas: int
    device: Device
    memory_bytes: int  # expected resident bytes of one replica: rows, rank maps, front cache, server and stubs
    models: tuple[str, ...]


@dataclass(frozen=True)
class Manifests:
    """Rendered files (name -> text) and the objects in them, ready to write."""

    topology: Topology
    options: K8sOptions
    components: tuple[Component, ...]
    files: dict[str, str]
    objects: tuple[dict[str, Any], ...]

    def __str__(self) -> str:
        lines = [f"Kubernetes manifests for {self.topology.model_name!r} ({len(self.objects)} objects):"]
        lines.append(f"  {'component':<40} {'role':<12} {'replicas':>8} {'max':>5} {'device':>6} {'resident':>10}")
        for c in self.components:
            lines.append(
                f"  {c.name:<40} {c.role:<12} {c.replicas:>8} {max_replicas(self.options, c):>5} {c.device:>6} "
                f"{_mebibytes(c.memory_bytes):>10}"
            )
        lines.append(f"repositories from: {self.options.source}; autoscaling on {QUEUE_METRIC} ")
        lines.append(f"  (target {self.options.queue_target_us} us; install the rule in {ADAPTER_VALUES_FILE})")
        return "\n".join(lines)

    def write(self, out: Path, *, force: bool = False) -> Path:
        """Write every file into `out` through a staged directory (all or nothing), plus a fresh admin key."""
        out = Path(out)
        check_output(out, "--out", force)
        with staging.staged([out]) as (staged,):
            for name, text in self.files.items():
                path = staged / name
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text)
                if name.endswith(".sh"):
                    path.chmod(0o755)
            (staged / ADMIN_KEY_FILE).write_text(secrets.token_hex(16) + "\n")
            (staged / ADMIN_KEY_FILE).chmod(0o600)
        return out


def max_replicas(options: K8sOptions, component: Component) -> int:
    """Ceiling of a component's HPA."""
    return max(component.replicas, math.ceil(component.replicas * options.max_replica_factor))


def _mebibytes(num_bytes: int) -> str:
    return f"{math.ceil(num_bytes / 2**20)}Mi"


def _labels(topology: Topology, component: str, role: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": component,
        "app.kubernetes.io/part-of": naming.service_name(topology.model_name),
        "app.kubernetes.io/component": role,
        "app.kubernetes.io/managed-by": "recgen",
    }


def _selector(topology: Topology, component: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": component, "app.kubernetes.io/part-of": naming.service_name(topology.model_name)}


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
            )
        )
    return result


def _image(options: K8sOptions, component: Component) -> str:
    if options.source == "image" or component.role == "front":
        return f"{options.registry}/{component.name}:{options.tag}"
    return options.image


def _repository_arg(options: K8sOptions, component: Component) -> str:
    if options.source == "image":
        return IMAGE_REPOSITORY_PATH
    if options.source == "pvc":
        return f"{PVC_MOUNT_PATH}/{component.repository}"
    prefix = (options.repository_url or "").rstrip("/")  # K8sOptions checked it is an s3://, gs:// or as:// URL
    return f"{prefix}/{component.repository}"


def _args(options: K8sOptions, component: Component) -> list[str]:
    """Triton's flags: the runtime's own, plus no model control and the admin APIs behind the generated key."""
    restricted = f"{RESTRICTED_APIS}:{ADMIN_HEADER}=$({ADMIN_KEY_ENV})"
    return [
        "tritonserver",
        f"--model-repository={_repository_arg(options, component)}",
        "--model-control-mode=none",
        *triton_runtime.server_flags(gpu=component.device == "gpu"),
        f"--http-restricted-api={restricted}",
        f"--grpc-restricted-protocol={restricted}",
    ]


def _env(component: Component, groups: list[Component]) -> list[dict[str, Any]]:
    """The runtime's stub environment, the admin key, and for the front every group's headless Service."""
    env: list[dict[str, Any]] = [{"name": name, "value": value} for name, value in triton_runtime.SERVING_ENV.items()]
    env.append({"name": ADMIN_KEY_ENV, "valueFrom": {"secretKeyRef": {"name": ADMIN_SECRET, "key": ADMIN_KEY_FILE}}})
    if component.role == "front":
        for group in groups:
            env.append(
                {
                    "name": naming.endpoints_env_var(group.models[0]),
                    "value": f"{group.name}:{triton_runtime.GRPC_PORT}",  # the headless Service: every replica
                }
            )
    return env


def _resources(options: K8sOptions, component: Component) -> dict[str, Any]:
    # A memory-backed emptyDir counts against the container's memory: /dev/shm is part of the request.
    request_bytes = component.memory_bytes + (options.shm_mb << 20)
    limit_bytes = math.ceil(request_bytes * options.memory_headroom)
    resources: dict[str, Any] = {
        "requests": {"cpu": "1", "memory": _mebibytes(request_bytes)},
        "limits": {"memory": _mebibytes(limit_bytes)},
    }
    if component.device == "gpu":
        resources["limits"]["nvidia.com/gpu"] = 1
    return resources


def _container(options: K8sOptions, component: Component, groups: list[Component]) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": "tritonserver",
        "image": _image(options, component),
        "args": _args(options, component),
        "env": _env(component, groups),
        "ports": [
            {"name": "http", "containerPort": triton_runtime.HTTP_PORT},
            {"name": "grpc", "containerPort": triton_runtime.GRPC_PORT},
            {"name": "metrics", "containerPort": triton_runtime.METRICS_PORT},
        ],
        "resources": _resources(options, component),
        # Big shards take a while to load: up to 10 minutes before liveness starts counting.
        "startupProbe": _probe("/v2/health/ready", period_s=10, failures=60),
        "readinessProbe": _probe("/v2/health/ready", period_s=5, failures=3),
        "livenessProbe": _probe("/v2/health/live", period_s=10, failures=3),
        "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}],
        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
    }
    if options.source == "url":
        container["envFrom"] = [{"secretRef": {"name": "recgen-repository-credentials", "optional": True}}]
    if options.source == "pvc":
        container["volumeMounts"].append({"name": "repositories", "mountPath": PVC_MOUNT_PATH, "readOnly": True})
    return container


def _probe(path: str, *, period_s: int, failures: int) -> dict[str, Any]:
    return {"httpGet": {"path": path, "port": "http"}, "periodSeconds": period_s, "failureThreshold": failures}


def _deployment(
    topology: Topology, options: K8sOptions, component: Component, groups: list[Component]
) -> dict[str, Any]:
    volumes: list[dict[str, Any]] = [
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": f"{options.shm_mb}Mi"}}
    ]
    if options.source == "pvc":
        volumes.append({"name": "repositories", "persistentVolumeClaim": {"claimName": options.pvc, "readOnly": True}})
    labels = _labels(topology, component.name, component.role)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": component.name, "labels": labels},
        "spec": {
            "replicas": component.replicas,
            "selector": {"matchLabels": _selector(topology, component.name)},
            "template": {
                "metadata": {
                    "labels": labels,
                    "annotations": {
                        "prometheus.io/scrape": "true",
                        "prometheus.io/port": str(triton_runtime.METRICS_PORT),
                        "prometheus.io/path": "/metrics",
                    },
                },
                "spec": {
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": TRITON_USER_ID,
                        "runAsGroup": TRITON_USER_ID,
                        "fsGroup": TRITON_USER_ID,
                    },
                    "terminationGracePeriodSeconds": 30,
                    "containers": [_container(options, component, groups)],
                    "volumes": volumes,
                },
            },
        },
    }


def _service(topology: Topology, component: Component) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "selector": _selector(topology, component.name),
        "ports": [
            {"name": name, "port": port, "targetPort": name}
            for name, port in (
                ("http", triton_runtime.HTTP_PORT),
                ("grpc", triton_runtime.GRPC_PORT),
                ("metrics", triton_runtime.METRICS_PORT),
            )
        ],
    }
    if component.role == "shard-group":
        # Headless: DNS returns every ready replica, and the front's remote step spreads its calls over them
        # (a ClusterIP would pin each long-lived gRPC connection to one pod).
        spec["clusterIP"] = "None"
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": component.name, "labels": _labels(topology, component.name, component.role)},
        "spec": spec,
    }


def _autoscaler(topology: Topology, options: K8sOptions, component: Component) -> dict[str, Any]:
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": component.name, "labels": _labels(topology, component.name, component.role)},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": component.name},
            "minReplicas": component.replicas,
            "maxReplicas": max_replicas(options, component),
            "metrics": [
                {
                    "type": "Pods",
                    "pods": {
                        "metric": {"name": QUEUE_METRIC},
                        "target": {"type": "AverageValue", "averageValue": str(options.queue_target_us)},
                    },
                }
            ],
            "behavior": {"scaleDown": {"stabilizationWindowSeconds": 300}},
        },
    }


def adapter_values() -> dict[str, Any]:
    """prometheus-adapter Helm values: Triton's queue time per request over 30 s, per pod, as QUEUE_METRIC."""
    return {
        "rules": {
            "default": False,
            "custom": [
                {
                    "seriesQuery": 'nv_inference_queue_duration_us{namespace!="",pod!=""}',
                    "resources": {"overrides": {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}},
                    "name": {"matches": "nv_inference_queue_duration_us", "as": QUEUE_METRIC},
                    "metricsQuery": (
                        "avg(delta(nv_inference_queue_duration_us{<<.LabelMatchers>>}[30s])"
                        " / (1 + delta(nv_inference_request_success{<<.LabelMatchers>>}[30s]))) by (<<.GroupBy>>)"
                    ),
                }
            ],
        }
    }


def _dockerfile(options: K8sOptions, component: Component) -> str:
    lines = [f"# {component.name}: built from the distributed build directory (docker build -f THIS BUILD_DIR)"]
    lines.append(f"FROM {options.image}")
    if component.role == "front":
        lines.append(
            "RUN pip install --no-cache-dir "
            f'"{triton_runtime.TRITONCLIENT_REQUIREMENT}" "{triton_runtime.NUMPY_REQUIREMENT}"'
        )
    if options.source == "image":
        lines.append(f"COPY --chown={TRITON_USER_ID}:{TRITON_USER_ID} {component.repository} {IMAGE_REPOSITORY_PATH}")
    return "\n".join(lines) + "\n"


def _build_script(options: K8sOptions, built: list[Component]) -> str:
    lines = [
        "#!/usr/bin/env bash",
        "# Build and push the images the manifests name. Usage: images/build.sh BUILD_DIR",
        "# (BUILD_DIR = the output of `recgen build --layout distributed`).",
        "set -euo pipefail",
        'build_dir="${1:?usage: $0 BUILD_DIR}"',
        'here="$(cd "$(dirname "$0")" && pwd)"',
    ]
    for component in built:
        image = _image(options, component)
        lines.append(f'docker build -f "$here/{component.name}.Dockerfile" -t {image} "$build_dir"')
        lines.append(f"docker push {image}")
    return "\n".join(lines) + "\n"


class _PlainDumper(yaml.SafeDumper):
    """No `&id001` anchors for repeated label maps: people read these files."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _yaml(documents: list[dict[str, Any]]) -> str:
    return yaml.dump_all(documents, Dumper=_PlainDumper, sort_keys=False, default_flow_style=False)


def render_manifests(topology: Topology, options: K8sOptions | None = None) -> Manifests:
    """Every manifest, the adapter rule, the Dockerfiles and the kustomization for a distributed topology."""
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
    objects: list[dict[str, Any]] = []
    for component in parts:
        documents = [
            _deployment(topology, options, component, groups),
            _service(topology, component),
            _autoscaler(topology, options, component),
        ]
        files[f"{component.name}.yaml"] = _yaml(documents)
        objects += documents
    built = [c for c in parts if options.source == "image" or c.role == "front"]
    for component in built:
        files[f"{IMAGES_DIR}/{component.name}.Dockerfile"] = _dockerfile(options, component)
    files[f"{IMAGES_DIR}/build.sh"] = _build_script(options, built)
    files[ADAPTER_VALUES_FILE] = yaml.safe_dump(adapter_values(), sort_keys=False)
    kustomization: dict[str, Any] = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [f"{c.name}.yaml" for c in parts],
        "secretGenerator": [{"name": ADMIN_SECRET, "files": [ADMIN_KEY_FILE]}],
    }
    if options.namespace:
        kustomization["namespace"] = options.namespace
    files[KUSTOMIZATION_FILE] = yaml.safe_dump(kustomization, sort_keys=False)
    return Manifests(topology, options, tuple(parts), files, tuple(objects))


def topology_for(plan_path: Path | None, layout_dir: Path | None, group_by: GroupBy | None) -> Topology:
    """The topology to deploy: a distributed build's (`layout_dir`), or a plan's grouped by `group_by`.

    With a build, `group_by` must be the build's; with a build and a plan, the plan must give the build's groups.
    """
    if layout_dir is None:
        if plan_path is None:
            raise UserInputError("give --plan plan.json, or --layout-dir DIR of a `recgen build --layout distributed`")
        return Topology.from_plan(load_plan(plan_path), group_by=group_by or "shard")
    built = Topology.load(layout_dir)
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

"""Kubernetes manifests for a plan's distributed layout: every shard group a Deployment scaled on its own.

Per shard group: a Deployment (replicas from the plan; memory from the planned bytes plus the server and stub
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
import os
import secrets
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import yaml

from generator import naming, render
from generator.capacity import Capacity
from generator.errors import OutputExistsError, UserInputError
from generator.export import remove_tree
from generator.plan import GroupBy, Plan, ShardGroup
from generator.serve import SERVING_ENV

Source = Literal["image", "pvc", "url"]
SOURCES: tuple[Source, ...] = ("image", "pvc", "url")
#: The Triton image the generated repositories are written for (Triton 2.51).
DEFAULT_IMAGE = "nvcr.io/nvidia/tritonserver:24.10-py3"
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
TRITONCLIENT_REQUIREMENT = "tritonclient[grpc]==2.51.0"
TRITON_USER_ID = 1000  # `triton-server` in the NGC image
KUSTOMIZATION_FILE = "kustomization.yaml"
ADAPTER_VALUES_FILE = "prometheus-adapter-values.yaml"
IMAGES_DIR = "images"


@dataclass(frozen=True)
class K8sOptions:
    """Everything about the cluster that the plan does not say."""

    image: str = DEFAULT_IMAGE
    registry: str = "registry.example.com/recgen"
    tag: str = "v1"
    source: Source = "image"
    pvc: str | None = None
    repository_url: str | None = None
    namespace: str | None = None
    group_by: GroupBy = "shard"
    max_replica_factor: float = 4.0
    queue_target_us: int = 1000
    shm_mb: int = 256
    memory_headroom: float = 1.25
    front_replicas: int = 1
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
        if not 1 <= self.front_replicas <= 1000:
            raise UserInputError(f"`front_replicas` must be in [1, 1000], got {self.front_replicas}")


@dataclass(frozen=True)
class Component:
    """One scaled service: the front or a shard group."""

    name: str  # Deployment, Service and HPA name
    role: str  # "front" | "shard-group"
    repository: str  # relative to the distributed build
    replicas: int
    device: str
    memory_bytes: int  # expected resident bytes of one replica: rows, rank maps, server and stub overheads
    models: tuple[str, ...]


@dataclass(frozen=True)
class Manifests:
    """Rendered files (name -> text) and the objects in them, ready to write."""

    plan: Plan
    options: K8sOptions
    components: tuple[Component, ...]
    files: dict[str, str]
    objects: tuple[dict[str, Any], ...]

    def __str__(self) -> str:
        lines = [f"Kubernetes manifests for {self.plan.model_name!r} ({len(self.objects)} objects):"]
        lines.append(f"  {'component':<40} {'role':<12} {'replicas':>8} {'max':>5} {'device':>6} {'resident':>10}")
        for c in self.components:
            lines.append(
                f"  {c.name:<40} {c.role:<12} {c.replicas:>8} {self.max_replicas(c):>5} {c.device:>6} "
                f"{_mebibytes(c.memory_bytes):>10}"
            )
        lines.append(f"repositories from: {self.options.source}; autoscaling on {QUEUE_METRIC} ")
        lines.append(f"  (target {self.options.queue_target_us} us; install the rule in {ADAPTER_VALUES_FILE})")
        return "\n".join(lines)

    def max_replicas(self, component: Component) -> int:
        """Ceiling of the component's HPA."""
        return max(component.replicas, math.ceil(component.replicas * self.options.max_replica_factor))

    def write(self, out: Path, *, force: bool = False) -> Path:
        """Write every file into `out` through a temporary directory (all or nothing)."""
        out = Path(out)
        if out.exists() and not force:
            raise OutputExistsError(f"`--out` {out} already exists; pass --force to replace it")
        out.resolve().parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.recgen-", dir=out.resolve().parent))
        try:
            for name, text in self.files.items():
                path = staging / name
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text)
                if name.endswith(".sh"):
                    path.chmod(0o755)
            (staging / ADMIN_KEY_FILE).write_text(secrets.token_hex(16) + "\n")
            (staging / ADMIN_KEY_FILE).chmod(0o600)
            aside = None
            if out.exists():
                aside = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.resolve().parent))
                os.rename(out, aside / out.name)
            os.rename(staging, out)
            if aside is not None:
                remove_tree(aside)
        finally:
            remove_tree(staging)
        return out


def _mebibytes(num_bytes: int) -> str:
    return f"{math.ceil(num_bytes / 2**20)}Mi"


def _labels(plan: Plan, component: str, role: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": component,
        "app.kubernetes.io/part-of": naming.service_name(plan.model_name),
        "app.kubernetes.io/component": role,
        "app.kubernetes.io/managed-by": "recgen",
    }


def _selector(plan: Plan, component: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": component, "app.kubernetes.io/part-of": naming.service_name(plan.model_name)}


def _group_rows_bytes(plan: Plan, group: ShardGroup) -> int:
    dims = {table.spec.name: table.spec.dim for table in plan.tables}
    return sum(shard.num_rows * dims[shard.table] * 4 for shard in group.shards)


def components(plan: Plan, options: K8sOptions) -> list[Component]:
    """The front and every shard group, with replicas and memory requests from the plan and the capacity model."""
    capacity = options.capacity
    plan = replace(plan, group_by=options.group_by)
    result = []
    groups = plan.shard_groups()
    router_bytes = sum(4 * t.spec.num_rows for t in plan.tables if t.row_order is not None)
    front_instances = plan.router.instance_count + plan.dense.instance_count
    front_instances += sum(g.placement.instance_count for g in groups)  # one remote step instance per replica
    front_models = [naming.router_model(plan.model_name), naming.dense_model(plan.model_name)]
    front_models += [render.shard_group_model_name(plan, g) for g in groups]
    result.append(
        Component(
            naming.front_service_name(plan.model_name),
            "front",
            naming.FRONT_DIR,
            options.front_replicas,
            plan.dense.device,
            router_bytes + capacity.server_overhead_bytes + front_instances * capacity.replica_overhead_bytes,
            (naming.ensemble_model(plan.model_name), *front_models),
        )
    )
    for group in groups:
        model = render.shard_group_model_name(plan, group)
        result.append(
            Component(
                naming.service_name(model),
                "shard-group",
                f"{naming.GROUPS_DIR}/{model}",
                group.placement.instance_count,
                group.placement.device,
                _group_rows_bytes(plan, group) + capacity.server_overhead_bytes + capacity.replica_overhead_bytes,
                (model,),
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


def _container(plan: Plan, options: K8sOptions, component: Component, groups: list[Component]) -> dict[str, Any]:
    restricted = f"{RESTRICTED_APIS}:{ADMIN_HEADER}=$({ADMIN_KEY_ENV})"
    args = [
        "tritonserver",
        f"--model-repository={_repository_arg(options, component)}",
        "--model-control-mode=none",
        "--disable-auto-complete-config",
        "--strict-readiness=true",
        "--exit-on-error=true",
        f"--http-restricted-api={restricted}",
        f"--grpc-restricted-protocol={restricted}",
        f"--backend-config=python,shm-default-byte-size={4 << 20}",
    ]
    if component.device == "cpu":
        args.append("--pinned-memory-pool-byte-size=0")
    env: list[dict[str, Any]] = [{"name": name, "value": value} for name, value in SERVING_ENV.items()]
    env.append({"name": ADMIN_KEY_ENV, "valueFrom": {"secretKeyRef": {"name": ADMIN_SECRET, "key": ADMIN_KEY_FILE}}})
    if component.role == "front":
        for group in groups:
            env.append(
                {
                    "name": naming.endpoints_env_var(group.models[0]),
                    "value": f"{group.name}:{naming.GRPC_PORT}",  # the headless Service: every replica's address
                }
            )
    # A memory-backed emptyDir counts against the container's memory: /dev/shm is part of the request.
    request_bytes = component.memory_bytes + (options.shm_mb << 20)
    limit_bytes = math.ceil(request_bytes * options.memory_headroom)
    resources: dict[str, Any] = {
        "requests": {"cpu": "1", "memory": _mebibytes(request_bytes)},
        "limits": {"memory": _mebibytes(limit_bytes)},
    }
    if component.device == "gpu":
        resources["limits"]["nvidia.com/gpu"] = 1
    container: dict[str, Any] = {
        "name": "tritonserver",
        "image": _image(options, component),
        "args": args,
        "env": env,
        "ports": [
            {"name": "http", "containerPort": naming.HTTP_PORT},
            {"name": "grpc", "containerPort": naming.GRPC_PORT},
            {"name": "metrics", "containerPort": naming.METRICS_PORT},
        ],
        "resources": resources,
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


def _deployment(plan: Plan, options: K8sOptions, component: Component, groups: list[Component]) -> dict[str, Any]:
    volumes: list[dict[str, Any]] = [
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": f"{options.shm_mb}Mi"}}
    ]
    if options.source == "pvc":
        volumes.append({"name": "repositories", "persistentVolumeClaim": {"claimName": options.pvc, "readOnly": True}})
    labels = _labels(plan, component.name, component.role)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": component.name, "labels": labels},
        "spec": {
            "replicas": component.replicas,
            "selector": {"matchLabels": _selector(plan, component.name)},
            "template": {
                "metadata": {
                    "labels": labels,
                    "annotations": {
                        "prometheus.io/scrape": "true",
                        "prometheus.io/port": str(naming.METRICS_PORT),
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
                    "containers": [_container(plan, options, component, groups)],
                    "volumes": volumes,
                },
            },
        },
    }


def _service(plan: Plan, component: Component) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "selector": _selector(plan, component.name),
        "ports": [
            {"name": name, "port": port, "targetPort": name}
            for name, port in (("http", naming.HTTP_PORT), ("grpc", naming.GRPC_PORT), ("metrics", naming.METRICS_PORT))
        ],
    }
    if component.role == "shard-group":
        # Headless: DNS returns every ready replica, and the front's remote step spreads its calls over them
        # (a ClusterIP would pin each long-lived gRPC connection to one pod).
        spec["clusterIP"] = "None"
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": component.name, "labels": _labels(plan, component.name, component.role)},
        "spec": spec,
    }


def _autoscaler(plan: Plan, options: K8sOptions, component: Component, maximum: int) -> dict[str, Any]:
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": component.name, "labels": _labels(plan, component.name, component.role)},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": component.name},
            "minReplicas": component.replicas,
            "maxReplicas": maximum,
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
        lines.append(f'RUN pip install --no-cache-dir "{TRITONCLIENT_REQUIREMENT}" "numpy<2"')
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


def render_manifests(plan: Plan, options: K8sOptions | None = None) -> Manifests:
    """Every manifest, the adapter rule, the Dockerfiles and the kustomization for `plan`."""
    options = options or K8sOptions()
    parts = components(plan, options)
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
    manifests = Manifests(plan, options, tuple(parts), files, ())
    for component in parts:
        documents = [
            _deployment(plan, options, component, groups),
            _service(plan, component),
            _autoscaler(plan, options, component, manifests.max_replicas(component)),
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
    return Manifests(plan, options, tuple(parts), files, tuple(objects))

"""The Kubernetes objects of one component (the front or a shard group): Deployment, Service, HPA, image files.

Pure builders of plain dicts and text from a `Component` and the cluster options; `k8s` composes them for a whole
topology and writes them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

from generator import naming, triton_runtime
from generator.deploy import k8s_security
from generator.deploy.topology import Topology
from generator.errors import UserInputError
from generator.planning.capacity import Capacity
from generator.planning.plan import Device

Source = Literal["image", "pvc", "url"]
SOURCES: tuple[Source, ...] = ("image", "pvc", "url")
#: The Triton image the generated repositories are written for (Triton 2.51).
DEFAULT_IMAGE = triton_runtime.NGC_IMAGE
#: Where repositories live inside a pod.
IMAGE_REPOSITORY_PATH = "/models"
PVC_MOUNT_PATH = "/repositories"
#: Header that unlocks the restricted admin APIs; its value comes from the generated Secret.
ADMIN_HEADER = triton_runtime.ADMIN_HEADER
ADMIN_SECRET = "recgen-triton-admin"
ADMIN_KEY_FILE = "admin.key"
#: The custom metric the prometheus-adapter rule exposes and the HPAs read.
QUEUE_METRIC = "avg_time_queue_us"
TRITON_USER_ID = 1000  # `triton-server` in the NGC image
#: The preStop sleep plus Triton's own 30 s for its in-flight requests.
TERMINATION_GRACE_S = 40
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
    shm_extra_bytes: int = 0  # what else /dev/shm holds besides the Python backend's buffers (access counters)
    #: Instances that compute (routers, dense, a group's lookups), each planned to keep at most the capacity
    #: model's target utilization of a core busy; a remote step's instances wait on the network and count for none.
    working_instances: int = 1
    #: Cores one pod keeps busy at the planned load (None: a plan not made by the planner).
    busy_cores: float | None = None

    def shm_mib(self, options: K8sOptions) -> int:
        """The size limit of the memory-backed /dev/shm: the backend's buffers plus the access counters."""
        return options.shm_mb + math.ceil(self.shm_extra_bytes / 2**20)


def max_replicas(options: K8sOptions, component: Component) -> int:
    """Ceiling of a component's HPA."""
    return max(component.replicas, math.ceil(component.replicas * options.max_replica_factor))


def mebibytes(num_bytes: int) -> str:
    """A Kubernetes quantity, rounded up to whole MiB."""
    return f"{math.ceil(num_bytes / 2**20)}Mi"


#: Label of every object with the generation of models it serves (never in a selector: the front keeps its
#: Deployment across generations, and a selector cannot change).
GENERATION_LABEL = "recgen.io/generation"
#: Label that orders a rollout (`rollout.sh`): what `kubectl apply -l` takes first, and the front after it.
ROLLOUT_LABEL = "recgen.io/rollout-step"
ROLLOUT_GROUPS = "1-groups"
ROLLOUT_FRONT = "2-front"
#: Seconds a terminating pod keeps serving while its Service stops sending it requests.
PRE_STOP_SLEEP_S = 5


def rollout_step(role: str) -> str:
    """What a rollout applies first (shard groups and what they need) and last (the front)."""
    return ROLLOUT_FRONT if role == "front" else ROLLOUT_GROUPS


def _labels(topology: Topology, component: str, role: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": component,
        "app.kubernetes.io/part-of": naming.service_name(topology.model_name),
        "app.kubernetes.io/component": role,
        "app.kubernetes.io/managed-by": "recgen",
        GENERATION_LABEL: str(topology.generation),
        ROLLOUT_LABEL: rollout_step(role),
    }


def _selector(topology: Topology, component: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": component, "app.kubernetes.io/part-of": naming.service_name(topology.model_name)}


def image_name(options: K8sOptions, component: Component) -> str:
    """The image a component's pods run: a built one (repository baked in, or the front's client), else Triton's."""
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


def _flags(options: K8sOptions, component: Component) -> list[str]:
    """Triton's flags: the runtime's own and no model control (the restricted APIs come from `k8s_security`)."""
    return [
        f"--model-repository={_repository_arg(options, component)}",
        "--model-control-mode=none",
        *triton_runtime.server_flags(gpu=component.device == "gpu"),
    ]


def _env(component: Component, groups: list[Component]) -> list[dict[str, Any]]:
    """The runtime's stub environment, and for the front every group's headless Service."""
    env: list[dict[str, Any]] = [{"name": name, "value": value} for name, value in triton_runtime.SERVING_ENV.items()]
    if component.role == "front":
        for group in groups:
            env.append(
                {
                    "name": naming.endpoints_env_var(group.models[0]),
                    "value": f"{group.name}:{triton_runtime.GRPC_PORT}",  # the headless Service: every replica
                }
            )
    return env


def request_bytes(options: K8sOptions, component: Component) -> int:
    """Memory one pod requests: what it holds, plus /dev/shm (a memory-backed emptyDir counts against it)."""
    return component.memory_bytes + (options.shm_mb << 20)


def cpu_request(options: K8sOptions, component: Component) -> str:
    """Cores one pod requests, in whole millicores (at least 10).

    What the plan expects it to keep busy; for a plan not made by the planner, its working instances at the target
    utilization.
    """
    cores = component.busy_cores
    if cores is None:
        cores = component.working_instances * options.capacity.target_utilization
    return f"{max(10, math.ceil(cores * 1000))}m"


def _resources(options: K8sOptions, component: Component) -> dict[str, Any]:
    pod_bytes = request_bytes(options, component)
    limit_bytes = math.ceil(pod_bytes * options.memory_headroom)
    resources: dict[str, Any] = {
        "requests": {"cpu": cpu_request(options, component), "memory": mebibytes(pod_bytes)},
        "limits": {"memory": mebibytes(limit_bytes)},
    }
    if component.device == "gpu":
        resources["limits"]["nvidia.com/gpu"] = 1
    return resources


def _container(options: K8sOptions, component: Component, groups: list[Component]) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": "tritonserver",
        "image": image_name(options, component),
        **k8s_security.start_command(_flags(options, component), ADMIN_KEY_FILE),
        "env": _env(component, groups),
        "ports": [
            {"name": "http", "containerPort": triton_runtime.HTTP_PORT},
            {"name": "grpc", "containerPort": triton_runtime.GRPC_PORT},
            {"name": "metrics", "containerPort": triton_runtime.METRICS_PORT},
        ],
        "resources": _resources(options, component),
        # The endpoints controller takes the pod out of its Service while it still serves; then Triton drains.
        "lifecycle": {"preStop": {"exec": {"command": ["sleep", str(PRE_STOP_SLEEP_S)]}}},
        # Big shards take a while to load: up to 10 minutes before liveness starts counting. Readiness and
        # liveness also catch a dead stub, which Triton's own health endpoints do not.
        "startupProbe": _probe("/v2/health/ready", period_s=10, failures=60),
        "readinessProbe": k8s_security.probe(component.models, period_s=5, failures=2),
        "livenessProbe": k8s_security.probe(component.models, period_s=10, failures=3),
        "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}, *k8s_security.volume_mounts()],
        "securityContext": k8s_security.container_security_context(),
    }
    if options.source == "url":
        container["envFrom"] = [{"secretRef": {"name": "recgen-repository-credentials", "optional": True}}]
    if options.source == "pvc":
        container["volumeMounts"].append({"name": "repositories", "mountPath": PVC_MOUNT_PATH, "readOnly": True})
    return container


def _probe(path: str, *, period_s: int, failures: int) -> dict[str, Any]:
    return {"httpGet": {"path": path, "port": "http"}, "periodSeconds": period_s, "failureThreshold": failures}


def deployment(
    topology: Topology, options: K8sOptions, component: Component, groups: list[Component]
) -> dict[str, Any]:
    """The component's Deployment: non-root Triton with probes, /dev/shm in memory, Prometheus annotations."""
    volumes: list[dict[str, Any]] = [
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": f"{component.shm_mib(options)}Mi"}},
        *k8s_security.volumes(ADMIN_SECRET, downloads_repository=options.source == "url"),
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
            # A new pod is ready before an old one goes: a new generation's front replaces the old one's in place.
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
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
                    "securityContext": k8s_security.pod_security_context(TRITON_USER_ID),
                    "automountServiceAccountToken": False,
                    "terminationGracePeriodSeconds": TERMINATION_GRACE_S,
                    "containers": [_container(options, component, groups)],
                    "volumes": volumes,
                },
            },
        },
    }


def network_policy(topology: Topology, component: Component, front: Component) -> dict[str, Any]:
    """The component's NetworkPolicy: a shard group's inference ports are open to the front's pods only."""
    front_selector = None if component.role == "front" else _selector(topology, front.name)
    labels = _labels(topology, component.name, component.role)
    return k8s_security.network_policy(component.name, labels, _selector(topology, component.name), front_selector)


def disruption_budget(topology: Topology, component: Component) -> dict[str, Any]:
    """The component's PodDisruptionBudget."""
    labels = _labels(topology, component.name, component.role)
    return k8s_security.disruption_budget(
        component.name, labels, _selector(topology, component.name), component.replicas
    )


def service(topology: Topology, component: Component) -> dict[str, Any]:
    """The component's Service: headless for a shard group (the front spreads calls over every pod)."""
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


def autoscaler(topology: Topology, options: K8sOptions, component: Component) -> dict[str, Any]:
    """The component's HPA: the planned replicas as its floor, Triton's queue time per request as its signal."""
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

"""What keeps the generated pods safe and serving: Pod Security "restricted", the stub probe, network and disruption.

- Every container meets the Pod Security Standard "restricted" profile: non-root, no privilege escalation, every
  capability dropped, seccomp RuntimeDefault, and a read-only root filesystem with memory-backed `/dev/shm` (the
  Python backend's shared memory) and a `/tmp` emptyDir as the only writable places. No service-account token is
  mounted: Triton never talks to the API server.
- The admin key is read from the mounted Secret when the container starts, so it is written neither in the pod spec
  nor in the manifests (Triton 2.51 takes it only as a flag, so the running process's arguments do hold it).
- Readiness and liveness run `stub_health.py` from a ConfigMap: Triton's own health endpoints still answer 200 when
  a Python-backend stub has died (see `stub_health`), the probe does not, so the pod leaves the Service and is
  restarted.
- A NetworkPolicy lets only the front's pods reach a shard group's inference ports (metrics stay open to the
  scraper); a PodDisruptionBudget keeps all but one of the planned replicas of every component, and never
  the last one, through voluntary disruptions.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from importlib import resources
from typing import Any

from generator import triton_runtime
from generator.deploy import stub_health

#: ConfigMap holding the stub probe, and where it is mounted.
PROBE_CONFIGMAP = "recgen-stub-probe"
PROBE_DIR = "/opt/recgen"
PROBE_FILE = "stub_health.py"
#: Where the admin-key Secret is mounted (read at start, never in the spec).
ADMIN_KEY_DIR = "/etc/recgen-admin"
#: Writable scratch space on a read-only root filesystem.
TMP_DIR = "/tmp"
TMP_SIZE_LIMIT = "256Mi"


def pod_security_context(user_id: int) -> dict[str, Any]:
    """Pod-level settings of the "restricted" profile."""
    return {
        "runAsNonRoot": True,
        "runAsUser": user_id,
        "runAsGroup": user_id,
        "fsGroup": user_id,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security_context() -> dict[str, Any]:
    """Container-level settings of the "restricted" profile, plus a read-only root filesystem."""
    return {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def start_command(flags: list[str], key_file: str) -> dict[str, list[str]]:
    """`command`/`args` that start tritonserver with the restricted APIs behind the key read from `key_file`."""
    key = f"$(cat {shlex.quote(f'{ADMIN_KEY_DIR}/{key_file}')})"
    quoted = [f'"{flag}"' for flag in triton_runtime.restricted_api_flags(key)]
    return {"command": ["/bin/sh", "-c"], "args": [" ".join(["exec tritonserver", *map(shlex.quote, flags), *quoted])]}


def probe(models: Sequence[str], *, period_s: int, failures: int) -> dict[str, Any]:
    """An exec probe: the server is ready, each of `models` is loaded and ready, and every stub is alive."""
    command = ["python3", f"{PROBE_DIR}/{PROBE_FILE}", "--port", str(triton_runtime.HTTP_PORT)]
    command += [argument for model in models for argument in ("--model", model)]
    return {
        "exec": {"command": command},
        "periodSeconds": period_s,
        "failureThreshold": failures,
        "timeoutSeconds": 5,
    }


def volumes(admin_secret: str, *, downloads_repository: bool) -> list[dict[str, Any]]:
    """The probe, the admin key and `/tmp` (besides `/dev/shm`, which the Deployment sizes).

    A repository served from object storage is downloaded into a temporary directory first, so its `/tmp` has no
    size limit; otherwise `/tmp` only holds scratch files.
    """
    tmp: dict[str, Any] = {} if downloads_repository else {"sizeLimit": TMP_SIZE_LIMIT}
    return [
        {"name": "stub-probe", "configMap": {"name": PROBE_CONFIGMAP, "defaultMode": 0o444}},
        {"name": "admin-key", "secret": {"secretName": admin_secret, "defaultMode": 0o440}},
        {"name": "tmp", "emptyDir": tmp},
    ]


def volume_mounts() -> list[dict[str, Any]]:
    """Where `volumes` are mounted in the Triton container."""
    return [
        {"name": "stub-probe", "mountPath": PROBE_DIR, "readOnly": True},
        {"name": "admin-key", "mountPath": ADMIN_KEY_DIR, "readOnly": True},
        {"name": "tmp", "mountPath": TMP_DIR},
    ]


def probe_configmap() -> dict[str, Any]:
    """The ConfigMap with `stub_health.py`, the same file `recgen serve` supervises with."""
    source = resources.files(stub_health.__package__ or "generator.deploy").joinpath(PROBE_FILE).read_text()
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": PROBE_CONFIGMAP},
        "data": {PROBE_FILE: source},
    }


def network_policy(
    name: str, labels: dict[str, str], selector: dict[str, str], front_selector: dict[str, str] | None
) -> dict[str, Any]:
    """Ingress of one component: a shard group takes inference calls from the front's pods only."""
    inference = [{"port": name, "protocol": "TCP"} for name in ("http", "grpc")]
    from_front: dict[str, Any] = {"ports": inference}
    if front_selector is not None:
        from_front["from"] = [{"podSelector": {"matchLabels": front_selector}}]
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "podSelector": {"matchLabels": selector},
            "policyTypes": ["Ingress"],
            "ingress": [from_front, {"ports": [{"port": "metrics", "protocol": "TCP"}]}],
        },
    }


def disruption_budget(name: str, labels: dict[str, str], selector: dict[str, str], replicas: int) -> dict[str, Any]:
    """Voluntary disruptions (drains, upgrades) keep all but one of the planned replicas, and never the last one.

    `minAvailable: max(1, replicas - 1)`: with one planned replica a drain waits until a second one is up (scale
    the Deployment, or let the autoscaler do it) instead of taking the component down, which `maxUnavailable: 1`
    would allow.
    """
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {"name": name, "labels": labels},
        "spec": {"minAvailable": max(1, replicas - 1), "selector": {"matchLabels": selector}},
    }

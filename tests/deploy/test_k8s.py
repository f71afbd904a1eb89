"""Kubernetes manifests: schema-valid offline for a pinned Kubernetes version, and consistent with each other."""

import dataclasses
import json
import math
import shlex
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from generator import naming, native, triton_runtime
from generator.deploy import k8s, k8s_images, k8s_security, stub_health
from generator.deploy.distributed import build_distributed
from generator.deploy.topology import Topology
from generator.errors import OutputExistsError, UserInputError
from generator.model.dlrm import TableSpec
from generator.planning.plan import Placement, Plan, table_plan
from tests.conftest import tiny_model
from tests.deploy.test_distributed import two_group_plan

#: The Kubernetes version the manifests are validated against (autoscaling/v2 is GA since 1.23).
KUBERNETES_VERSION = "1.30.0"


def gpu_plan() -> Plan:
    plan = two_group_plan()
    medium = plan.tables[2]
    gpu = table_plan(medium.spec, medium.boundaries, [Placement(2, "gpu"), Placement()], row_order=medium.row_order)
    return Plan(plan.model_name, (plan.tables[0], plan.tables[1], gpu))


def by_kind(manifests: k8s.Manifests, kind: str) -> dict[str, dict]:
    return {o["metadata"]["name"]: o for o in manifests.objects if o["kind"] == kind}


@pytest.mark.parametrize("source", ["image", "pvc", "url"])
def test_every_manifest_validates_against_the_kubernetes_schema(source: str) -> None:
    options = k8s.K8sOptions(source=source, pvc="recgen-builds", repository_url="s3://bucket/dlrm")
    manifests = k8s.render_manifests(Topology.from_plan(gpu_plan()), options)
    # the stub probe's ConfigMap, then per component a Deployment, Service, HPA, NetworkPolicy and PDB
    assert len(manifests.objects) == 1 + 5 * len(manifests.components)
    for document in manifests.objects:
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
    for name, text in manifests.files.items():  # what is written is what was validated
        if name.endswith(".yaml") and name not in (k8s.KUSTOMIZATION_FILE, k8s.ADAPTER_VALUES_FILE):
            for document in yaml.safe_load_all(text):
                kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


def test_cross_references_hold() -> None:
    plan = gpu_plan()
    manifests = k8s.render_manifests(Topology.from_plan(plan))
    deployments = by_kind(manifests, "Deployment")
    services = by_kind(manifests, "Service")
    autoscalers = by_kind(manifests, "HorizontalPodAutoscaler")
    assert set(deployments) == set(services) == set(autoscalers) == {c.name for c in manifests.components}
    models_of = {component.name: component.models for component in manifests.components}
    for name, deployment in deployments.items():
        pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        selector = services[name]["spec"]["selector"]
        assert selector.items() <= pod_labels.items(), f"Service {name} does not select its pods"
        assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
        target = autoscalers[name]["spec"]["scaleTargetRef"]
        assert (target["kind"], target["name"]) == ("Deployment", name)
        assert autoscalers[name]["spec"]["minReplicas"] == deployment["spec"]["replicas"]
        assert autoscalers[name]["spec"]["metrics"][0]["pods"]["metric"]["name"] == k8s.QUEUE_METRIC
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        ports = {port["name"] for port in container["ports"]}
        assert {port["targetPort"] for port in services[name]["spec"]["ports"]} <= ports
        assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]
        (start,) = container["args"]
        assert container["command"] == ["/bin/sh", "-c"] and start.startswith("exec tritonserver ")
        assert "--model-control-mode=none" in start
        key_file = f"{k8s_security.ADMIN_KEY_DIR}/{k8s.ADMIN_KEY_FILE}"
        for flag in ("--http-restricted-api", "--grpc-restricted-protocol"):
            assert f'"{flag}=model-repository,shared-memory,logging,trace:recgen-admin-key=$(cat {key_file})"' in start
        assert container["startupProbe"]["httpGet"]["path"] == "/v2/health/ready"
        for probe in ("readinessProbe", "livenessProbe"):
            command = container[probe]["exec"]["command"]
            assert command[:2] == ["python3", "/opt/recgen/stub_health.py"]
            assert command[5::2] and set(command[5::2]) <= set(models_of[name]), command  # its models are ready
        mounts = {mount["name"]: mount["mountPath"] for mount in container["volumeMounts"]}
        assert mounts["admin-key"] == k8s_security.ADMIN_KEY_DIR and mounts["stub-probe"] == "/opt/recgen"
        assert not any("KEY" in str(entry) for entry in container["env"])
        budget = by_kind(manifests, "PodDisruptionBudget")[name]["spec"]
        assert budget["selector"]["matchLabels"].items() <= pod_labels.items()
        planned = deployment["spec"]["replicas"]
        assert budget["minAvailable"] == max(1, planned - 1) and "maxUnavailable" not in budget  # never the last
        policy = by_kind(manifests, "NetworkPolicy")[name]["spec"]
        assert policy["podSelector"]["matchLabels"].items() <= pod_labels.items()
        inference, metrics = policy["ingress"]
        assert {port["port"] for port in inference["ports"]} == {"http", "grpc"} <= ports
        assert metrics == {"ports": [{"port": "metrics", "protocol": "TCP"}]}
        if name == naming.front_service_name("dlrm"):
            assert "from" not in inference  # clients reach the front from anywhere
        else:  # only the front's pods reach a shard group
            front_pods = deployments[naming.front_service_name("dlrm")]["spec"]["template"]["metadata"]["labels"]
            (source,) = inference["from"]
            assert source["podSelector"]["matchLabels"].items() <= front_pods.items()
            assert not source["podSelector"]["matchLabels"].items() <= pod_labels.items()
    (probe_map,) = by_kind(manifests, "ConfigMap").values()
    assert probe_map["data"]["stub_health.py"] == Path(stub_health.__file__).read_text()

    # The front calls every shard group through its headless Service, on the gRPC port, by the env var its
    # remote steps read; and the per-shard default layout gives every shard its own service.
    front = deployments[naming.front_service_name("dlrm")]
    env = {e["name"]: e.get("value") for e in front["spec"]["template"]["spec"]["containers"][0]["env"]}
    groups = [c for c in manifests.components if c.role == "shard-group"]
    assert len(groups) == len(plan.shards)
    for group in groups:
        assert env[naming.endpoints_env_var(group.models[0])] == f"{group.name}:{triton_runtime.GRPC_PORT}"
        assert services[group.name]["spec"]["clusterIP"] == "None"
    # Replicas, memory and devices come from the plan.
    hot = deployments["dlrm-shard-medium-0"]
    resources = hot["spec"]["template"]["spec"]["containers"][0]["resources"]
    assert hot["spec"]["replicas"] == 2 and resources["limits"]["nvidia.com/gpu"] == 1
    assert autoscalers["dlrm-shard-medium-0"]["spec"]["maxReplicas"] == 8
    cold = deployments["dlrm-shard-medium-1"]["spec"]["template"]["spec"]["containers"][0]["resources"]
    assert "nvidia.com/gpu" not in cold["limits"]
    rows_bytes = 990 * 8 * 4
    request_mib = int(cold["requests"]["memory"].removesuffix("Mi"))
    assert request_mib * 2**20 >= rows_bytes + k8s.K8sOptions().capacity.server_overhead_bytes


def test_files_kustomization_and_images(tmp_path: Path) -> None:
    manifests = k8s.render_manifests(Topology.from_plan(two_group_plan()), k8s.K8sOptions(namespace="ranking"))
    out = manifests.write(tmp_path / "deploy")
    kustomization = yaml.safe_load((out / k8s.KUSTOMIZATION_FILE).read_text())
    assert kustomization["namespace"] == "ranking"
    assert sorted(kustomization["resources"]) == sorted(p.name for p in out.glob("*.yaml") if p.name not in (
        k8s.KUSTOMIZATION_FILE, k8s.ADAPTER_VALUES_FILE))  # fmt: skip
    assert (out / k8s.ADMIN_KEY_FILE).stat().st_mode & 0o077 == 0
    assert (out / ".gitignore").read_text().split() == [k8s.ADMIN_KEY_FILE]  # never committed with the manifests
    for deployment in by_kind(manifests, "Deployment").values():
        image = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
        name = deployment["metadata"]["name"]
        dockerfile = (out / k8s.IMAGES_DIR / f"{name}.Dockerfile").read_text()
        assert dockerfile.startswith(f"# {name}") and f"FROM {k8s.DEFAULT_IMAGE}" in dockerfile
        assert triton_runtime.NUMBA_REQUIREMENT in dockerfile  # the compiled kernels
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        environment = {variable["name"]: variable.get("value") for variable in container["env"]}
        assert environment["NUMBA_CACHE_DIR"].startswith("/tmp/")  # the writable emptyDir
        assert image in (out / k8s.IMAGES_DIR / "build.sh").read_text()
    front = (out / k8s.IMAGES_DIR / f"{naming.front_service_name('dlrm')}.Dockerfile").read_text()
    assert "tritonclient[grpc]==2.51.0" in front and "COPY --chown=1000:1000 front /models" in front
    rule = yaml.safe_load((out / k8s.ADAPTER_VALUES_FILE).read_text())["rules"]["custom"][0]
    assert rule["name"]["as"] == k8s.QUEUE_METRIC and "nv_inference_queue_duration_us" in rule["metricsQuery"]
    with pytest.raises(OutputExistsError):
        manifests.write(out)


def test_manifests_match_the_distributed_build(tmp_path: Path) -> None:
    plan = two_group_plan()
    result = build_distributed(tiny_model(), plan, tmp_path / "dist")
    manifests = k8s.render_manifests(Topology.from_plan(plan))
    groups = {c.models[0]: c for c in manifests.components if c.role == "shard-group"}
    assert list(groups) == [g.model for g in result.groups]
    for built in result.groups:
        component = groups[built.model]
        assert (tmp_path / "dist" / component.repository) == result.group_repository(built)
        assert component.replicas == built.replica_servers and component.name == built.service


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"source": "pvc"}, "--pvc NAME"),
        ({"source": "url", "repository_url": "http://x"}, "s3://"),
        ({"source": "ftp"}, "`source` must be one of image, pvc, url"),
        ({"max_replica_factor": 0.5}, r"max_replica_factor` must be in \[1, 1000\]"),
        ({"shm_mb": 1}, r"shm_mb` must be in \[16, 65536\]"),
    ],
)
def test_bad_options_name_the_field(options: dict, message: str) -> None:
    with pytest.raises(UserInputError, match=message):
        k8s.K8sOptions(**options)


def test_models_whose_kubernetes_names_clash_are_rejected() -> None:
    model = tiny_model()
    specs = [model.tables[0], TableSpec("Small", 7, 8, 3), TableSpec("small", 7, 8, 3)]
    plan = Plan("dlrm", tuple(table_plan(spec, [0, spec.num_rows], [Placement()]) for spec in specs))
    with pytest.raises(UserInputError, match="would serve more than one model"):
        k8s.render_manifests(Topology.from_plan(plan))


#: Volume types the Pod Security Standard "restricted" allows.
RESTRICTED_VOLUME_TYPES = {
    "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret",
}  # fmt: skip


def _restricted_violations(pod: dict) -> list[str]:
    """What breaks the Pod Security Standard "restricted" profile (Kubernetes 1.30), plus our own hardening."""
    problems = []
    pod_context = pod.get("securityContext", {})
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(flag):
            problems.append(flag)
    for volume in pod.get("volumes", []):
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUME_TYPES:
            problems.append(f"volume {volume['name']} of type {kinds}")
    if pod.get("automountServiceAccountToken") is not False:
        problems.append("service-account token mounted")
    for container in pod["containers"] + pod.get("initContainers", []):
        context = container.get("securityContext", {})

        def setting(key: str, context: dict = context) -> object:
            return context.get(key, pod_context.get(key))

        if context.get("privileged"):
            problems.append("privileged")
        if context.get("allowPrivilegeEscalation") is not False:
            problems.append("allowPrivilegeEscalation not false")
        if setting("runAsNonRoot") is not True or setting("runAsUser") == 0:
            problems.append("may run as root")
        if (setting("seccompProfile") or {}).get("type") not in ("RuntimeDefault", "Localhost"):
            problems.append("no seccomp profile")
        capabilities = context.get("capabilities", {})
        if "ALL" not in capabilities.get("drop", []) or set(capabilities.get("add", [])) - {"NET_BIND_SERVICE"}:
            problems.append("capabilities not dropped")
        if any(port.get("hostPort") for port in container.get("ports", [])):
            problems.append("host port")
        if context.get("readOnlyRootFilesystem") is not True:
            problems.append("writable root filesystem")
    return problems


@pytest.mark.parametrize("source", ["image", "pvc", "url"])
def test_every_container_meets_pod_security_restricted(source: str, tmp_path: Path) -> None:
    options = k8s.K8sOptions(source=source, pvc="recgen-builds", repository_url="s3://bucket/dlrm")
    manifests = k8s.render_manifests(Topology.from_plan(gpu_plan()), options)
    deployments = by_kind(manifests, "Deployment")
    assert deployments
    for name, deployment in deployments.items():
        pod = deployment["spec"]["template"]["spec"]
        assert _restricted_violations(pod) == [], name
        writable = {m["mountPath"] for m in pod["containers"][0]["volumeMounts"] if not m.get("readOnly")}
        assert writable == {"/dev/shm", "/tmp"}
    insecure = {"containers": [{"name": "c", "securityContext": {"privileged": True}}], "volumes": [
        {"name": "h", "hostPath": {"path": "/"}}]}  # fmt: skip
    assert len(_restricted_violations(insecure)) == 8  # the checker itself sees every kind of breach
    out = manifests.write(tmp_path / "deploy")
    key = (out / k8s.ADMIN_KEY_FILE).read_text().strip()
    assert all(key not in path.read_text() for path in out.rglob("*.yaml"))


def test_memory_requests_follow_the_row_dtypes() -> None:
    """A group of int8 rows asks for its codes and scales, not for FP32 rows; the other groups ask as before."""
    spec = TableSpec("big", 400_000, 64, 1)
    plans = {
        dtype: Plan(
            "dlrm", (table_plan(spec, [0, 1000, 400_000], [Placement(), Placement()], row_dtypes=["fp32", dtype]),)
        )
        for dtype in ("fp32", "int8")
    }
    requests = {}
    for dtype, plan in plans.items():
        topology = Topology.from_plan(plan)
        cold = next(g for g in topology.groups if g.model.endswith("_1"))
        assert cold.rows_bytes == 399_000 * (4 * 64 if dtype == "fp32" else 64 + 8)
        deployment = by_kind(k8s.render_manifests(topology), "Deployment")[naming.service_name(cold.model)]
        memory = deployment["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]["memory"]
        requests[dtype] = int(memory.removesuffix("Mi")) * 2**20
    assert requests["fp32"] - requests["int8"] == pytest.approx(399_000 * (256 - 72), abs=2**20)


def test_the_fronts_shared_memory_holds_the_routers_access_counters() -> None:
    """/dev/shm is a size-limited emptyDir: the front's also holds every router instance's counters."""
    spec = TableSpec("big", 3_000_000, 16, 1)
    plan = Plan("dlrm", (table_plan(spec, [0, 3_000_000], [Placement()]),), router=Placement(2, "cpu", 2))
    limits = {}
    for counted in (True, False):
        topology = Topology.from_plan(dataclasses.replace(plan, count_accesses=counted))
        deployments = by_kind(k8s.render_manifests(topology), "Deployment")
        volumes = deployments[naming.front_service_name("dlrm")]["spec"]["template"]["spec"]["volumes"]
        (shm,) = [v for v in volumes if v["name"] == "dshm"]
        limits[counted] = int(shm["emptyDir"]["sizeLimit"].removesuffix("Mi"))
        group = deployments[naming.service_name(topology.groups[0].model)]["spec"]["template"]["spec"]["volumes"]
        assert next(v for v in group if v["name"] == "dshm")["emptyDir"]["sizeLimit"] == "256Mi"
    assert limits[False] == 256
    # two routers x two instances, plus the retired set (replaced instances' counts), x 4 B a row
    assert limits[True] == 256 + math.ceil((2 * 2 + 1) * 4 * 3_000_000 / 2**20)


def test_every_image_compiles_the_native_backend_the_models_name(tmp_path: Path) -> None:
    manifests = k8s.render_manifests(Topology.from_plan(two_group_plan()), k8s.K8sOptions())
    out = manifests.write(tmp_path / "deploy")
    sources = out / k8s.IMAGES_DIR / k8s_images.NATIVE_SOURCES_DIR
    assert {name: (sources / name).read_bytes() for name in native.source_files()} == native.source_files()
    build_script = (out / k8s.IMAGES_DIR / "build.sh").read_text()
    for component in manifests.components:
        dockerfile = (out / k8s.IMAGES_DIR / f"{component.name}.Dockerfile").read_text()
        assert f"-DRECGEN_NATIVE_VERSION={native.version()} -DRECGEN_WERROR=OFF" in dockerfile
        assert f"{k8s_images.IMAGE_NATIVE_LIBRARY}\n" in dockerfile  # Triton's backend directory in the image
        assert f"-exec cp {k8s_images.IMAGE_NATIVE_LIBRARY} {{}} \\;" in dockerfile  # the carried copies replaced
        assert f'--build-context {k8s_images.NATIVE_SOURCES_CONTEXT}="$here/{k8s_images.NATIVE_SOURCES_DIR}" ' \
               f'-f "$here/{component.name}.Dockerfile"' in build_script  # fmt: skip
    # The image's configure step, run here on the sources written beside the Dockerfile (compiling is the native
    # tier's job): the version it passes and the warnings switch are options the sources' CMakeLists accepts.
    run = next(line for line in dockerfile.splitlines() if line.startswith("RUN cmake "))
    configure = shlex.split(run.removeprefix("RUN ").split(" && ")[0])
    cmake = str(Path(sys.executable).with_name("cmake"))
    configure = [cmake if arg == "cmake" else arg.replace("/src/recgen-native", str(sources)) for arg in configure]
    configure = [arg.replace("/tmp/recgen-native-build", str(tmp_path / "build")) for arg in configure]
    done = subprocess.run(configure, capture_output=True, text=True, check=False, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "RECGEN_WERROR:BOOL=OFF" in (tmp_path / "build" / "CMakeCache.txt").read_text()


def test_a_layout_built_for_another_native_backend_is_refused(tmp_path: Path) -> None:
    build_distributed(tiny_model(), two_group_plan(), tmp_path / "dist")
    assert k8s.topology_for(None, tmp_path / "dist", None).groups  # this recgen's own build
    manifest = tmp_path / "dist" / naming.FRONT_DIR / naming.MANIFEST_FILE
    recorded = json.loads(manifest.read_text())
    assert recorded["native_backend_version"] == native.version()
    manifest.write_text(json.dumps({**recorded, "native_backend_version": "0123456789abcdef"}))
    with pytest.raises(UserInputError, match=r"built for recgen's native backend 0123456789abcdef, but this recgen"):
        k8s.topology_for(None, tmp_path / "dist", None)

"""Blue/green on Kubernetes: a generation's groups under new names, the order of rollout.sh, the overlap's memory."""

import dataclasses
import re

import pytest

from generator import naming
from generator.deploy import k8s, k8s_objects, k8s_rollout
from generator.deploy.topology import Topology
from generator.errors import UserInputError
from tests.deploy.test_distributed import two_group_plan


def _generation(number: int) -> Topology:
    return Topology.from_plan(dataclasses.replace(two_group_plan(), generation=number))


def test_a_new_generation_runs_its_groups_under_new_names_beside_the_front_it_keeps() -> None:
    first, second = k8s.render_manifests(_generation(1)), k8s.render_manifests(_generation(2))
    front = naming.front_service_name("dlrm")
    names = {c.name for c in first.components}, {c.name for c in second.components}
    assert names[0] & names[1] == {front}  # only the front is replaced in place
    assert all(name.startswith("dlrm--g2-") for name in names[1] - {front})
    for manifests, generation in ((first, "1"), (second, "2")):
        for document in manifests.objects[1:]:
            labels = document["metadata"]["labels"]
            assert labels[k8s_objects.GENERATION_LABEL] == generation
            role = labels["app.kubernetes.io/component"]
            assert labels[k8s_objects.ROLLOUT_LABEL] == k8s_objects.rollout_step(role)
            selector = document["spec"].get("selector", {})
            selector = selector.get("matchLabels", selector) if isinstance(selector, dict) else {}
            assert k8s_objects.GENERATION_LABEL not in selector  # a Deployment's selector never changes
    deployment = {o["metadata"]["name"]: o for o in second.objects if o["kind"] == "Deployment"}[front]
    assert deployment["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", str(k8s_objects.PRE_STOP_SLEEP_S)]
    environment = {variable["name"]: variable["value"] for variable in container["env"]}
    for group in _generation(2).groups:  # the new front calls the new groups' Services
        assert environment[group.endpoints_env] == f"{group.service}:8001"


def test_rollout_applies_the_groups_then_waits_then_the_front_then_retires_the_old_groups() -> None:
    topology = _generation(2)
    manifests = k8s.render_manifests(topology, k8s.K8sOptions(namespace="ranking"))
    script = manifests.files[k8s_rollout.ROLLOUT_SCRIPT].splitlines()
    commands = [line for line in script if line.startswith("kubectl")]
    assert commands[0] == 'kubectl apply -k "$here" -n ranking -l recgen.io/rollout-step=1-groups'
    waits = [c for c in commands[1 : 1 + len(topology.groups)]]
    assert waits == [f"kubectl rollout status -n ranking deployment/{g.service} --timeout=15m" for g in topology.groups]
    assert commands[1 + len(topology.groups)] == 'kubectl apply -k "$here" -n ranking'
    assert commands[2 + len(topology.groups)].endswith(f"deployment/{topology.front.service} --timeout=15m")
    delete = commands[-1]
    assert delete.startswith("kubectl delete -n ranking deployment,service,horizontalpodautoscaler")
    selector = re.search(r"-l '([^']+)'", delete).group(1)  # type: ignore[union-attr]
    assert set(selector.split(",")) == {
        "app.kubernetes.io/part-of=dlrm",
        "app.kubernetes.io/managed-by=recgen",
        "app.kubernetes.io/component=shard-group",
        "recgen.io/generation!=2",
    }
    # step 1 applies what the new groups need: the probe ConfigMap and the admin Secret carry its label
    assert manifests.objects[0]["metadata"]["labels"] == {k8s_objects.ROLLOUT_LABEL: k8s_objects.ROLLOUT_GROUPS}
    generator = k8s.yaml.safe_load(manifests.files[k8s.KUSTOMIZATION_FILE])["secretGenerator"][0]
    assert generator["options"]["labels"] == {k8s_objects.ROLLOUT_LABEL: k8s_objects.ROLLOUT_GROUPS}


def test_the_overlap_memory_is_every_group_of_both_generations_and_the_fronts_with_one_surge_pod() -> None:
    options = k8s.K8sOptions()
    old, new = _generation(1), _generation(2)
    manifests = k8s.render_manifests(new, options, previous=old)
    pods = {c.name: (c.replicas, k8s_objects.request_bytes(options, c)) for c in k8s.components(old, options)}
    pods.update({c.name: (c.replicas, k8s_objects.request_bytes(options, c)) for c in manifests.components})
    front = naming.front_service_name("dlrm")
    expected = sum(replicas * size for replicas, size in pods.values()) + pods[front][1]
    assert manifests.rollout.peak == expected
    assert manifests.rollout.new_groups + manifests.rollout.fronts < expected
    assert f"peak during the overlap {k8s_objects.mebibytes(expected)}" in str(manifests)
    assert k8s.render_manifests(new, options).rollout.peak is None  # the running groups were not given


@pytest.mark.parametrize("generation", [0, 10_000])
def test_generations_stay_in_range(generation: int) -> None:
    with pytest.raises(UserInputError, match=r"`generation` must be in 1\.\.9999"):
        dataclasses.replace(two_group_plan(), generation=generation)

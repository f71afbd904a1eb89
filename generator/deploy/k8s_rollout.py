"""Rolling a new generation out on Kubernetes, blue/green, as `recgen update` does on one machine.

A generation's shard groups carry the generation in their names (`naming.leaf_stem`), so its Deployments and
Services sit beside the running ones; the front keeps its name and is replaced in place. `rollout.sh`, written with
the manifests, keeps the order that drops no request:

1. apply everything labelled `recgen.io/rollout-step=1-groups` (the new groups, the probe ConfigMap, the admin
   Secret) and wait until every new group Deployment is available: the old front still calls the old groups;
2. apply the rest: the front's Deployment rolls (maxSurge 1, maxUnavailable 0; a terminating front pod leaves its
   Service before Triton drains), and each new front pod calls only the new groups;
3. delete the shard groups of every other generation of this model (only objects recgen labelled as such).

`RolloutMemory` states what the cluster must hold meanwhile: every old group replica, every new one, the fronts
and one surge front pod, as memory requests.
"""

from __future__ import annotations

import shlex
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass

from generator import naming
from generator.deploy import k8s_objects
from generator.deploy.k8s_objects import Component, K8sOptions
from generator.deploy.topology import Topology

ROLLOUT_SCRIPT = "rollout.sh"
#: How long `kubectl rollout status` waits for one Deployment (big shards load for minutes).
ROLLOUT_TIMEOUT = "15m"
#: The object kinds a generation's shard group consists of (what step 3 deletes).
GROUP_KINDS = "deployment,service,horizontalpodautoscaler,poddisruptionbudget,networkpolicy"


@dataclass(frozen=True)
class RolloutMemory:
    """Memory requests (bytes) before, during and after a rollout; `old_groups` is None when not told."""

    generation: int
    new_groups: int
    fronts: int
    surge_front: int
    old_groups: int | None

    @property
    def peak(self) -> int | None:
        """Everything at once: the moment the new front pods start beside the old ones, both group sets up."""
        return None if self.old_groups is None else self.old_groups + self.new_groups + self.fronts + self.surge_front

    def __str__(self) -> str:
        mib = k8s_objects.mebibytes
        line = (
            f"rollout ({ROLLOUT_SCRIPT}, generation {self.generation}): new shard groups request "
            f"{mib(self.new_groups)} beside the running ones, the fronts {mib(self.fronts)} "
            f"plus one surge front pod {mib(self.surge_front)}"
        )
        if self.peak is None:
            return line + "; peak = that plus the running groups' (give --previous-layout to have it stated)"
        return (
            f"{line}; the running groups request {mib(self.old_groups or 0)}: peak during the overlap "
            f"{mib(self.peak)}, after it {mib(self.new_groups + self.fronts)}"
        )


def _total(options: K8sOptions, components: Sequence[Component]) -> int:
    return sum(component.replicas * k8s_objects.request_bytes(options, component) for component in components)


def rollout_memory(
    topology: Topology, options: K8sOptions, parts: Sequence[Component], previous: Sequence[Component] | None
) -> RolloutMemory:
    """What a rollout of `parts` holds, with the running generation's components `previous` when known."""
    groups = [c for c in parts if c.role == "shard-group"]
    fronts = [c for c in parts if c.role == "front"]
    old = None if previous is None else _total(options, [c for c in previous if c.role == "shard-group"])
    return RolloutMemory(
        topology.generation,
        _total(options, groups),
        _total(options, fronts),
        sum(k8s_objects.request_bytes(options, c) for c in fronts),
        old,
    )


def rollout_script(topology: Topology, options: K8sOptions, parts: Sequence[Component], memory: RolloutMemory) -> str:
    """rollout.sh: the new groups, then the front, then the other generations' groups go (see the module doc)."""
    namespace = f" -n {shlex.quote(options.namespace)}" if options.namespace else ""
    part_of = naming.service_name(topology.model_name)
    old_groups = ",".join(
        [
            f"app.kubernetes.io/part-of={part_of}",
            "app.kubernetes.io/managed-by=recgen",
            "app.kubernetes.io/component=shard-group",
            f"{k8s_objects.GENERATION_LABEL}!={topology.generation}",
        ]
    )
    lines = [
        "#!/usr/bin/env bash",
        f"# Roll generation {topology.generation} of {topology.model_name!r} out beside the running one, dropping no",
        "# request: the new shard groups first, then the front, then the other generations' groups go.",
        *(f"# {line}" for line in textwrap.wrap(str(memory), 110)),
        "set -euo pipefail",
        'here="$(cd "$(dirname "$0")" && pwd)"',
        f'kubectl apply -k "$here"{namespace} -l {k8s_objects.ROLLOUT_LABEL}={k8s_objects.ROLLOUT_GROUPS}',
    ]
    for component in parts:
        if component.role == "shard-group":
            lines.append(f"kubectl rollout status{namespace} deployment/{component.name} --timeout={ROLLOUT_TIMEOUT}")
    lines.append(f'kubectl apply -k "$here"{namespace}')
    for component in parts:
        if component.role == "front":
            lines.append(f"kubectl rollout status{namespace} deployment/{component.name} --timeout={ROLLOUT_TIMEOUT}")
    lines.append(f"kubectl delete{namespace} {GROUP_KINDS} -l '{old_groups}'")
    return "\n".join(lines) + "\n"

"""Every naming rule of a generated repository, in one place.

Model (directory) names, tensor names on ensemble edges, and file names inside version directories are derived
here and nowhere else; the Python-backend models read the names they need from their config.pbtxt parameters,
so they never re-derive them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from generator.triton_models import onnx_model, recgen_kernels, remote_group_model
from generator.triton_models import profile_model as profile_module
from generator.triton_models import router_model as router_module

#: Version directory every generated model uses (Triton needs a numeric one, even for ensembles).
MODEL_VERSION = "1"
CONFIG_FILE = "config.pbtxt"
PYTHON_MODEL_FILE = "model.py"
#: Data files read by the Python-backend models. Those modules must run without recgen installed (NGC
#: container), so each defines its own file name and this module refers to it rather than repeating it.
DENSE_WEIGHTS_FILE = recgen_kernels.DENSE_WEIGHTS_FILE
router_ranks_file = router_module.ranks_file
router_front_cache_file = router_module.front_cache_file
ONNX_MODEL_FILE = onnx_model.ONNX_FILE
MANIFEST_FILE = "recgen_manifest.json"
#: The SHA-256 of every file of a repository, as built (`repository.contents`).
CONTENTS_FILE = "recgen_files.json"
#: The README.md recgen writes into every generated repository.
README_FILE = "README.md"
#: The one file in an ensemble's (otherwise empty) version directory.
ENSEMBLE_VERSION_NOTE = "README.md"

#: Distributed layout (`recgen build --layout distributed -o DIR`): DIR/front is the front server's repository
#: (router, dense, remote shard-group steps, ensemble), DIR/groups/<group model> one repository per shard group.
FRONT_DIR = "front"
GROUPS_DIR = "groups"
TOPOLOGY_FILE = "topology.json"
DISTRIBUTED_PLAN_FILE = "plan.json"

#: Request contract (DESIGN.md): ensemble inputs and output.
DENSE_FEATURES = "dense_features"
SCORE = "score"
#: Ranking request contract (`<model>_ranking`): one user [1, ...], N candidates [N, ...].
USER_DENSE_FEATURES = "user_dense_features"
ITEM_DENSE_FEATURES = "item_dense_features"


_IDENTIFIER = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")


def is_valid_identifier(name: str) -> bool:
    """Whether `name` may be used as a model or table name (letters, digits, '_'; starts with a letter)."""
    return bool(_IDENTIFIER.match(name)) and "__" not in name


def sparse_input(table: str) -> str:
    """Ensemble input carrying the multi-hot ids of `table`."""
    return f"sparse_{table}"


def side_sparse_input(table: str, side: str) -> str:
    """Ranking-ensemble input carrying the ids of `table`: `user_sparse_<table>` [1, L] or `item_sparse_<table>`."""
    return side_input(sparse_input(table), side)


def side_input(name: str, side: str) -> str:
    """The ranking request's name of a flattened request tensor: `user_<name>` [1, ...] or `item_<name>` [N, ...]."""
    return f"{side}_{name}"


def weights_input(feature: str) -> str:
    """Ensemble input carrying the per-id weights of a weighted feature, aligned with `sparse_<feature>`."""
    return f"weights_{feature}"


def group_id_weights(group: int) -> str:
    """Ensemble tensor from the router to shard group `group`: the weight of every id in its local ids (1 if none)."""
    return f"id_weights__g{group}"


def group_local_ids(group: int) -> str:
    """Ensemble tensor from the router to shard group `group`: the local ids of all its shards, side by side."""
    return f"local_ids__g{group}"


def group_partial_sums(group: int) -> str:
    """Ensemble tensor from shard group `group` to the dense model: its shards' pooled partial sums, side by side."""
    return f"partial_sums__g{group}"


#: Ensemble tensor from the router to the dense model: the pools of the rows the router's front cache served.
FRONT_CACHE_PARTIALS = "partial_sums__cache"
#: Ensemble tensor from the router to the dense model: per sample, the ids of every mean-pooled feature.
POOL_COUNTS = "pool_counts__router"


def table_rows_file(table: str) -> str:
    """File of a whole table's rows inside a monolithic model."""
    return f"rows_{table}.npy"


#: The generation `recgen build` writes; `recgen update` writes the next one beside the running one.
FIRST_GENERATION = 1
#: Most generations a deployment may go through (names stay short; a later one starts over from a fresh build).
MAX_GENERATION = 9999


def leaf_stem(model: str, generation: int) -> str:
    """The stem of the leaf models (router, shard groups, dense) of one generation of a deployment.

    The first generation's leaves are named after the model (`dlrm_router`); `recgen update` writes generation g
    beside it as `dlrm__g2_router`, ... ('__' never occurs in a valid model name, so no name collides), and the
    ensemble, named after the model alone, switches from one to the other. Triton keeps one config per model for
    all its versions, so a generation whose configs differ (other cuts, replicas, wire layout) needs names of its
    own; the ensemble's versions count the generations.
    """
    return model if generation == FIRST_GENERATION else f"{model}__g{generation}"


def router_model(model: str) -> str:
    """Triton model name of the router."""
    return f"{model}_router"


def shard_model(model: str, table: str, shard: int) -> str:
    """Triton model name of a shard served alone."""
    return f"{model}_shard_{table}_{shard}"


def shard_group_model(model: str, group: int, members: Sequence[tuple[str, int]]) -> str:
    """Triton model name of a shard group: the shard's own name when it is alone, else numbered."""
    if len(members) == 1:
        return shard_model(model, *members[0])
    return f"{model}_shards_{group}"


def shard_rows_file(table: str, shard: int) -> str:
    """File of one shard's rows inside its (group) model's version directory."""
    return f"rows__{table}__{shard}.npy"


def shard_scales_file(table: str, shard: int) -> str:
    """File of an int8 row-wise shard's per-row (scale, offset) pairs, beside its codes (`shard_rows_file`)."""
    return f"scales__{table}__{shard}.npy"


def router_scales_file(group: int, stack: int) -> str:
    """File of the per-row (scale, offset) pairs of an int8 stack the router pools (beside `router_rows_file`)."""
    return f"group_scales__{group}__{stack}.npy"


def router_rows_file(group: int, stack: int) -> str:
    """File of one row-width stack of a shard group the router pools itself (its padding row included)."""
    return f"group_rows__{group}__{stack}.npy"


def profile_model(model: str) -> str:
    """Triton model name of the model that sums the routers' access counters (`recgen profile --from-server`)."""
    return f"{model}_profile"


#: The profile model's tensors: an optional reset flag in; per table its touched rows and their counts, the
#: samples per table, the window's start and the router instances read, out.
#: (The profile model runs without recgen installed, so it names them and this module refers to its names.)
PROFILE_RESET = profile_module.RESET
PROFILE_SAMPLES = profile_module.SAMPLES
PROFILE_SINCE = profile_module.SINCE
PROFILE_INSTANCES = profile_module.INSTANCES
profile_rows_output = profile_module.rows_output
profile_counts_output = profile_module.counts_output


def dense_model(model: str) -> str:
    """Triton model name of the dense model (bottom MLP, interaction, top MLP)."""
    return f"{model}_dense"


def ensemble_model(model: str) -> str:
    """Triton model name of the ensemble: the model's own name, the endpoint clients call."""
    return model


def ranking_ensemble(model: str) -> str:
    """Triton model name of the ranking ensemble (one user, N candidates; RecServe's structured request)."""
    return f"{model}_ranking"


def ranking_router_model(model: str) -> str:
    """Router of the ranking ensemble: routes the user's ids once and the candidates' ids, as one batch."""
    return f"{model}_router_ranking"


def ranking_dense_model(model: str) -> str:
    """Dense model of the ranking ensemble: user-only terms once, broadcast onto the candidates."""
    return f"{model}_dense_ranking"


def endpoints_env_var(model: str) -> str:
    """Environment variable of the front server that lists the endpoints of the remote shard group `model`."""
    return remote_group_model.endpoints_env_var(model)


def service_name(model: str) -> str:
    """Kubernetes name (DNS-1035 label) of the Deployment and Service that serve Triton model `model`."""
    label = re.sub(r"[^a-z0-9-]", "-", model.lower()).strip("-")
    return label[:63].rstrip("-")


def front_service_name(model: str) -> str:
    """Kubernetes name of the front server (router, dense, ensemble) of model `model`."""
    return service_name(f"{model}-front")

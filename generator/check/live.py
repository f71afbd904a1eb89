"""Access profiles recorded by a running server: every router instance's counts, read through its profile model.

`collect_profile` asks `<model>_profile` of the server at `url` (over HTTP or gRPC) for the counts of every router
instance of that server, and returns them in the profile format `recgen profile` writes offline, so `recgen plan`
reads either. Behind a load balancer (a Kubernetes Service), one call reaches one server: `collect_profiles` reads
several servers (every front pod, each through its own port-forward) and sums them.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from generator import naming
from generator.check.client import Protocol, RankingClient
from generator.errors import RecgenError
from generator.traffic.profile import AccessProfile, TableAccess, summed
from generator.triton_models import recgen_params as params


def collect_profile(
    url: str, protocol: Protocol = "http", model_name: str = "dlrm", *, reset: bool = False
) -> AccessProfile:
    """The server's live profile of `model_name` (hottest rows first, ties by id); `reset` starts a new window."""
    from tritonclient.utils import InferenceServerException

    name = naming.profile_model(model_name)
    with RankingClient(url, protocol, name) as client:
        client.ensure_live()
        try:
            spec = params.AccessCountsParams.from_model_config(client.model_config(name))
        except (InferenceServerException, params.ParameterError) as error:
            raise RecgenError(
                f"{url} serves no {name!r} ({error}); was {model_name!r} built with --no-access-counts, or under "
                "another --name?"
            ) from error
        result = client.send({naming.PROFILE_RESET: np.array([int(reset)], np.int32)}, output_names=None)
    samples = result.as_numpy(naming.PROFILE_SAMPLES)
    tables = []
    for index, (table, num_rows) in enumerate(zip(spec.tables, spec.num_rows, strict=True)):
        rows = result.as_numpy(naming.profile_rows_output(table)).astype(np.int64)
        counts = result.as_numpy(naming.profile_counts_output(table)).astype(np.int64)
        order = np.lexsort((rows, -counts))
        tables.append(TableAccess(table, num_rows, rows[order], counts[order], int(samples[index])))
    since = float(result.as_numpy(naming.PROFILE_SINCE)[0]) / 1000
    instances = int(result.as_numpy(naming.PROFILE_INSTANCES)[0])
    window = f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(since))} + {time.time() - since:.0f} s"
    return AccessProfile(tuple(tables), f"live from {url} ({instances} router counter sets, window {window})")


def collect_profiles(
    urls: Sequence[str], protocol: Protocol = "http", model_name: str = "dlrm", *, reset: bool = False
) -> AccessProfile:
    """The live profiles of several servers of one deployment, summed (one server: its own profile)."""
    profiles = [collect_profile(url, protocol, model_name, reset=reset) for url in urls]
    if len(profiles) == 1:
        return profiles[0]
    return summed(profiles, "sum of " + "; ".join(profile.source for profile in profiles))

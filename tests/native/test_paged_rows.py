"""Paged rows (`resident` false) through a real server: their pages stay on disk until a request reads them.

The rows files are mapped by the tritonserver process (the native router and shard groups); /proc/PID/smaps says
how much of each mapping is resident. The files are dropped from the page cache before the server starts, as on a
machine that did not write them (pages already cached would be mapped around each fault). A resident shard's rows
are all faulted in at load; a paged one's are not, and after requests only the pages they read are; the scores
still equal PyTorch's.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from bench.paged_rows import drop_from_page_cache, mapped_rows
from generator.check import client
from generator.errors import PlanError
from generator.model import dlrm as models
from generator.planning.plan import Plan, uniform_plan
from generator.repository.build import build
from generator.traffic.requests import random_request, reference_scores
from tests.conftest import requires_server

pytestmark = [pytest.mark.server, requires_server]

#: 200,000 rows of 16 floats (12.8 MB) per table: shards far larger than the pages a few requests read.
MODEL = models.DLRM(
    num_dense_features=4,
    tables=[models.TableSpec("big", 200_000, 16, 2), models.TableSpec("small", 1_000, 16, 1)],
    bottom_mlp=[16],
    top_mlp=[8, 1],
    seed=3,
).eval()


#: The most bytes one page fault brings in (64 KiB folios); a .npy header; one row of `big` (16 fp32).
FAULT_BYTES = 64 * 1024
HEADER_BYTES = 128
ROW_BYTES = 16 * 4


def _paged_plan(lookup_step: str) -> Plan:
    """Two shards per table; the second shard of `big` paged."""
    plan = uniform_plan(MODEL, lookup_step=lookup_step)  # type: ignore[arg-type]
    big = plan.tables[0]
    shards = (big.shards[0], dataclasses.replace(big.shards[1], resident=False))
    return dataclasses.replace(plan, tables=(dataclasses.replace(big, shards=shards), *plan.tables[1:]))


@pytest.mark.parametrize(("lookup_step", "engine"), [("fused", "native"), ("separate", "native"), ("fused", "python")])
def test_a_paged_shard_is_read_from_disk_only_where_requests_read_it(
    tmp_path: Path, server_factory, lookup_step: str, engine: str
) -> None:
    plan = dataclasses.replace(_paged_plan(lookup_step), lookup_engine=engine)
    assert [group.resident for group in plan.shard_groups()].count(False) == 1
    result = build(MODEL, plan, tmp_path / "repo", tmp_path / "ens")
    for rows_file in (tmp_path / "repo").rglob("*rows*.npy"):  # as on a machine that did not write them
        drop_from_page_cache(rows_file)
    server = server_factory(result)
    assert server.pid is not None
    files = mapped_rows(server.pid, (tmp_path / "repo").resolve())
    paged = {
        name: figures for name, figures in files.items() if figures[1] > 3_000_000 and figures[0] < figures[1] / 10
    }
    resident = {name: figures for name, figures in files.items() if figures[0] >= figures[1] * 0.9}
    assert len(paged) == 1, files  # the paged shard's 6.4 MB of rows, not faulted in at load
    assert resident, files  # the other shards', faulted in
    rng = np.random.default_rng(2)
    requests = [random_request(MODEL, 16, rng) for _ in range(2)]
    for protocol, url in (("http", server.http_url), ("grpc", server.grpc_url)):
        with client.RankingClient(url, protocol) as session:
            for request in requests:
                np.testing.assert_allclose(session.score(request), reference_scores(MODEL, request), atol=1e-5)
    ((name, (_, size)),) = paged.items()
    after, _ = mapped_rows(server.pid, (tmp_path / "repo").resolve())[name]
    # At most the blocks the requests' ids fall in, plus the header's (the page cache reads a folio per fault, of a
    # size the kernel picks: 64 KiB was seen here, up to twice that is allowed), and far less than the shard.
    big = plan.tables[0]
    first_row = big.shards[1].row_start
    ids = np.concatenate([request.sparse["big"].ravel() for request in requests])
    rows = ids[ids >= first_row] - first_row
    blocks = len(set(((HEADER_BYTES + rows * ROW_BYTES) // FAULT_BYTES).tolist())) + 1
    assert 0 < after <= 2 * blocks * FAULT_BYTES < size / 2, (after, blocks)


def test_a_paged_shard_that_a_python_model_would_hold_in_memory_is_refused() -> None:
    with pytest.raises(PlanError, match=r"big/1 are paged .*\(lookup engine python, device cpu\): serve them"):
        dataclasses.replace(_paged_plan("separate"), lookup_engine="python")
    assert (
        dataclasses.replace(_paged_plan("fused"), lookup_engine="python").lookup_engine == "python"
    )  # the router maps

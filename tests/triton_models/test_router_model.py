import json
from pathlib import Path

import numpy as np
import pytest

from generator import naming, render
from generator.plan import Placement, Plan, table_plan, uniform_plan
from generator.triton_models import router_model
from tests.conftest import tiny_model


def _routes(plan: Plan, tmp_path: Path) -> list[router_model.TableRoute]:
    config = render.router_config(plan)
    from google.protobuf import json_format

    as_json = json.loads(json_format.MessageToJson(config, preserving_proto_field_name=True))
    return router_model.load_routes(as_json, tmp_path)


def test_route_request_outputs_every_shard(tmp_path: Path) -> None:
    plan = uniform_plan(tiny_model(), shards_per_table=3)
    routes = _routes(plan, tmp_path)
    inputs = {
        "sparse_one_row": np.array([[0], [-1]]),
        "sparse_small": np.array([[0, 6, -1], [-1, -1, -1]]),
        "sparse_medium": np.array([[999], [0]]),
    }
    outputs = router_model.route_request(routes, inputs)
    assert set(outputs) == {naming.local_ids(t.spec.name, s.index) for t in plan.tables for s in t.shards}
    assert outputs["local_ids__small__0"].tolist() == [[0, -1, -1], [-1, -1, -1]]
    assert outputs["local_ids__small__2"].tolist() == [[-1, 2, -1], [-1, -1, -1]]
    assert outputs["local_ids__medium__2"].tolist() == [[333], [-1]]


@pytest.mark.parametrize(("value", "shown"), [(7, "id 7"), (-2, "id -2")])
def test_bad_id_names_tensor_value_and_range(tmp_path: Path, value: int, shown: str) -> None:
    routes = _routes(uniform_plan(tiny_model()), tmp_path)
    inputs = {
        "sparse_one_row": np.array([[0]]),
        "sparse_small": np.array([[0, value, -1]]),
        "sparse_medium": np.array([[1]]),
    }
    with pytest.raises(ValueError, match=rf"'sparse_small' holds {shown}.*-1 \(padding\) to 6"):
        router_model.route_request(routes, inputs)


def test_permuted_table_reads_ranks_file(tmp_path: Path) -> None:
    model = tiny_model()
    base = uniform_plan(model, shards_per_table=2)
    order = np.arange(1000)[::-1].copy()  # hottest = highest id
    medium = table_plan(model.tables[2], [0, 10, 1000], [Placement(), Placement()], row_order=order)
    plan = Plan("dlrm", (base.tables[0], base.tables[1], medium))
    np.savez(tmp_path / router_model.ROW_RANKS_FILE, medium=medium.rank_of_row())
    routes = _routes(plan, tmp_path)
    inputs = {
        "sparse_one_row": np.array([[0]]),
        "sparse_small": np.array([[0, 1, 2]]),
        "sparse_medium": np.array([[999]]),
    }
    outputs = router_model.route_request(routes, inputs)
    assert outputs["local_ids__medium__0"].tolist() == [[0]]
    assert outputs["local_ids__medium__1"].tolist() == [[-1]]

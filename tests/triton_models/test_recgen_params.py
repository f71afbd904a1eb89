"""The typed parameters between the build and the runtime models: strict round trips, errors that name the key."""

import json
from pathlib import Path

import pytest
from google.protobuf import json_format

from generator.planning.plan import uniform_plan
from generator.repository import build, configs, layout, params, validation, wiring
from generator.triton_models import recgen_params as specs
from tests.conftest import tiny_model
from tests.test_front_cache import cached_plan
from tests.test_ranking import sided_model, sided_plan


def every_spec_of_a_plan() -> list[specs.Spec]:
    """One filled-in instance of every spec, from real plans (a front cache and a ranking model included)."""
    model = sided_model()
    plan = sided_plan(model)
    cached = cached_plan(tiny_model())
    wire = wiring.wire_layout(plan)
    (group, *_) = wire.groups
    built = [
        params.routing(plan, wire, ["a", "b", "c"]),
        params.front_cache(cached),
        *params.request_checks(layout.finite_inputs(plan, model.num_dense_features)),
        params.ranking_router(plan),
        params.access_counts(plan),
        params.admission(plan, "dlrm_router", [("dlrm_dense", 2)]),
        params.shard_group(group),
        params.dense(cached, wiring.wire_layout(cached)),
        params.ranking_dense(plan, wire, model.dense_sides),
        params.monolithic(plan),
        params.remote_group(group, params.RemoteCallPolicy()),
    ]
    assert all(spec is not None for spec in built)
    return [spec for spec in built if spec is not None]


def test_every_spec_round_trips_through_json() -> None:
    instances = every_spec_of_a_plan()
    assert sorted(type(spec).__name__ for spec in instances) == sorted(cls.__name__ for cls in specs.ALL_SPECS)
    for spec in instances:
        text = spec.to_json()
        assert type(spec).from_json(text) == spec
        assert json.loads(text) == json.loads(type(spec).from_json(text).to_json())


@pytest.mark.parametrize("spec", every_spec_of_a_plan(), ids=lambda spec: type(spec).__name__)
def test_a_missing_or_unknown_key_is_an_error_naming_it(spec: specs.Spec) -> None:
    data = json.loads(spec.to_json())
    first = next(iter(data))
    with pytest.raises(specs.ParameterError, match=rf"missing keys \['{first}'\]"):
        type(spec).from_dict({key: value for key, value in data.items() if key != first})
    with pytest.raises(specs.ParameterError, match=r"unknown keys \['typo'\]"):
        type(spec).from_dict({**data, "typo": 1})


def test_nested_drift_names_the_path_and_wrong_types_are_refused() -> None:
    plan = uniform_plan(tiny_model(), shards_per_table=2)
    routing = params.routing(plan, wiring.wire_layout(plan), ["a", "b", "c"])
    data = json.loads(routing.to_json())
    del data["tables"][1]["shards"][0]["first_row"]
    with pytest.raises(specs.ParameterError, match=r"RoutingParams\.tables\[1\]\.shards\[0\]: missing keys"):
        specs.RoutingParams.from_dict(data)
    data = json.loads(routing.to_json())
    data["tables"][0]["num_rows"] = "1"
    with pytest.raises(specs.ParameterError, match=r"tables\[0\]\.num_rows: expected int, got '1'"):
        specs.RoutingParams.from_dict(data)
    data["tables"][0]["num_rows"] = True  # JSON true is not a row count
    with pytest.raises(specs.ParameterError, match="expected int"):
        specs.RoutingParams.from_dict(data)
    with pytest.raises(specs.ParameterError, match="no parameter 'routing'"):
        specs.RoutingParams.from_model_config({"parameters": {}})
    assert specs.FrontCacheParams.optional_from_model_config({"parameters": {}}) is None


def test_every_python_model_of_a_build_reads_its_parameters(tmp_path: Path) -> None:
    """What the build writes is what the runtime models read, for every model kind of a full build."""
    model = sided_model()
    result = build.build(model, sided_plan(model), tmp_path / "r", tmp_path / "e")
    by_parameter = {cls.PARAMETER: cls for cls in specs.ALL_SPECS}
    read = set()
    for built in result.models:
        if built.role == "ensemble":
            continue
        config_path = tmp_path / "r" / built.name / "config.pbtxt"
        message = validation.parse_strict(config_path.read_text())
        config = json.loads(json_format.MessageToJson(message, preserving_proto_field_name=True))
        for key in config.get("parameters", {}):
            if key in configs.native_step_parameters("router"):  # which native step, its version: not specs
                continue
            by_parameter[key].from_model_config(config)
            read.add(key)
    assert read == {
        "routing",
        "request_checks",
        "ranking_router",
        "access_counts",
        "admission",
        "shards",
        "dense",
        "ranking",
    }

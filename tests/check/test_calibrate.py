"""Real-server tier: calibration measures positive, plausible figures."""

import re

import pytest

from generator.check.calibrate import calibrate
from generator.model.imported import import_module
from tests.conftest import requires_server, tiny_model
from tests.model import zoo


@requires_server
@pytest.mark.server
@pytest.mark.parametrize("kind", ["recgen", "imported"])
def test_calibrate_measures_every_figure(kind: str) -> None:
    lines: list[str] = []
    model = tiny_model() if kind == "recgen" else import_module(zoo.DcnV2().eval(), zoo.dcn_example(), max_ids={"*": 4})
    capacity = calibrate(model, batch_size=64, requests=8, echo=lines.append)
    assert 1e-6 < capacity.shard_fixed_s < 0.1
    assert capacity.shard_per_row_s >= 0 and capacity.router_per_id_s >= 0
    assert 1e-6 < capacity.router_fixed_s + capacity.router_per_id_s * 64 < 0.1
    assert capacity.dense_samples_per_s > 1_000
    # A Python-backend stub process (the dense replica) costs megabytes; the server more; a native instance little.
    assert 2e6 < capacity.replica_overhead_bytes < 500e6
    assert 0 <= capacity.lookup_overhead_bytes < 20e6 and "native lookup engine" in capacity.source
    assert 5e6 < capacity.server_overhead_bytes < 2e9
    assert capacity.batch_size == 64 and "calibrated" in capacity.source
    assert any("dense" in line for line in lines)
    (fused,) = [line for line in lines if "fused lookup step" in line]
    measured_us, charged_us = (float(word) for word in re.findall(r"([0-9.]+) us", fused))
    assert 1 < measured_us < 1e5 and 1 < charged_us < 1e5

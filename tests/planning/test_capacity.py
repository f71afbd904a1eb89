import json
from pathlib import Path

import pytest

from generator.errors import UserInputError
from generator.planning.capacity import Capacity


def test_replicas_round_up_and_never_fall_below_one() -> None:
    capacity = Capacity(target_utilization=0.5)
    assert capacity.replicas(0.001, 1e-6) == 1
    assert capacity.replicas(1000, 1e-3) == 2  # 1 s of work per second at 50% utilisation
    assert capacity.replicas(1000, 1.0005e-3) == 3
    assert Capacity(target_utilization=1.0).replicas(1000, 2e-3) == 2


def test_save_load_round_trip_and_overrides(tmp_path: Path) -> None:
    capacity = Capacity(shard_fixed_s=1e-4, source="test")
    loaded = Capacity.load(capacity.save(tmp_path / "c.json"))
    assert loaded == capacity
    changed = loaded.with_overrides(shard_per_row_s=5e-9, router_fixed_s=None)
    assert changed.shard_per_row_s == 5e-9 and changed.router_fixed_s == capacity.router_fixed_s
    assert "overrides" in changed.source
    assert "us/request" in str(changed)


def test_unknown_keys_and_bad_values_are_errors(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    data = Capacity().to_dict() | {"shard_fixd_s": 1.0}
    path.write_text(json.dumps(data))
    with pytest.raises(UserInputError, match="unknown keys"):
        Capacity.load(path)
    with pytest.raises(UserInputError, match="target_utilization"):
        Capacity(target_utilization=1.5)
    with pytest.raises(UserInputError, match="shard_fixed_s"):
        Capacity(shard_fixed_s=-1)
    with pytest.raises(UserInputError, match="unknown capacity"):
        Capacity().with_overrides(nope=1)


def test_the_fault_size_is_a_calibrated_figure_with_a_flag_and_a_range(tmp_path: Path) -> None:
    from generator.planning.capacity import load_with_overrides

    assert Capacity().fault_bytes == 64 * 1024  # unless calibrated: what an isolated fault read on ext4, at most
    path = Capacity(fault_bytes=4096).save(tmp_path / "capacity.json")
    assert Capacity.load(path).fault_bytes == 4096
    assert load_with_overrides(path, fault_kib=16).fault_bytes == 16 * 1024
    with pytest.raises(UserInputError, match=r"`fault_bytes` must be an integer in 512..16777216, got 100"):
        Capacity(fault_bytes=100)

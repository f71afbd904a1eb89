import gzip
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from generator.errors import UserInputError
from generator.traffic.profile import (
    AccessProfile,
    TableShape,
    profile_from_meta_trace,
    profile_from_npz,
    summed,
    table_access_from_ids,
    zipf_profile,
)

SHAPES = [TableShape("big", 10_000, 4), TableShape("one", 1, 1), TableShape("mid", 500, 1)]


def test_counts_are_hottest_first_with_ties_by_id() -> None:
    access = table_access_from_ids("t", 10, np.array([[3, 3, -1], [7, 1, 3], [1, -1, -1]]), samples=3)
    assert access.rows.tolist() == [3, 1, 7]
    assert access.counts.tolist() == [3, 2, 1]
    assert access.lookups == 6 and access.mean_ids_per_sample == 2.0
    order = access.row_order()
    assert order[:3].tolist() == [3, 1, 7] and sorted(order.tolist()) == list(range(10))


def test_ids_outside_the_table_are_rejected() -> None:
    with pytest.raises(UserInputError, match=r"id 10 is outside 0\.\.9"):
        table_access_from_ids("t", 10, np.array([1, 10]), samples=2)


def test_zipf_profile_is_skewed_seeded_and_not_low_ids() -> None:
    profile = zipf_profile(SHAPES, 1.2, samples=20_000, seed=3)
    big = profile.table("big")
    assert big.share_of_hottest(0.01) > 0.5
    assert 1.0 < big.mean_ids_per_sample < 4.0
    assert big.rows[0] != 0 or big.rows[1] != 1  # hottest rows are scattered over the id space
    again = zipf_profile(SHAPES, 1.2, samples=20_000, seed=3)
    assert np.array_equal(again.table("big").counts, big.counts)
    uniform = zipf_profile(SHAPES, 0.0, samples=20_000, seed=3).table("big")
    assert uniform.share_of_hottest(0.01) < 0.05
    assert profile.table("one").rows.tolist() == [0]


def test_per_table_alpha_and_bad_alpha() -> None:
    profile = zipf_profile(SHAPES, {"big": 1.5, "one": 1.0, "mid": 0.0}, samples=5_000)
    assert profile.table("big").share_of_hottest(0.01) > profile.table("mid").share_of_hottest(0.01)
    with pytest.raises(UserInputError, match="alpha"):
        zipf_profile(SHAPES, {"big": 1.0}, samples=10)
    with pytest.raises(UserInputError, match="unknown tables"):
        zipf_profile(SHAPES, {"nope": 1.0, "big": 1, "one": 1, "mid": 1}, samples=10)


def test_save_load_round_trip_and_summary(tmp_path: Path) -> None:
    profile = zipf_profile(SHAPES, 1.05, samples=2_000)
    loaded = AccessProfile.load(profile.save(tmp_path / "p.npz"))
    assert loaded.source == profile.source
    for a, b in zip(profile.tables, loaded.tables, strict=True):
        assert (a.name, a.num_rows, a.samples) == (b.name, b.num_rows, b.samples)
        assert np.array_equal(a.rows, b.rows) and np.array_equal(a.counts, b.counts)
    text = str(loaded)
    assert "top 1%" in text and "big" in text
    with pytest.raises(UserInputError, match="does not exist"):
        AccessProfile.load(tmp_path / "absent.npz")


def test_npz_trace(tmp_path: Path) -> None:
    path = tmp_path / "trace.npz"
    np.savez(path, big=np.array([[5, 5, -1, -1], [9, -1, -1, -1]]), one=np.array([0, 0]), mid=np.array([3, 4]))
    profile = profile_from_npz(path, SHAPES)
    assert profile.table("big").counts.tolist() == [2, 1]
    assert profile.table("big").mean_ids_per_sample == 1.5
    assert profile.table("one").samples == 2
    np.savez(path, big=np.array([1]))
    with pytest.raises(UserInputError, match="no array for table 'one'"):
        profile_from_npz(path, SHAPES)


@pytest.mark.parametrize("gzipped", [False, True])
@pytest.mark.parametrize("as_dict", [False, True])
def test_meta_trace(tmp_path: Path, gzipped: bool, as_dict: bool) -> None:
    # 4 tables in the trace (the model uses the first 3), batch of 2 samples
    lengths = torch.tensor([[2, 1], [1, 1], [0, 2], [1, 1]])
    per_sample = [[7, 7], [8], [0], [0], [], [1, 2], [9], [9]]
    indices = torch.tensor([i for ids in per_sample for i in ids])
    offsets = torch.tensor([0, *np.cumsum([len(ids) for ids in per_sample]).tolist()])
    payload = {"indices": indices, "offsets": offsets, "lengths": lengths} if as_dict else (indices, offsets, lengths)
    path = tmp_path / "trace.pt"
    if gzipped:
        with gzip.open(path, "wb") as file:
            torch.save(payload, file)
    else:
        torch.save(payload, path)
    profile = profile_from_meta_trace(path, SHAPES)
    assert profile.table("big").rows.tolist() == [7, 8] and profile.table("big").counts.tolist() == [2, 1]
    assert profile.table("one").lookups == 2
    assert profile.table("mid").rows.tolist() == [1, 2]
    assert profile.table("big").samples == 2


def test_meta_trace_errors(tmp_path: Path) -> None:
    path = tmp_path / "bad.pt"
    torch.save((torch.tensor([1]), torch.tensor([0, 1]), torch.tensor([[1]])), path)
    with pytest.raises(UserInputError, match="has 1 tables; the model has 3"):
        profile_from_meta_trace(path, SHAPES)
    path.write_bytes(b"garbage")
    with pytest.raises(UserInputError, match="cannot be read"):
        profile_from_meta_trace(path, SHAPES)


@given(
    st.lists(st.lists(st.integers(-1, 29), max_size=40), min_size=1, max_size=4),
    st.lists(st.integers(0, 50), min_size=4, max_size=4),
)
@settings(max_examples=60, deadline=None)
def test_summed_profiles_count_every_id_once(parts: list[list[int]], samples: list[int]) -> None:
    profiles = [
        AccessProfile((table_access_from_ids("t", 30, np.array(ids, dtype=np.int64), n),), f"part {i}")
        for i, (ids, n) in enumerate(zip(parts, samples, strict=False))
    ]
    every_id = np.array([i for ids in parts for i in ids], dtype=np.int64)
    expected = table_access_from_ids("t", 30, every_id, sum(samples[: len(parts)]))
    result = summed(profiles, "sum").table("t")
    np.testing.assert_array_equal(result.rows, expected.rows)
    np.testing.assert_array_equal(result.counts, expected.counts)
    assert result.samples == expected.samples


def test_profiles_of_other_tables_are_not_summed() -> None:
    one = AccessProfile((table_access_from_ids("t", 30, np.array([1]), 1),), "a")
    other = AccessProfile((table_access_from_ids("t", 31, np.array([1]), 1),), "b")
    with pytest.raises(UserInputError, match="cannot be summed"):
        summed([one, other], "sum")

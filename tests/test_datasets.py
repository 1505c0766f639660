"""Dataset plug-ins (splitpriv.datasets): the registry, ``mitdb`` as every earlier version read
it, two leads, a user's arrays (and every malformed one refused in one line), scikit-learn's
digits."""

from __future__ import annotations

import dataclasses

import h5py
import numpy as np
import pytest
import torch

from splitpriv.data import DataError, PrepConfig, load_pool, make_split
from splitpriv.datasets import DATASETS, build_dataset
from splitpriv.run import TrainConfig, build_run_data


def test_registry_lists_the_built_ins_and_refuses_an_unknown_name():
    assert {"mitdb", "arrays", "digits"} <= set(DATASETS)
    with pytest.raises(ValueError, match="unknown dataset 'nope'"):
        TrainConfig(dataset="nope")
    with pytest.raises(ValueError, match="leads must be 1 or 2"):
        TrainConfig(dataset="mitdb:leads=3")


def test_mitdb_rows_are_the_protocol_split_bit_for_bit(pool_dirs):
    mitdb, cache = pool_dirs
    config = TrainConfig(mitdb_dir=str(mitdb), cache_dir=str(cache), train_subset=500,
                         test_subset=300)
    data = build_run_data(config)
    # what every earlier version computed: the protocol's split of the pool, as float32
    split = make_split(load_pool(mitdb, cache_dir=cache), "paper-unique", val_fraction=0.1,
                       seed=2019)
    assert torch.equal(data.x_train, torch.as_tensor(split.x_train[:500]).float())
    assert torch.equal(data.x_val, torch.as_tensor(split.x_val).float())
    assert torch.equal(data.y_test, torch.as_tensor(split.y_test[:300]))
    assert np.array_equal(data.record_train, split.record_train[:500])
    assert data.input_shape == (1, 128) and data.n_classes == 5


def test_two_leads_add_each_records_second_signal(pool_dirs):
    mitdb, cache = pool_dirs
    base = TrainConfig(mitdb_dir=str(mitdb), cache_dir=str(cache), train_subset=400)
    one = build_run_data(base)
    two = build_run_data(dataclasses.replace(base, dataset="mitdb:leads=2"))
    assert tuple(two.x_train.shape) == (400, 2, 128)
    assert torch.equal(two.x_train[:, :1], one.x_train)  # lead 0 is the one-lead run's
    assert torch.equal(two.y_train, one.y_train)
    # lead 1 is the channel-1 pool's beat of the same row, not a copy of lead 0
    ch1 = load_pool(mitdb, cache_dir=cache, prep=PrepConfig(channel=1))
    rows = two.pool_idx_train
    assert torch.equal(two.x_train[:, 1], torch.as_tensor(ch1.x[rows]).float())
    assert not torch.equal(two.x_train[:, 1], two.x_train[:, 0])
    leads = two.card["leads"]["1"]
    assert leads["100"] == "V5" and leads["101"] == "V1"  # the records' headers
    with pytest.raises(ValueError, match="not inter-patient"):
        TrainConfig(dataset="mitdb:leads=2", protocol="inter-patient", labels="aami")


def test_digits_are_images_with_a_seeded_stratified_split():
    ds = build_dataset("digits").load(TrainConfig(dataset="digits"))
    assert ds.x.shape == (1797, 1, 8, 8) and ds.x.dtype == np.float32
    assert 0 <= ds.x.min() and ds.x.max() == 1.0 and ds.n_classes == 10
    parts = np.concatenate([ds.train, ds.val, ds.test])
    assert np.array_equal(np.sort(parts), np.arange(1797))  # disjoint, and every image used
    assert len(ds.test) == 540  # ceil(0.3 * 1797), sklearn's rounding
    # stratified: every class's test share within one image of 30 %
    for c in range(10):
        n_c = int((ds.y == c).sum())
        assert abs(int((ds.y[ds.test] == c).sum()) - 0.3 * n_c) <= 1
    assert sorted(np.unique(ds.groups)) == list(range(30))
    again = build_dataset("digits").load(TrainConfig(dataset="digits"))
    other = build_dataset("digits").load(TrainConfig(dataset="digits", data_seed=1))
    assert np.array_equal(again.test, ds.test) and not np.array_equal(other.test, ds.test)
    with pytest.raises(ValueError, match="applies to the mitdb dataset only"):
        TrainConfig(dataset="digits", protocol="paper")


def _arrays(n: int = 60, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"x": rng.normal(size=(n, 3, 16)).astype(np.float32),
            "y": np.arange(n) % 3, "groups": np.arange(n) // 6,
            "train": np.arange(0, 40), "val": np.arange(40, 48), "test": np.arange(48, n)}


@pytest.mark.parametrize("suffix", [".npz", ".h5"])
def test_arrays_from_npz_or_hdf5(tmp_path, suffix):
    path = tmp_path / f"mine{suffix}"
    arrays = _arrays()
    if suffix == ".npz":
        np.savez(path, **arrays)
    else:
        with h5py.File(path, "w") as f:
            for k, v in arrays.items():
                f[k] = v
    data = build_run_data(TrainConfig(dataset=f"arrays:path={path}"))
    assert torch.equal(data.x_train, torch.as_tensor(arrays["x"][:40]))
    assert torch.equal(data.y_test, torch.as_tensor(arrays["y"][48:]))
    assert np.array_equal(data.record_val, arrays["groups"][40:48])
    assert data.n_classes == 3 and data.card["n_train"] == 40 and data.card["groups_test"] == 2


def test_arrays_without_a_split_are_split_stratified(tmp_path):
    path = tmp_path / "mine.npz"
    arrays = _arrays(90)
    np.savez(path, x=arrays["x"], y=arrays["y"])
    ds = build_dataset(f"arrays:path={path}").load(TrainConfig(dataset=f"arrays:path={path}"))
    assert (len(ds.train), len(ds.val), len(ds.test)) == (56, 7, 27)  # 30 % test, 10 % of the rest
    assert np.array_equal(ds.groups, np.arange(90))  # no groups: every sample its own


BAD = [  # (what the file holds, the one line's words)
    ({"x": np.zeros((10, 16), np.float32)}, "key 'x' must be (N, C, *spatial)"),
    ({"x": np.full((10, 1, 4), np.nan, np.float32)}, "key 'x' holds 40 NaN"),
    ({"y": np.array([0, 1] * 4 + [0, -1])}, "key 'y' holds labels outside"),
    ({"classes": np.array(["a", "b"]), "y": np.array([0, 1] * 4 + [2, 0])},
     "labels outside 0..1"),
    ({"test": np.zeros(0, np.int64)}, "key 'test' is empty"),
    ({"y": np.array([0, 1] * 4)}, "key 'y' has 8 entries, 'x' has 10"),
    ({"groups": np.arange(9)}, "key 'groups' has 9 entries"),
    ({"train": np.array([0, 12])}, "key 'train' holds rows outside 0..9"),
]


@pytest.mark.parametrize(("change", "words"), BAD)
def test_malformed_arrays_are_refused_in_one_line_naming_file_and_key(tmp_path, change, words):
    arrays = {"x": np.ones((10, 1, 4), np.float32), "y": np.array([0, 1] * 5),
              "train": np.arange(6), "test": np.arange(6, 10)} | change
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(DataError) as err:
        build_run_data(TrainConfig(dataset=f"arrays:path={path}"))
    text = str(err.value)
    assert words in text and str(path) in text and "\n" not in text


def test_arrays_refuses_a_missing_file_and_a_missing_key(tmp_path):
    with pytest.raises(ValueError, match="is not a file"):
        TrainConfig(dataset=f"arrays:path={tmp_path / 'none.npz'}")
    np.savez(tmp_path / "nox.npz", y=np.arange(3))
    with pytest.raises(DataError, match="has no key 'x'"):
        build_run_data(TrainConfig(dataset=f"arrays:path={tmp_path / 'nox.npz'}"))


def test_digits_split_groups_holds_whole_subjects_out():
    ds = build_dataset("digits:split=groups").load(TrainConfig(dataset="digits:split=groups"))
    train, val, test = (set(ds.groups[p].tolist()) for p in (ds.train, ds.val, ds.test))
    # records-holdout over the 30 subjects: a random half (15) test, validation subjects
    # carved whole from the other 15, no subject in two parts
    assert len(test) == 15 and not (train & test) and not (val & test) and not (train & val)
    assert len(train | val) == 15 and val
    assert np.array_equal(np.sort(np.concatenate([ds.train, ds.val, ds.test])),
                          np.arange(1797))
    assert ds.card["protocol"] == "groups"
    # an image's place in its subject's sequence stands in for its time
    assert np.array_equal(ds.rpeak[:61], np.arange(61) // 30)
    with pytest.raises(ValueError, match="split must be one of"):
        TrainConfig(dataset="digits:split=patients")

"""The beat pool, the split protocols, the pool cache, the paper's HDF5 files (written here, read as
the ``arrays`` dataset's paper layout) and bad inputs."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from splitpriv import data
from splitpriv.data import (
    DS1_RECORDS,
    DS2_RECORDS,
    PROTOCOLS,
    BeatPool,
    DataError,
    PrepConfig,
    build_pool,
    count_duplicate_rows,
    dataset_card,
    load_pool,
    make_split,
    pool_cache_path,
    read_record,
    resolve_mitdb_dir,
    verify_checksums,
    write_paper_hdf5,
)
from splitpriv.data.beats import _denoise

POOL_COUNTS = {"N": 71732, "L": 8036, "R": 7231, "A": 2491, "V": 6559}
HALF_COUNTS = {"N": 3000, "L": 3000, "R": 3000, "A": 1245, "V": 3000}


def make_subset(src: Path, dest: Path, records: tuple[str, ...] = ("100", "101")) -> Path:
    """Copy a few records with a matching RECORDS and SHA256SUMS.txt into ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    sums = []
    for rec in records:
        for ext in (".hea", ".dat", ".atr"):
            shutil.copyfile(src / f"{rec}{ext}", dest / f"{rec}{ext}")
            digest = hashlib.sha256((dest / f"{rec}{ext}").read_bytes()).hexdigest()
            sums.append(f"{digest}  {rec}{ext}\n")
    (dest / "RECORDS").write_text("".join(f"{r}\n" for r in records))
    (dest / "SHA256SUMS.txt").write_text("".join(sums))
    return dest


@pytest.fixture
def subset(mitdb_dir: Path, tmp_path: Path) -> Path:
    return make_subset(mitdb_dir, tmp_path / "mitdb")


# ---------------------------------------------------------------------------- the pool


def test_pool_has_the_paper_counts(pool: BeatPool) -> None:
    assert len(pool) == 96_049
    assert pool.class_counts() == POOL_COUNTS
    assert pool.x.shape == (96_049, 128) and pool.x.dtype == np.float64
    assert pool.y.dtype == np.int64 and pool.record.dtype == np.int32
    assert pool.rpeak.dtype == np.int64
    assert np.all(np.isfinite(pool.x))
    assert np.all(np.diff(pool.record) >= 0)  # records ascending
    for rec in np.unique(pool.record):  # beats in annotation order
        assert np.all(np.diff(pool.rpeak[pool.record == rec]) > 0)
    assert sorted(set(pool.record.tolist()) & {102, 104, 107, 114, 217}) == []
    assert len(np.unique(pool.record)) == 43


def test_pool_rows_match_the_per_beat_paper_code(pool: BeatPool, mitdb_dir: Path) -> None:
    import pywt
    import wfdb
    from scipy.signal import resample

    sig = wfdb.rdrecord(str(mitdb_dir / "201"), channels=[0]).p_signal[:, 0]
    sig = (sig - sig.min()) / (sig.max() - sig.min())
    rows = np.flatnonzero(pool.record == 201)
    thr = 0.005 * np.sqrt(2 * np.log2(128))
    for row in rows[[0, 7, len(rows) // 2, -1]]:
        r = pool.rpeak[row]
        beat = resample(sig[r - 100 : r + 101], 128)
        coeffs = [pywt.threshold(c, thr, "soft") for c in pywt.wavedec(beat, "bior4.4")]
        np.testing.assert_array_equal(pywt.waverec(coeffs, "bior4.4")[:128], pool.x[row])


# ---------------------------------------------------------------------------- protocols


def test_paper_protocol_sizes_and_duplicates(pool: BeatPool, paper_split) -> None:
    card = dataset_card(pool, paper_split)
    assert (card["n_train"], card["n_val"], card["n_test"]) == (13_245, 0, 13_245)
    assert card["class_counts_train"] == HALF_COUNTS
    assert card["class_counts_test"] == HALF_COUNTS
    assert paper_split.x_train.shape == (13_245, 1, 128)
    # Sampling with replacement copies training beats into the test set: 3,678 rows (27.8%).
    assert card["test_rows_duplicating_train"] == 3678
    assert card["records_shared"] == 43


def test_paper_protocol_is_the_legacy_global_seed_code(pool: BeatPool, paper_split) -> None:
    """Re-run the original notebook's algorithm with np.random.seed (the legacy global RNG)."""
    state = np.random.get_state()
    try:
        np.random.seed(2019)
        train, test = [], []
        for c, n in enumerate([6000, 6000, 6000, 2490, 6000]):
            rows = np.flatnonzero(pool.y == c)
            idx = np.random.choice(len(rows), n)
            train.append(rows[idx[: n // 2]])
            test.append(rows[idx[n // 2 :]])
        train, test = np.concatenate(train), np.concatenate(test)
        perm = np.arange(len(train))
        np.random.shuffle(perm)
        train = train[perm]
        np.random.shuffle(perm)
        test = test[perm]
    finally:
        np.random.set_state(state)
    np.testing.assert_array_equal(paper_split.pool_idx_train, train)
    np.testing.assert_array_equal(paper_split.pool_idx_test, test)
    np.testing.assert_array_equal(paper_split.x_test[:, 0, :], pool.x[test])
    np.testing.assert_array_equal(paper_split.y_test, pool.y[test])


def test_paper_unique_has_no_shared_beats(pool: BeatPool) -> None:
    split = make_split(pool, "paper-unique")
    card = dataset_card(pool, split)
    assert (card["n_train"], card["n_test"]) == (13_245, 13_245)
    assert card["class_counts_train"] == HALF_COUNTS == card["class_counts_test"]
    assert card["test_rows_duplicating_train"] == 0
    assert not set(split.pool_idx_train.tolist()) & set(split.pool_idx_test.tolist())
    assert len(np.unique(split.pool_idx_train)) == 13_245
    again = make_split(pool, "paper-unique")
    np.testing.assert_array_equal(again.pool_idx_test, split.pool_idx_test)
    other = make_split(pool, "paper-unique", seed=7)
    assert not np.array_equal(other.pool_idx_test, split.pool_idx_test)


def test_inter_patient_shares_no_record(pool: BeatPool) -> None:
    split = make_split(pool, "inter-patient")
    card = dataset_card(pool, split)
    assert card["records_shared"] == 0
    assert card["records_train"] == sorted(set(DS1_RECORDS) - {114})
    assert card["records_test"] == sorted(DS2_RECORDS)
    assert card["n_train"] + card["n_test"] == len(pool)
    assert (card["n_train"], card["n_test"]) == (47_771, 48_278)
    assert card["test_rows_duplicating_train"] == 0


def test_dataset_card_keys(pool: BeatPool, paper_split) -> None:
    assert set(dataset_card(pool, paper_split)) == {
        "protocol", "pool_size", "pool_class_counts", "n_train", "n_val", "n_test",
        "class_counts_train", "class_counts_val", "class_counts_test",
        "test_rows_duplicating_train", "records_train", "records_test", "records_shared",
    }  # fmt: skip


@pytest.mark.parametrize("protocol", ["paper", "paper-unique"])
def test_stratified_validation_carving(pool: BeatPool, protocol: str) -> None:
    split = make_split(pool, protocol, val_fraction=0.1)
    assert split.n_train + split.n_val == 13_245 and split.n_test == 13_245
    val_counts = dataset_card(pool, split)["class_counts_val"]
    assert val_counts == {c: round(0.1 * n) for c, n in HALF_COUNTS.items()}
    full = make_split(pool, protocol)
    # Train and val are a partition of the full training rows (as a multiset).
    np.testing.assert_array_equal(
        np.sort(np.concatenate([split.pool_idx_train, split.pool_idx_val])),
        np.sort(full.pool_idx_train),
    )
    np.testing.assert_array_equal(split.pool_idx_test, full.pool_idx_test)
    if protocol == "paper-unique":
        sets = [
            set(a.tolist()) for a in (split.pool_idx_train, split.pool_idx_val, split.pool_idx_test)
        ]
        assert not (sets[0] & sets[1]) and not (sets[1] & sets[2]) and not (sets[0] & sets[2])


def test_inter_patient_validation_holds_whole_records(pool: BeatPool) -> None:
    split = make_split(pool, "inter-patient", val_fraction=0.2)
    tr, va = set(split.record_train.tolist()), set(split.record_val.tolist())
    assert va and not tr & va
    assert tr | va == set(DS1_RECORDS) - {114}
    assert split.n_val >= 0.2 * (split.n_train + split.n_val)
    assert not set(split.pool_idx_val.tolist()) & set(split.pool_idx_train.tolist())


def test_zero_val_fraction_gives_empty_arrays(pool: BeatPool) -> None:
    split = make_split(pool, "paper-unique", val_fraction=0.0)
    assert split.n_val == 0 and split.x_val.shape == (0, 1, 128) and split.y_val.dtype == np.int64


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, float("nan"), "x"])
def test_bad_val_fraction(pool: BeatPool, bad) -> None:
    with pytest.raises(DataError, match="val_fraction"):
        make_split(pool, "paper-unique", val_fraction=bad)


def test_unknown_protocol_lists_the_valid_ones(pool: BeatPool) -> None:
    with pytest.raises(DataError, match="paper-unique") as err:
        make_split(pool, "intra")
    assert all(name in str(err.value) for name in PROTOCOLS)


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(1, 40),
    dup=st.lists(st.integers(0, 39), max_size=10),
    neg_zero=st.booleans(),
)
def test_count_duplicate_rows_matches_naive(n: int, dup: list[int], neg_zero: bool) -> None:
    rng = np.random.default_rng(n)
    ref = rng.normal(size=(n, 128)).round(1)
    query = rng.normal(size=(12, 128)).round(1)
    for i, j in enumerate(dup):
        query[i] = ref[j % n]
    if neg_zero:
        ref[0, 0], query[-1] = 0.0, ref[0]
        query[-1, 0] = -0.0
    naive = sum(any(np.array_equal(q, r) for r in ref) for q in query)
    assert count_duplicate_rows(ref, query) == naive


# ---------------------------------------------------------------------------- cache


def test_cache_key_depends_on_every_field() -> None:
    base = PrepConfig()
    assert base.cache_key() == PrepConfig().cache_key() and len(base.cache_key()) == 16
    changes = {
        "excluded_records": (102, 104, 107, 217),
        "channel": 1,
        "half_window": 90,
        "beat_length": 64,
        "wavelet": "db4",
        "threshold_scale": 0.01,
        "classes": "NLRAVF",
        "lead": "MLII",
        "labels": "aami",
    }
    assert set(changes) == {f.name for f in dataclasses.fields(PrepConfig)}
    keys = {dataclasses.replace(base, **{k: v}).cache_key() for k, v in changes.items()}
    assert len(keys | {base.cache_key()}) == len(changes) + 1


def test_bad_prep_config_names_the_field() -> None:
    with pytest.raises(DataError, match="wavelet"):
        PrepConfig(wavelet="nope")
    with pytest.raises(DataError, match="half_window"):
        PrepConfig(half_window=0)


def test_second_load_hits_the_cache(pool_dirs, pool: BeatPool, monkeypatch) -> None:
    mitdb, cache = pool_dirs
    assert pool_cache_path(PrepConfig(), cache).is_file()

    def fail(*args, **kwargs):
        raise AssertionError("build_pool called on a cache hit")

    monkeypatch.setattr("splitpriv.data.pool.build_pool", fail)
    again = load_pool(mitdb, cache_dir=cache)
    np.testing.assert_array_equal(again.x, pool.x)
    np.testing.assert_array_equal(again.rpeak, pool.rpeak)
    again = load_pool(cache_dir=cache)  # no records needed on a hit
    assert len(again) == len(pool)


def test_changed_prep_builds_a_new_cache(subset: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    a = load_pool(subset, cache_dir=cache)
    prep = PrepConfig(threshold_scale=0.01)
    b = load_pool(subset, cache_dir=cache, prep=prep)
    assert pool_cache_path(PrepConfig(), cache) != pool_cache_path(prep, cache)
    assert pool_cache_path(prep, cache).is_file()
    assert not np.array_equal(a.x, b.x)
    assert sorted(p.name for p in (cache / "pools").iterdir()) == sorted(
        [pool_cache_path(PrepConfig(), cache).name, pool_cache_path(prep, cache).name]
    )


def test_corrupt_cache_is_rebuilt(subset: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    good = load_pool(subset, cache_dir=cache)
    path = pool_cache_path(PrepConfig(), cache)
    path.write_bytes(b"not an hdf5 file")
    with pytest.warns(UserWarning, match=str(path)):
        again = load_pool(subset, cache_dir=cache)
    np.testing.assert_array_equal(again.x, good.x)
    with h5py.File(path, "r+") as fh:
        fh["x"][0, 0] = np.nan
    with pytest.warns(UserWarning, match="non-finite"):
        load_pool(subset, cache_dir=cache)


def test_cache_from_other_records_is_not_reused(
    mitdb_dir: Path, subset: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    load_pool(subset, cache_dir=cache)
    other = make_subset(mitdb_dir, tmp_path / "other", ("100", "103"))
    with pytest.warns(UserWarning, match="other records"):
        pool = load_pool(other, cache_dir=cache)
    assert sorted(set(pool.record.tolist())) == [100, 103]


def test_failed_cache_write_leaves_no_file(subset: Path, tmp_path: Path, monkeypatch) -> None:
    cache = tmp_path / "cache"
    real = h5py.Group.create_dataset
    calls = []

    def flaky(self, *args, **kwargs):
        calls.append(args)
        if len(calls) == 2:
            raise OSError("disk full")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(h5py.Group, "create_dataset", flaky)
    with pytest.raises(OSError, match="disk full"):
        load_pool(subset, cache_dir=cache)
    assert list((cache / "pools").iterdir()) == []


# ---------------------------------------------------------------------------- bad records


def test_missing_record_file_is_named(subset: Path) -> None:
    (subset / "101.atr").unlink()
    with pytest.raises(DataError, match="101.atr"):
        build_pool(subset)
    with pytest.raises(DataError, match="101.atr"):
        resolve_mitdb_dir(subset)


def test_missing_records_index_is_named(subset: Path) -> None:
    (subset / "RECORDS").unlink()
    with pytest.raises(DataError, match="RECORDS"):
        build_pool(subset)


def test_truncated_dat_is_named(subset: Path) -> None:
    path = subset / "100.dat"
    path.write_bytes(path.read_bytes()[:1_000_000])
    with pytest.raises(DataError, match=r"100\.dat.*truncated"):
        read_record(subset, "100")
    with pytest.raises(DataError, match=r"100\.dat.*truncated"):
        build_pool(subset)


def test_checksum_mismatch_is_named(subset: Path) -> None:
    path = subset / "101.dat"
    raw = bytearray(path.read_bytes())
    raw[5000] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=r"checksum mismatch.*101\.dat"):
        verify_checksums(subset)
    with pytest.raises(DataError, match=r"101\.dat"):
        build_pool(subset)
    build_pool(subset, verify=False)  # still readable without the check


def test_full_database_checksums(mitdb_dir: Path) -> None:
    assert verify_checksums(mitdb_dir) == 146


def test_unreadable_header_names_the_record(subset: Path) -> None:
    (subset / "100.hea").write_text("garbage header\n")
    with pytest.raises(DataError, match="100"):
        read_record(subset, "100")


def test_resolve_prefers_argument_then_env(
    subset: Path, tmp_path: Path, isolated_cache, monkeypatch
) -> None:
    assert resolve_mitdb_dir(subset) == subset
    monkeypatch.setenv("SPLITPRIV_MITDB", str(subset))
    assert resolve_mitdb_dir() == subset
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match=str(empty)):
        resolve_mitdb_dir(empty)
    monkeypatch.setenv("SPLITPRIV_MITDB", str(empty))
    with pytest.raises(DataError, match="SPLITPRIV_MITDB"):
        resolve_mitdb_dir()
    assert list(empty.iterdir()) == []  # never downloaded into


def test_resolve_cache_dir_without_download(isolated_cache: Path) -> None:
    with pytest.raises(DataError, match=str(isolated_cache / "mitdb")):
        resolve_mitdb_dir(download=False)


def test_resolve_downloads_into_the_user_cache(subset: Path, isolated_cache: Path) -> None:
    def fetch(name: str, dest: Path) -> None:
        shutil.copyfile(subset / name, dest)

    d = resolve_mitdb_dir(fetcher=fetch)
    assert d == isolated_cache / "mitdb"
    assert sorted(p.name for p in d.iterdir()) == sorted(p.name for p in subset.iterdir())
    assert resolve_mitdb_dir(download=False) == d


def test_user_cache_dir_order(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("SPLITPRIV_CACHE", str(tmp_path / "a"))
    assert data.user_cache_dir() == tmp_path / "a"
    monkeypatch.delenv("SPLITPRIV_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data.user_cache_dir() == tmp_path / "xdg" / "splitpriv"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert data.user_cache_dir() == Path.home() / ".cache" / "splitpriv"


# ---------------------------------------------------------------------------- paper HDF5


def read_pair(train: Path, test: Path, **config):
    """The paper's pair as a run reads it: ``--hdf5 TRAIN,TEST``, the ``arrays`` dataset's paper
    layout."""
    from splitpriv.datasets import run_dataset
    from splitpriv.run import TrainConfig

    run = TrainConfig(hdf5=f"{train},{test}", **config)
    return run_dataset(run).load(run)


def test_paper_hdf5_round_trip(paper_split, tmp_path: Path) -> None:
    train, test = write_paper_hdf5(paper_split, tmp_path)
    assert (train.name, test.name) == ("train_ecg.hdf5", "test_ecg.hdf5")
    with h5py.File(train, "r") as fh:
        assert set(fh) == {"x_train", "y_train"}
        assert fh["x_train"].shape == (13_245, 1, 128) and fh["x_train"].dtype == np.float64
    back = read_pair(train, test)
    assert back.card["protocol"] == "hdf5" and len(back.val) == 0
    np.testing.assert_array_equal(back.x[back.train], paper_split.x_train.astype(np.float32))
    np.testing.assert_array_equal(back.y[back.test], paper_split.y_test)
    assert np.all(back.groups == -1) and back.classes == tuple("NLRAV")  # records unknown
    assert back.card["test_rows_duplicating_train"] == 3678  # the paper protocol's leak
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    mask = os.umask(0o022)
    os.umask(mask)
    assert train.stat().st_mode & 0o777 == 0o666 & ~mask  # not mkstemp's 0600


def _write(path: Path, **arrays) -> Path:
    with h5py.File(path, "w") as fh:
        for k, v in arrays.items():
            fh.create_dataset(k, data=v)
    return path


@pytest.fixture
def good_test_file(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    return _write(
        tmp_path / "test_ecg.hdf5", x_test=rng.random((6, 1, 128)), y_test=np.arange(6) % 5
    )


def test_paper_hdf5_accepts_2d_beats_and_keras_labels(tmp_path: Path, good_test_file: Path
                                                      ) -> None:
    train = _write(tmp_path / "train_ecg.hdf5", x_train=np.zeros((4, 128), np.float32),
                   y_train=np.array([[0.0], [1.0], [2.0], [4.0]]))  # (N, 128); (N, 1) floats
    split = read_pair(train, good_test_file)
    assert split.x.shape == (10, 1, 128) and split.x.dtype == np.float32
    assert split.y[split.train].tolist() == [0, 1, 2, 4] and split.y.dtype == np.int64


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"x": np.zeros((4, 1, 128)), "y_train": np.zeros(4, int)}, "no key 'x_train'"),
        ({"x_train": np.zeros((4, 2, 128)), "y_train": np.zeros(4, int)}, "shape"),
        ({"x_train": np.zeros((4, 1, 100)), "y_train": np.zeros(4, int)}, "shape"),
        ({"x_train": np.zeros(128), "y_train": np.zeros(1, int)}, "shape"),
        ({"x_train": np.zeros((4, 1, 128), complex), "y_train": np.zeros(4, int)}, "real"),
        ({"x_train": np.full((4, 1, 128), np.nan), "y_train": np.zeros(4, int)}, "NaN"),
        ({"x_train": np.full((4, 1, 128), np.inf), "y_train": np.zeros(4, int)}, "infinite"),
        ({"x_train": np.zeros((4, 1, 128)), "y_train": np.array([0, 1, 2, 5])}, "labels"),
        ({"x_train": np.zeros((4, 1, 128)), "y_train": np.array([0, -1, 2, 3])}, "labels"),
        ({"x_train": np.zeros((4, 1, 128)), "y_train": np.array([0, 0.5, 2, 3])}, "integer"),
        ({"x_train": np.zeros((4, 1, 128)), "y_train": np.zeros(3, int)}, "3 entries"),
        ({"x_train": np.zeros((0, 1, 128)), "y_train": np.zeros(0, int)}, "empty"),
    ],
)
def test_bad_paper_hdf5_names_the_file_and_key(
    tmp_path: Path, good_test_file: Path, arrays, message
) -> None:
    train = _write(tmp_path / "train_ecg.hdf5", **arrays)
    with pytest.raises(DataError, match=message) as err:
        read_pair(train, good_test_file)
    text = str(err.value)
    assert str(train) in text and "\n" not in text
    assert "'x_train'" in text or "'y_train'" in text  # the key


def test_missing_or_non_hdf5_file_is_named(tmp_path: Path, good_test_file: Path) -> None:
    missing = tmp_path / "nope.hdf5"
    with pytest.raises(DataError, match=str(missing)):
        read_pair(missing, good_test_file)
    junk = tmp_path / "junk.hdf5"
    junk.write_text("hello")
    with pytest.raises(DataError, match=str(junk)):
        read_pair(junk, good_test_file)
    train = _write(
        tmp_path / "train_ecg.hdf5", x_train=np.zeros((2, 1, 128)), y_train=np.zeros(2, int)
    )
    with pytest.raises(DataError, match=f"{train} has no key 'x_test'"):
        read_pair(train, train)  # train file has no x_test


# ---------------------------------------------------------------------------- de Chazal / AAMI

#: de Chazal, O'Dwyer & Reilly, IEEE TBME 51(7):1196-1206, 2004, section II-A: the two sets of 22
#: records each (the paced 102, 104, 107, 217 in neither), written out here, not imported.
DE_CHAZAL_DS1 = [101, 106, 108, 109, 112, 114, 115, 116, 118, 119, 122, 124, 201, 203, 205, 207,
                 208, 209, 215, 220, 223, 230]
DE_CHAZAL_DS2 = [100, 103, 105, 111, 113, 117, 121, 123, 200, 202, 210, 212, 213, 214, 219, 221,
                 222, 228, 231, 232, 233, 234]

#: Every annotation symbol in the mitdb reference annotations -> its AAMI class (None: not a beat
#: of any class), the ANSI/AAMI EC57 mapping of de Chazal et al. 2004 Table I.
AAMI_TABLE = {
    "N": "N", "L": "N", "R": "N", "e": "N", "j": "N",
    "A": "S", "a": "S", "J": "S", "S": "S",
    "V": "V", "E": "V",
    "F": "F",
    "/": "Q", "f": "Q", "Q": "Q",
    "+": None, "~": None, "|": None, "x": None, "[": None, "]": None, "!": None, '"': None,
}  # fmt: skip


@pytest.fixture(scope="session")
def ip_pools(mitdb_dir: Path, pool_cache_dir: Path) -> dict[str, BeatPool]:
    """The inter-patient pools under both label schemes (built once, a few seconds each)."""
    return {
        labels: load_pool(mitdb_dir, cache_dir=pool_cache_dir,
                          prep=data.protocol_prep("inter-patient", labels))
        for labels in ("paper", "aami")
    }  # fmt: skip


def test_ds1_ds2_are_de_chazals() -> None:
    assert list(DS1_RECORDS) == DE_CHAZAL_DS1 and list(DS2_RECORDS) == DE_CHAZAL_DS2
    assert len(DE_CHAZAL_DS1) == len(DE_CHAZAL_DS2) == 22
    prep = data.protocol_prep("inter-patient")
    assert prep.excluded_records == (102, 104, 107, 217) and prep.lead == "MLII"


def test_inter_patient_pool_holds_ds1_and_ds2(ip_pools: dict[str, BeatPool]) -> None:
    for pool in ip_pools.values():
        assert sorted(set(pool.record.tolist())) == sorted(DE_CHAZAL_DS1 + DE_CHAZAL_DS2)
    split = make_split(ip_pools["aami"], "inter-patient")
    assert sorted(set(split.record_train.tolist())) == DE_CHAZAL_DS1
    assert sorted(set(split.record_test.tolist())) == DE_CHAZAL_DS2


def test_record_114_is_read_from_its_mlii_channel(
    ip_pools: dict[str, BeatPool], mitdb_dir: Path
) -> None:
    """Record 114's channel 0 is V5 and channel 1 MLII: its pool rows are channel 1's beats."""
    import wfdb

    assert wfdb.rdheader(str(mitdb_dir / "114")).sig_name == ["V5", "MLII"]
    pool = ip_pools["paper"]
    rows = np.flatnonzero(pool.record == 114)
    assert len(rows) > 1000
    prep = data.protocol_prep("inter-patient")
    for channel, equal in ((1, True), (0, False)):
        sig = wfdb.rdrecord(str(mitdb_dir / "114"), channels=[channel]).p_signal[:, 0]
        sig = (sig - sig.min()) / (sig.max() - sig.min())
        windows = sig[pool.rpeak[rows[:5], None] + np.arange(-100, 101)[None, :]]
        assert np.array_equal(_denoise(windows, prep), pool.x[rows[:5]]) is equal


def test_other_records_keep_channel_0(ip_pools: dict[str, BeatPool], pool: BeatPool) -> None:
    """Every other record's MLII is channel 0: its beats equal the paper pool's, bit for bit."""
    ip = ip_pools["paper"]
    for rec in (100, 201, 232):
        a, b = ip.record == rec, pool.record == rec
        np.testing.assert_array_equal(ip.x[a], pool.x[b])
        np.testing.assert_array_equal(ip.rpeak[a], pool.rpeak[b])


@pytest.mark.filterwarnings("ignore:.*inplace keyword")
def test_aami_mapping_of_every_mitdb_symbol(mitdb_dir: Path) -> None:
    import wfdb

    seen = set()
    for name in data.record_names(mitdb_dir):
        seen |= set(wfdb.rdann(str(mitdb_dir / name), "atr").symbol)
    assert seen == set(AAMI_TABLE)  # the table covers every symbol the database uses
    prep = PrepConfig(labels="aami")
    assert prep.classes == "NSVFQ"
    labels = prep.symbol_labels
    for symbol, cls in AAMI_TABLE.items():
        assert (data.AAMI_CLASSES[labels[symbol]] if symbol in labels else None) == cls, symbol
    with pytest.raises(DataError, match="NSVFQ"):
        PrepConfig(labels="aami", classes="NLRAVF")
    with pytest.raises(DataError, match="labels"):
        PrepConfig(labels="bogus")


def test_aami_pool_keeps_the_symbols_the_paper_pool_drops(ip_pools: dict[str, BeatPool]) -> None:
    paper, aami = ip_pools["paper"], ip_pools["aami"]
    assert aami.classes == "NSVFQ" and len(aami) > len(paper)
    counts = aami.class_counts()
    assert counts["F"] > 700 and counts["Q"] > 0 and counts["S"] > paper.class_counts()["A"]
    # the same window rule: the paper pool's beats are the aami pool's N/L/R/A/V-symbol beats
    key = {(int(r), int(p)) for r, p in zip(aami.record, aami.rpeak, strict=True)}
    assert all((int(r), int(p)) in key for r, p in zip(paper.record, paper.rpeak, strict=True))


def test_cache_key_follows_lead_labels_and_records() -> None:
    keys = {
        PrepConfig().cache_key(),
        data.protocol_prep("inter-patient").cache_key(),
        data.protocol_prep("inter-patient", "aami").cache_key(),
        PrepConfig(lead="MLII").cache_key(),
        PrepConfig(excluded_records=(102, 104, 107, 217)).cache_key(),
    }
    assert len(keys) == 5
    assert PrepConfig().cache_key() == dataclasses.replace(PrepConfig()).cache_key()


def test_paper_protocols_refuse_aami_labels(ip_pools: dict[str, BeatPool]) -> None:
    with pytest.raises(DataError, match="labels"):
        data.protocol_prep("paper", "aami")
    with pytest.raises(DataError, match="NLRAV"):
        make_split(ip_pools["aami"], "paper-unique")


@pytest.mark.parametrize("labels", ["paper", "aami"])
def test_inter_patient_validation_covers_the_classes(
    ip_pools: dict[str, BeatPool], labels: str
) -> None:
    pool = ip_pools[labels]
    prep = data.protocol_prep("inter-patient", labels)
    for seed in (2019, 3):
        split = make_split(pool, "inter-patient", val_fraction=0.1, seed=seed)
        sets = [set(r.tolist()) for r in (split.record_train, split.record_val,
                                          split.record_test)]
        assert not sets[0] & sets[1] and not sets[1] & sets[2] and not sets[0] & sets[2]
        assert sets[0] | sets[1] == set(DE_CHAZAL_DS1) and sets[2] == set(DE_CHAZAL_DS2)
        card = dataset_card(pool, split, prep)
        assert card["records_val"] == sorted(sets[1])
        assert card["labels"] == labels and card["lead"] == "MLII"
        for c in pool.classes:  # every DS1 class held by two or more records is in both
            holders = {int(r) for r in np.unique(split.record_train.tolist()
                                                 + split.record_val.tolist())
                       if np.any((pool.record == r) & (pool.y == pool.classes.index(c)))}
            if len(holders) >= 2:
                assert card["class_counts_val"][c] > 0 and card["class_counts_train"][c] > 0, c
        by_record = card["class_counts_by_val_record"]
        assert sum(sum(v.values()) for v in by_record.values()) == split.n_val
    again = make_split(pool, "inter-patient", val_fraction=0.1, seed=3)
    np.testing.assert_array_equal(again.pool_idx_val, split.pool_idx_val)

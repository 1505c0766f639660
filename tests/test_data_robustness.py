"""Bad records, stale and unwritable caches, the paper's HDF5 files as a run's data, and attacks
on received runs (docs/robustness.md, "Data and caches")."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from test_data import make_subset

from splitpriv import data
from splitpriv.cli import main
from splitpriv.data import (
    DataError,
    PrepConfig,
    build_pool,
    load_pool,
    make_split,
    pool_cache_path,
    verify_header_checksums,
    write_paper_hdf5,
)
from splitpriv.run import TrainConfig, run_training
from splitpriv.run.data import build_run_data

pytestmark = pytest.mark.filterwarnings("ignore:.*not checksummed:UserWarning")


def _records(pool) -> list[int]:
    return sorted(set(pool.record.tolist()))


@pytest.fixture
def subset(mitdb_dir: Path, tmp_path: Path) -> Path:
    """Records 100 and 101 with their RECORDS and SHA256SUMS.txt."""
    return make_subset(mitdb_dir, tmp_path / "mitdb")


@pytest.fixture
def unsummed(mitdb_dir: Path, tmp_path: Path) -> Path:
    """Records 100 and 101 without a SHA256SUMS.txt."""
    d = make_subset(mitdb_dir, tmp_path / "unsummed")
    (d / "SHA256SUMS.txt").unlink()
    return d


def _flip(path: Path, at: int = 5000) -> None:
    raw = bytearray(path.read_bytes())
    raw[at] ^= 0xFF
    path.write_bytes(bytes(raw))


# ---------------------------------------------------------------------------- cache vs content


def test_a_swapped_atr_rebuilds_the_cache_and_the_good_records_rebuild_it_again(
    unsummed: Path, mitdb_dir: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    good = load_pool(unsummed, cache_dir=cache)
    shutil.copyfile(mitdb_dir / "101.atr", unsummed / "100.atr")  # swapped annotations
    with pytest.warns(UserWarning, match=r"other records.*changed: 100\.atr"):
        swapped = load_pool(unsummed, cache_dir=cache)
    assert len(swapped) != len(good)
    shutil.copyfile(mitdb_dir / "100.atr", unsummed / "100.atr")
    with pytest.warns(UserWarning, match=r"changed: 100\.atr"):
        again = load_pool(unsummed, cache_dir=cache)
    np.testing.assert_array_equal(again.x, good.x)


def test_an_emptied_atr_is_an_error_naming_it(unsummed: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    load_pool(unsummed, cache_dir=cache)
    (unsummed / "100.atr").write_bytes(b"")
    with pytest.warns(UserWarning, match="100.atr"), pytest.raises(
        DataError, match=r"100\.atr holds no annotation"
    ):
        load_pool(unsummed, cache_dir=cache)


def test_switching_the_records_env_to_another_directory_rebuilds(
    mitdb_dir: Path, tmp_path: Path, isolated_cache: Path, monkeypatch
) -> None:
    small = make_subset(mitdb_dir, tmp_path / "small", ("100", "101"))
    big = make_subset(mitdb_dir, tmp_path / "big", ("100", "101", "103"))
    monkeypatch.setenv("SPLITPRIV_MITDB", str(small))
    assert _records(load_pool()) == [100, 101]
    monkeypatch.setenv("SPLITPRIV_MITDB", str(big))
    with pytest.warns(UserWarning, match=r"other records.*new: 103\.atr"):
        assert _records(load_pool()) == [100, 101, 103]
    assert _records(load_pool(big)) == [100, 101, 103]  # a hit now
    # the digests are remembered: a hit hashes nothing
    monkeypatch.setattr("splitpriv.data.records.sha256_file", _never)
    assert _records(load_pool()) == [100, 101, 103]


def _never(*args, **kwargs):
    raise AssertionError("called")


def test_a_cache_without_record_digests_is_rebuilt_once(subset: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    load_pool(subset, cache_dir=cache)
    with h5py.File(pool_cache_path(PrepConfig(), cache), "r+") as fh:
        del fh.attrs["sources"]  # as written before the digests were kept
    with pytest.warns(UserWarning, match="predates the record-content check"):
        load_pool(subset, cache_dir=cache)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_pool(subset, cache_dir=cache)  # rebuilt once: a hit now


# ---------------------------------------------------------------------------- checksums


def test_a_flipped_byte_in_a_dat_is_caught_by_the_header_checksums(unsummed: Path) -> None:
    assert verify_header_checksums(unsummed, "100") == 2
    _flip(unsummed / "101.dat")
    with pytest.raises(DataError, match=r"checksum mismatch for .*101\.dat.*101\.hea"):
        verify_header_checksums(unsummed, "101")
    with pytest.warns(UserWarning, match="WFDB header checksums"), pytest.raises(
        DataError, match=r"101\.dat"
    ):
        build_pool(unsummed)


def test_a_file_missing_from_sha256sums_is_named(subset: Path, tmp_path: Path) -> None:
    sums = subset / "SHA256SUMS.txt"
    sums.write_text("".join(ln + "\n" for ln in sums.read_text().splitlines()
                            if not ln.endswith("101.dat")))
    with pytest.raises(DataError, match=r"101\.dat has no line in .*SHA256SUMS.*--allow-unlisted"):
        build_pool(subset)
    with pytest.warns(UserWarning, match=r"101\.dat has no line"):
        pool = load_pool(subset, cache_dir=tmp_path / "cache", allow_unlisted=True)
    assert _records(pool) == [100, 101]
    _flip(subset / "101.dat")  # unlisted, and still checked by its header
    with pytest.warns(UserWarning, match=r"101\.dat has no line"), pytest.raises(
        DataError, match=r"checksum mismatch for .*101\.dat"
    ):
        build_pool(subset, allow_unlisted=True)


# ---------------------------------------------------------------------------- cache directory


def test_stale_temporary_files_are_swept_and_fresh_ones_kept(subset: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    pools = pool_cache_path(PrepConfig(), cache).parent
    pools.mkdir(parents=True)
    stale, fresh = pools / ".pool-0123.hdf5.aaaa.tmp", pools / ".pool-0123.hdf5.bbbb.tmp"
    for tmp in (stale, fresh):
        tmp.write_bytes(b"\0" * 1000)
    old = time.time() - data.STALE_TMP_S - 60
    os.utime(stale, (old, old))
    load_pool(subset, cache_dir=cache)
    assert not stale.exists() and fresh.exists()


def test_a_file_valued_cache_dir_is_named_before_the_pool_is_built(
    subset: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    blocker = tmp_path / "cache"
    blocker.write_text("not a directory")
    monkeypatch.setattr("splitpriv.data.pool.build_pool", _never)
    with pytest.raises(DataError, match=rf"pool cache directory {blocker}.* not a"):
        load_pool(subset, cache_dir=blocker)
    rc = main(["data", "prepare", "--mitdb-dir", str(subset), "--cache-dir", str(blocker),
               "--protocol", "inter-patient", "--val-fraction", "0"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and str(blocker) in err and "Traceback" not in err
    assert blocker.read_text() == "not a directory"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to a read-only directory")
def test_a_read_only_cache_dir_is_named_before_the_pool_is_built(
    subset: Path, tmp_path: Path, monkeypatch
) -> None:
    cache = tmp_path / "cache"
    (cache / "pools").mkdir(parents=True)
    (cache / "pools").chmod(0o555)
    monkeypatch.setattr("splitpriv.data.pool.build_pool", _never)
    try:
        with pytest.raises(DataError, match=r"pool cache directory .*pools is not writable"):
            load_pool(subset, cache_dir=cache)
    finally:
        (cache / "pools").chmod(0o755)


def test_data_prepare_rebuild(subset: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    builds = []
    real = data.build_pool

    def counting(*args, **kwargs):
        builds.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr("splitpriv.data.pool.build_pool", counting)
    argv = ["data", "prepare", "--mitdb-dir", str(subset), "--cache-dir", str(tmp_path / "c"),
            "--protocol", "inter-patient", "--val-fraction", "0", "--json"]
    for extra, expected in (([], 1), ([], 1), (["--rebuild"], 2)):
        assert main(argv + extra) == 0
        assert len(builds) == expected
        card = json.loads(capsys.readouterr().out)
        assert card["records_train"] == [101] and card["records_test"] == [100]


# ---------------------------------------------------------------------------- the paper's HDF5


@pytest.fixture
def paper_files(subset: Path, tmp_path: Path) -> tuple[Path, Path]:
    """train_ecg.hdf5 / test_ecg.hdf5 of records 101 / 100 (N/L/R/A/V labels)."""
    pool = load_pool(subset, cache_dir=tmp_path / "cache",
                     prep=data.protocol_prep("inter-patient"))
    return write_paper_hdf5(make_split(pool, "inter-patient"), tmp_path / "files")


def test_a_run_trains_on_the_paper_s_hdf5_files(
    paper_files: tuple[Path, Path], tmp_path: Path, isolated_cache: Path
) -> None:
    train, test = paper_files
    config = TrainConfig(hdf5=f"{train},{test}", epochs=1, train_subset=64, test_subset=64,
                         device="cpu")
    data = build_run_data(config)  # --hdf5: the arrays dataset's paper layout
    with h5py.File(train, "r") as fh:
        np.testing.assert_array_equal(data.x_train, fh["x_train"][:64].astype(np.float32))
    card = data.card
    assert (card["protocol"], card["n_val"], card["labels"], card["layout"]) == (
        "hdf5", 0, "paper", "paper")
    assert card["hdf5"]["train"] == str(train) and len(card["hdf5"]["test_sha256"]) == 64
    assert card["pool_size"] == card["n_train"] + card["n_test"] and (data.record_test == -1).all()
    spec = TrainConfig(dataset=f"arrays:layout=paper,path={train},test_path={test}")
    assert torch.equal(build_run_data(spec).x_test[:64], data.x_test)  # the alias's spelled form
    carved = build_run_data(TrainConfig(hdf5=f"{train},{test}", val_fraction=0.2)).card
    assert carved["n_val"] > 0 and carved["n_train"] + carved["n_val"] == card["n_train"]
    result = run_training(config, tmp_path / "run", progress=False)
    assert result["dataset"]["hdf5"]["test"] == str(test)
    assert not (isolated_cache / "pools").exists()  # the records were never needed


@pytest.mark.parametrize(
    ("spec", "extra", "message"),
    [
        ("{train}", {}, "hdf5: expected TRAIN,TEST"),
        ("{train},", {}, "hdf5: expected TRAIN,TEST"),
        ("{train},{missing}", {}, "missing.hdf5 is not a file"),
        ("{test},{test}", {}, "no key 'x_train'"),
        ("{train},{test}", {"protocol": "inter-patient"}, "inter-patient"),
        ("{train},{test}", {"protocol": "inter-patient", "labels": "aami"}, "labels"),
        ("{train},{test}", {"dataset": "mitdb:leads=2"}, "takes the default --dataset mitdb"),
        ("{train},{test}", {"dataset": "digits"}, "takes the default --dataset mitdb"),
    ],
)
def test_bad_hdf5_options_are_named(
    paper_files: tuple[Path, Path], tmp_path: Path, spec: str, extra: dict, message: str
) -> None:
    train, test = paper_files
    with pytest.raises(ValueError, match=message):  # the config itself, or reading the files
        config = TrainConfig(hdf5=spec.format(train=train, test=test,
                                              missing=tmp_path / "missing.hdf5"), **extra)
        build_run_data(config)


def test_a_hdf5_run_s_config_loads_where_its_files_are_not(
    paper_files: tuple[Path, Path], tmp_path: Path
) -> None:
    """As before --hdf5 became arrays' paper layout: the files are read with the run's data."""
    config = TrainConfig(hdf5=f"{tmp_path / 'gone.hdf5'},{paper_files[1]}")
    (tmp_path / "config.json").write_text(json.dumps(dataclasses.asdict(config)))
    assert TrainConfig.load(tmp_path / "config.json").hdf5 == config.hdf5
    with pytest.raises(DataError, match="gone.hdf5 is not a file"):
        build_run_data(config)


def test_train_hdf5_from_the_cli_is_one_line(
    paper_files: tuple[Path, Path], tmp_path: Path, capsys
) -> None:
    rc = main(["train", "--hdf5", str(paper_files[0]), "--out", str(tmp_path / "r"),
               "--epochs", "1", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "hdf5: expected TRAIN,TEST" in err and err.count("\n") == 1


# ---------------------------------------------------------------------------- received runs


@pytest.fixture
def received_run(subset: Path, tmp_path: Path, isolated_cache: Path) -> Path:
    """A finished inter-patient run whose config.json names another machine's directories."""
    config = TrainConfig(protocol="inter-patient", val_fraction=0.0, epochs=1, train_subset=64,
                         test_subset=64, device="cpu", mitdb_dir=str(subset),
                         cache_dir=str(tmp_path / "cache-there"))
    out = tmp_path / "run"
    run_training(config, out, progress=False)
    shutil.rmtree(tmp_path / "cache-there")
    doc = json.loads((out / "config.json").read_text())
    doc |= {"mitdb_dir": str(tmp_path / "their" / "mitdb"),
            "cache_dir": str(tmp_path / "their" / "cache")}
    (out / "config.json").write_text(json.dumps(doc))
    return out


def test_an_attack_on_a_received_run_uses_the_local_cache_and_records(
    received_run: Path, subset: Path, tmp_path: Path, isolated_cache: Path, monkeypatch
) -> None:
    from attacks.runs import load_run

    monkeypatch.setenv("SPLITPRIV_MITDB", str(subset))
    with pytest.warns(UserWarning, match=r"names mitdb_dir .*their.*using the local records"):
        run = load_run(received_run)
    assert not (tmp_path / "their").exists()
    assert (isolated_cache / "pools").is_dir()
    assert run.config.cache_dir == str(tmp_path / "their" / "cache")  # the run's, as recorded
    assert len(run.y["train"]) == 64
    mine = tmp_path / "mine"
    load_run(received_run, cache_dir=mine, mitdb_dir=subset)
    assert (mine / "pools").is_dir()


def test_a_received_run_rebuilt_from_other_records_is_refused(
    received_run: Path, mitdb_dir: Path, tmp_path: Path, monkeypatch
) -> None:
    from attacks.runs import load_run

    other = make_subset(mitdb_dir, tmp_path / "other", ("100", "101", "103"))
    with pytest.raises(ValueError, match=r"not the run's: pool_size"):
        load_run(received_run, mitdb_dir=other)


# ---------------------------------------------------------------------------- the record list


def test_a_records_file_listing_a_record_twice_is_refused(subset: Path, tmp_path: Path) -> None:
    (subset / "RECORDS").write_text("100\n101\n100\n")
    with pytest.raises(DataError, match=r"RECORDS lists record\(s\) \['100'\] more than once"):
        load_pool(subset, cache_dir=tmp_path / "cache")


def test_a_record_deleted_with_its_records_line_but_summed_is_refused(subset: Path,
                                                                     tmp_path: Path) -> None:
    for ext in (".hea", ".dat", ".atr"):
        (subset / f"101{ext}").unlink()
    (subset / "RECORDS").write_text("100\n")
    with pytest.raises(DataError, match=r"SHA256SUMS\.txt lists the files of record\(s\) "
                                        r"\['101'\], which .*RECORDS does not list"):
        load_pool(subset, cache_dir=tmp_path / "cache")


def test_an_atr_cut_in_half_without_sha256sums_is_named(unsummed: Path, tmp_path: Path) -> None:
    atr = unsummed / "100.atr"
    atr.write_bytes(atr.read_bytes()[: atr.stat().st_size // 2])
    with pytest.raises(DataError, match=r"100\.atr is truncated"):
        load_pool(unsummed, cache_dir=tmp_path / "cache")


def test_the_card_names_the_database_records_a_pool_lacks(pool) -> None:
    from splitpriv.data import BeatPool, dataset_card

    prep = PrepConfig()
    assert dataset_card(pool, make_split(pool, "paper-unique"), prep)["records_missing"] == []
    keep = pool.record != 105
    lacking = BeatPool(x=pool.x[keep], y=pool.y[keep], record=pool.record[keep],
                       rpeak=pool.rpeak[keep], classes=pool.classes)
    card = dataset_card(lacking, make_split(lacking, "paper-unique"), prep)
    assert card["records_missing"] == [105]

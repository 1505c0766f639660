"""Shared pytest fixtures: the raw MIT-BIH records and the beat pool (built once per session).

Fixtures for other test modules:

* ``mitdb_dir`` (session): directory of the raw records; ``$SPLITPRIV_MITDB`` or
  ``<repo>/../shared/data/mitdb``. Tests using it are skipped when the records are absent.
* ``pool_cache_dir`` (session): a temporary cache root holding the session's pool HDF5 cache.
* ``pool`` (session): the full 96,049-beat :class:`splitpriv.data.BeatPool`.
* ``pool_dirs`` (session): ``(mitdb_dir, pool_cache_dir)`` with the pool already cached there,
  for code that takes directories (``load_pool(mitdb, cache_dir=cache)`` is then a cache hit).
* ``paper_split`` (session): ``make_split(pool, "paper")``.
* ``take_beats`` (session): ``take(n_train, n_test=0)`` -> the first rows of the paper-unique
  split as tensors ``(x, y, x_test, y_test)``.
* ``small_run_dir`` (session): a small undefended vanilla run directory, trained once.
* ``noise_transcript`` (session): a transcript with its activations replaced by noise.
* ``isolated_cache`` (function): points ``$SPLITPRIV_CACHE`` at a fresh temporary directory and
  unsets ``$SPLITPRIV_MITDB``/``$SPLITPRIV_MITDB_URL`` so a test never touches the user cache.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from splitpriv.data import BeatPool, Split, load_pool, make_split, missing_record_files


def _default_mitdb_dir() -> Path:
    env = os.environ.get("SPLITPRIV_MITDB")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "shared" / "data" / "mitdb"


@pytest.fixture(scope="session")
def mitdb_dir() -> Path:
    """Directory holding the raw MIT-BIH records (read-only: never write there)."""
    d = _default_mitdb_dir()
    missing = missing_record_files(d)
    if missing:
        pytest.skip(
            f"MIT-BIH records not available ({missing[0]} missing); "
            "set SPLITPRIV_MITDB to a directory holding mitdb 1.0.0"
        )
    return d


@pytest.fixture(scope="session")
def pool_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Session cache root for the pool HDF5 cache."""
    return tmp_path_factory.mktemp("splitpriv-cache")


@pytest.fixture(scope="session")
def pool(mitdb_dir: Path, pool_cache_dir: Path) -> BeatPool:
    """The full beat pool (built once per session, cached under ``pool_cache_dir``)."""
    return load_pool(mitdb_dir, cache_dir=pool_cache_dir)


@pytest.fixture(scope="session")
def pool_dirs(mitdb_dir: Path, pool_cache_dir: Path, pool: BeatPool) -> tuple[Path, Path]:
    """``(mitdb_dir, pool_cache_dir)``, the cache already holding the default pool."""
    return mitdb_dir, pool_cache_dir


@pytest.fixture(scope="session")
def paper_split(pool: BeatPool) -> Split:
    """The paper's split of the pool (13,245 train / 13,245 test)."""
    return make_split(pool, "paper")


@pytest.fixture(scope="session")
def take_beats(pool: BeatPool):
    """A function ``(n_train, n_test=0) -> (x, y, x_test, y_test)``: the first rows of the
    paper-unique split (no validation), x as (N, 1, 128) float32 tensors, y as int64."""
    split = make_split(pool, "paper-unique", val_fraction=0.0, seed=2019)

    def take(n_train: int, n_test: int = 0):
        def t(x, n):
            return torch.as_tensor(x[:n]).float().reshape(-1, 1, 128)

        return (
            t(split.x_train, n_train), torch.as_tensor(split.y_train[:n_train]).long(),
            t(split.x_test, n_test), torch.as_tensor(split.y_test[:n_test]).long(),
        )

    return take


@pytest.fixture
def isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh ``$SPLITPRIV_CACHE`` with the other splitpriv environment variables unset."""
    cache = tmp_path / "user-cache"
    monkeypatch.setenv("SPLITPRIV_CACHE", str(cache))
    for name in ("SPLITPRIV_MITDB", "SPLITPRIV_MITDB_URL"):
        monkeypatch.delenv(name, raising=False)
    return cache


@pytest.fixture(scope="session")
def small_run_dir(pool_dirs: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small undefended vanilla run (800 training beats of the paper-unique split, 4 epochs,
    seed 0, the last epoch's releases recorded), trained once per session: the unpaired and
    adaptive attacks' tests (``tests/test_sdar_fora.py``, ``tests/test_adaptive.py``)."""
    from splitpriv.io import torch_threads
    from splitpriv.run import TrainConfig, run_training

    mitdb, cache = pool_dirs
    out = tmp_path_factory.mktemp("runs") / "small"
    config = TrainConfig(protocol="paper-unique", epochs=4, train_subset=800, test_subset=200,
                         device="cpu", threads=1, mitdb_dir=str(mitdb), cache_dir=str(cache))
    with torch_threads(1):
        run_training(config, out, progress=False)
    return out


@pytest.fixture(scope="session")
def noise_transcript():
    """``noise(transcript, seed=0)``: the transcript with every activation message replaced by
    standard Gaussian noise of its shape (a channel that carries nothing about the beats), the
    other messages kept: where an attack must be at chance."""
    from splitpriv.channel import Kind

    def noise(transcript, seed: int = 0):
        gen = torch.Generator().manual_seed(seed)
        out = type(transcript)(policy=transcript.policy)
        for key, chunks in transcript.chunks.items():
            act = key[0] == Kind.ACTIVATIONS.value
            out.chunks[key] = [(ids, torch.randn(v.shape, generator=gen) if act else v)
                               for ids, v in chunks]
        return out

    return noise

"""The beat pool's cache: built once per preprocessing, served while its records are unchanged.

A pool (:class:`~splitpriv.data.beats.BeatPool`) takes seconds to build; :func:`load_pool` keeps
it in an HDF5 file of the cache root whose name is the preprocessing's key
(:meth:`~splitpriv.data.beats.PrepConfig.cache_key`), with the digests of the record files it was
built from, and rebuilds it when they change.
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from pathlib import Path

import numpy as np

from splitpriv.data.beats import (
    PAPER_PREP,
    PREP_VERSION,
    BeatPool,
    PrepConfig,
    build_pool,
    used_records,
)
from splitpriv.data.download import resolve_mitdb_dir
from splitpriv.data.hdf5 import atomic_h5
from splitpriv.data.records import (
    DIGESTS_FILE,
    MITDB_ENV,
    DataError,
    record_digests,
    user_cache_dir,
)


class CacheWriteError(DataError, OSError):
    """The pool cache could not be written (an OSError, named as a DataError: one line)."""


#: The datasets of a pool cache file, and their dtypes.
_POOL_KEYS = ("x", "y", "record", "rpeak")
#: A temporary file (``.NAME.*.tmp``, :func:`splitpriv.io.atomic_path`) in the cache older than
#: this many seconds is an orphan of a killed process (a pool write takes seconds) and is removed.
STALE_TMP_S = 600.0


def pool_cache_path(prep: PrepConfig = PAPER_PREP, cache_dir: Path | str | None = None) -> Path:
    """Return ``(cache_dir or user_cache_dir())/pools/pool-<prep.cache_key()>.hdf5``."""
    base = Path(cache_dir) if cache_dir is not None else user_cache_dir()
    return base / "pools" / f"pool-{prep.cache_key()}.hdf5"


def _write_pool_cache(
    path: Path, pool: BeatPool, prep: PrepConfig, records: list[str], sources: dict[str, str]
) -> None:
    try:
        with atomic_h5(path) as fh:
            for key in _POOL_KEYS:
                fh.create_dataset(key, data=getattr(pool, key))
            fh.attrs["prep"] = json.dumps(prep.to_dict(), sort_keys=True)
            fh.attrs["prep_version"] = PREP_VERSION
            fh.attrs["cache_key"] = prep.cache_key()
            fh.attrs["classes"] = pool.classes
            fh.attrs["records"] = json.dumps([int(r) for r in records])
            fh.attrs["sources"] = json.dumps(sources, sort_keys=True)
    except OSError as exc:
        raise CacheWriteError(f"pool cache {path} could not be written: {exc}") from exc


_POOL_DTYPES = {"x": np.float64, "y": np.int64, "record": np.int32, "rpeak": np.int64}


def _read_pool_cache(path: Path, prep: PrepConfig) -> tuple[BeatPool, dict[str, str]]:
    """Read and validate a pool cache file, returning it and the digests of the record files it
    was built from; raises DataError naming it when anything is off."""
    import h5py

    try:
        with h5py.File(path, "r") as fh:
            missing = [k for k in _POOL_KEYS if k not in fh]
            if missing:
                raise DataError(f"pool cache {path} lacks dataset {missing[0]!r}")
            if fh.attrs.get("cache_key") != prep.cache_key():
                raise DataError(f"pool cache {path} was written for another PrepConfig")
            if "sources" not in fh.attrs:
                raise DataError(
                    f"pool cache {path} predates the record-content check (no digests of its "
                    "record files)"
                )
            arrays = {k: fh[k][()] for k in _POOL_KEYS}
            sources = json.loads(fh.attrs["sources"])
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"pool cache {path} is unreadable: {exc}") from exc
    for key, dtype in _POOL_DTYPES.items():
        if arrays[key].dtype != dtype:
            raise DataError(f"pool cache {path}: {key} has dtype {arrays[key].dtype}, not {dtype}")
    n = len(arrays["y"])
    x = arrays["x"]
    if x.shape != (n, prep.beat_length) or any(
        arrays[k].shape != (n,) for k in ("record", "rpeak")
    ):
        raise DataError(
            f"pool cache {path}: inconsistent shapes {[arrays[k].shape for k in _POOL_KEYS]}"
        )
    if n == 0 or not np.all(np.isfinite(x)):
        raise DataError(f"pool cache {path}: empty or non-finite beats")
    if arrays["y"].min() < 0 or arrays["y"].max() >= len(prep.classes):
        raise DataError(f"pool cache {path}: labels outside 0..{len(prep.classes) - 1}")
    pool = BeatPool(**arrays, classes=prep.classes)
    return pool, {str(k): str(v) for k, v in sources.items()}


def _sources_differ(cached: dict[str, str], current: dict[str, str]) -> str:
    """How the record files a cache was built from differ from the current ones ("" if not)."""
    changed = sorted(f for f in set(cached) & set(current) if cached[f] != current[f])
    gone, new = sorted(set(cached) - set(current)), sorted(set(current) - set(cached))
    parts = [f"{what} {', '.join(files[:3])}{' ...' if len(files) > 3 else ''}"
             for what, files in (("changed:", changed), ("not here:", gone), ("new:", new))
             if files]
    return "; ".join(parts)


def _sweep_stale_tmp(directory: Path, prefix: str) -> None:
    """Remove the orphaned temporary files ``.PREFIX*.tmp`` of killed writers in ``directory``
    (those older than :data:`STALE_TMP_S`; a live writer's file is younger)."""
    import time

    if not directory.is_dir():
        return
    cutoff = time.time() - STALE_TMP_S
    for tmp in directory.glob(f".{prefix}*.tmp"):
        with contextlib.suppress(OSError):
            if tmp.is_file() and tmp.stat().st_mtime < cutoff:
                tmp.unlink()


def _check_cache_dir(directory: Path) -> None:
    """Create ``directory`` and make sure a file can be written in it, before any work.

    Raises:
        DataError: naming the directory, when it is a file, or cannot be created or written.
    """
    import tempfile

    hint = "give a writable --cache-dir or $SPLITPRIV_CACHE"
    for p in (directory, *directory.parents):
        if p.exists():
            if not p.is_dir():
                raise DataError(f"pool cache directory {p} is a file, not a directory; {hint}")
            break
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise DataError(f"pool cache directory {directory} is not writable ({reason}); "
                        f"{hint}") from None


def _local_records(mitdb_dir: Path | str | None) -> Path | None:
    """The records a cache is checked against: ``mitdb_dir`` or ``$SPLITPRIV_MITDB`` (an error
    when incomplete), else the user cache's copy if complete, else ``None`` (none here)."""
    if mitdb_dir is not None or os.environ.get(MITDB_ENV):
        return resolve_mitdb_dir(mitdb_dir)
    try:
        return resolve_mitdb_dir(download=False)
    except DataError:
        return None


def load_pool(
    mitdb_dir: Path | str | None = None,
    *,
    cache_dir: Path | str | None = None,
    prep: PrepConfig = PAPER_PREP,
    refresh: bool = False,
    progress: bool = False,
    allow_unlisted: bool = False,
) -> BeatPool:
    """Return the beat pool, from the HDF5 cache when possible.

    The cache file is ``pool_cache_path(prep, cache_dir)``; its name holds ``prep.cache_key()``,
    so changing any preprocessing parameter never reads a stale pool. It also holds the SHA-256
    of every record file (.hea/.dat/.atr) it was built from, and is served only while the
    records at hand (``mitdb_dir``, else ``$SPLITPRIV_MITDB``, else the user cache's copy) have
    those digests (:func:`record_digests`: a memo keyed by path, size and times makes this a few
    ``stat`` calls): an edited, emptied or swapped file or another record directory rebuilds it,
    with a warning naming what differs. With no records anywhere (none given, none in the user
    cache) a valid cache is served as it is. A cache that fails validation, or was written
    before the digests were kept, is rebuilt (with a warning naming it). Before building, the
    cache directory must be writable (else an error naming it); writes go to a temporary file
    renamed into place, and temporary files that killed processes left are removed.

    Args:
        mitdb_dir: Raw records; ``None`` resolves through :func:`resolve_mitdb_dir`.
        cache_dir: Cache root; ``None`` means :func:`user_cache_dir`.
        prep: Preprocessing parameters.
        refresh: Rebuild even when a valid cache exists.
        progress: Progress bar while building.
        allow_unlisted: Passed to :func:`build_pool`.

    Returns:
        The pool.

    Raises:
        DataError: naming the file or directory at fault, when records are missing or bad or
            the cache directory cannot be written.
    """
    path = pool_cache_path(prep, cache_dir)
    root = path.parent.parent
    _sweep_stale_tmp(path.parent, "pool-")
    _sweep_stale_tmp(root, DIGESTS_FILE)
    d = _local_records(mitdb_dir)
    if path.exists() and not refresh:
        try:
            pool, sources = _read_pool_cache(path, prep)
        except DataError as exc:
            warnings.warn(f"{exc}; rebuilding it", stacklevel=2)
        else:
            if d is None:
                return pool
            differ = _sources_differ(sources, record_digests(d, used_records(d, prep), root))
            if not differ:
                return pool
            warnings.warn(
                f"pool cache {path} was built from other records than those in {d} ({differ}); "
                "rebuilding it",
                stacklevel=2,
            )
    if d is None:
        d = resolve_mitdb_dir(None)  # downloads into the user cache
    _check_cache_dir(path.parent)
    names = used_records(d, prep)
    sources = record_digests(d, names, root)
    pool = build_pool(d, prep, progress=progress, allow_unlisted=allow_unlisted)
    _write_pool_cache(path, pool, prep, names, sources)
    return pool


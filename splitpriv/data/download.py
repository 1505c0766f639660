"""Where the MIT-BIH records come from: a directory given, or PhysioNet, downloaded and checked.

:func:`resolve_mitdb_dir` finds the records: the directory given, else ``$SPLITPRIV_MITDB``,
else the per-user cache's copy, downloaded into it by :func:`download_mitdb` when incomplete.

The database is published by PhysioNet under the ODC-By 1.0 licence (Moody & Mark 2001;
Goldberger et al. 2000). Its file index is ``RECORDS`` (one record name per line) and its
official checksums are in ``SHA256SUMS.txt`` (``<sha256>  <file name>`` per line).

:func:`download_mitdb` fetches ``RECORDS`` and ``SHA256SUMS.txt``, then the ``.hea``, ``.dat`` and
``.atr`` file of every record listed, into a temporary directory next to the destination. Every
file is checked against ``SHA256SUMS.txt`` before the directory is renamed into place, so the
destination either holds a complete, verified copy or is left as it was.

Files are fetched through a small callable interface, ``fetcher(filename, dest_path) -> None``.
The default is :class:`HttpFetcher`, which uses :mod:`urllib` (no extra dependency) against
``https://physionet.org/files/mitdb/1.0.0/``; the environment variable ``SPLITPRIV_MITDB_URL``
overrides the base URL (for a mirror, or a local server in tests).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path

from splitpriv.data import records
from splitpriv.data.records import (
    RECORD_EXTENSIONS,
    RECORDS_FILE,
    SUMS_FILE,
    DataError,
    parse_records,
    parse_sha256sums,
    progress_bar,
    sha256_file,
)

__all__ = [
    "DEFAULT_MITDB_URL",
    "Fetcher",
    "HttpFetcher",
    "default_base_url",
    "download_mitdb",
    "resolve_mitdb_dir",
]

#: Files of PhysioNet's mitdb 1.0.0, as served by PhysioNet.
DEFAULT_MITDB_URL = "https://physionet.org/files/mitdb/1.0.0/"
#: Environment variable that overrides :data:`DEFAULT_MITDB_URL`.
URL_ENV = "SPLITPRIV_MITDB_URL"
#: A fetcher writes the database file ``filename`` to ``dest_path`` or raises.
Fetcher = Callable[[str, Path], None]

_CHUNK = 1 << 16


def default_base_url() -> str:
    """Return the base URL of the mitdb files: ``$SPLITPRIV_MITDB_URL`` or PhysioNet's."""
    return os.environ.get(URL_ENV) or DEFAULT_MITDB_URL


class HttpFetcher:
    """Fetch database files over HTTP(S) with :mod:`urllib`.

    Args:
        base_url: URL of the directory holding the database files; ``None`` means
            :func:`default_base_url`.
        timeout: Socket timeout in seconds for each request.
    """

    def __init__(self, base_url: str | None = None, *, timeout: float = 60.0) -> None:
        url = base_url if base_url is not None else default_base_url()
        self.base_url = url if url.endswith("/") else url + "/"
        self.timeout = timeout

    def url_for(self, filename: str) -> str:
        """Return the URL of ``filename`` under :attr:`base_url`."""
        return urllib.parse.urljoin(self.base_url, urllib.parse.quote(filename))

    def __call__(self, filename: str, dest_path: Path) -> None:
        """Download ``filename`` into ``dest_path``.

        Raises:
            DataError: naming the URL, when the request fails.
        """
        url = self.url_for(filename)
        try:
            with (
                urllib.request.urlopen(url, timeout=self.timeout) as response,
                open(dest_path, "wb") as out,
            ):
                shutil.copyfileobj(response, out, _CHUNK)
        except (urllib.error.URLError, OSError) as exc:
            raise DataError(f"download of {filename} from {url} failed: {exc} (offline? give "
                            "the records' folder with --mitdb-dir or $SPLITPRIV_MITDB)") from exc

    def __repr__(self) -> str:
        return f"HttpFetcher({self.base_url!r}, timeout={self.timeout})"


def download_mitdb(
    dest: Path | str, *, fetcher: Fetcher | None = None, progress: bool = True
) -> Path:
    """Download and verify the MIT-BIH Arrhythmia Database into ``dest``.

    All files are first written to a temporary directory next to ``dest`` (same file system),
    each is checked against ``SHA256SUMS.txt``, and only then is the directory renamed to
    ``dest``. On any failure the temporary directory is removed and ``dest`` is untouched.
    An existing ``dest`` is replaced only after the new copy is complete and verified.

    Args:
        dest: Directory that will hold ``RECORDS``, ``SHA256SUMS.txt`` and the record files.
        fetcher: ``fetcher(filename, dest_path)`` writing one database file; ``None`` means
            ``HttpFetcher()`` (PhysioNet, or ``$SPLITPRIV_MITDB_URL``).
        progress: Show a tqdm progress bar over files.

    Returns:
        ``dest`` as a :class:`~pathlib.Path`.

    Raises:
        DataError: naming the file, when a download fails, a file has no checksum line, or a
            checksum does not match.
    """
    dest = Path(dest)
    fetch: Fetcher = fetcher if fetcher is not None else HttpFetcher()
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.part-", dir=dest.parent))
    try:
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it 0700
        fetch(SUMS_FILE, tmp / SUMS_FILE)
        fetch(RECORDS_FILE, tmp / RECORDS_FILE)
        sums = parse_sha256sums(tmp / SUMS_FILE)
        if RECORDS_FILE in sums:
            _check_sum(tmp / RECORDS_FILE, sums[RECORDS_FILE], RECORDS_FILE)
        names = parse_records(tmp / RECORDS_FILE)
        files = [f"{rec}{ext}" for rec in names for ext in RECORD_EXTENSIONS]
        missing = [f for f in files if f not in sums]
        if missing:
            raise DataError(
                f"{SUMS_FILE} has no checksum for {missing[0]}"
                + (f" (and {len(missing) - 1} more files)" if len(missing) > 1 else "")
            )
        for name in progress_bar(files, progress, "mitdb", "file"):
            target = tmp / name
            fetch(name, target)
            if not target.is_file():
                raise DataError(f"fetcher {fetch!r} did not write {name}")
            _check_sum(target, sums[name], name)
        _move_into_place(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _check_sum(path: Path, expected: str, name: str) -> None:
    actual = sha256_file(path)
    if actual != expected:
        raise DataError(
            f"checksum mismatch for downloaded file {name}: sha256 {actual}, "
            f"{SUMS_FILE} says {expected}"
        )


def _move_into_place(tmp: Path, dest: Path) -> None:
    """Rename ``tmp`` to ``dest``; an existing ``dest`` is moved aside first, then removed."""
    if not dest.exists():
        os.replace(tmp, dest)
        return
    if not dest.is_dir():
        raise DataError(f"download destination {dest} exists and is not a directory")
    old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old-", dir=dest.parent))
    os.rmdir(old)
    os.replace(dest, old)
    try:
        os.replace(tmp, dest)
    except BaseException:
        os.replace(old, dest)
        raise
    shutil.rmtree(old, ignore_errors=True)


def resolve_mitdb_dir(
    mitdb_dir: str | Path | None = None,
    *,
    download: bool = True,
    fetcher: Callable[[str, Path], None] | None = None,
) -> Path:
    """Find the directory holding the MIT-BIH records.

    Order: ``mitdb_dir`` if given, else ``$SPLITPRIV_MITDB``, else ``user_cache_dir()/mitdb``.
    A directory given explicitly or through the environment is never downloaded into; only the
    per-user cache directory is filled from PhysioNet (see
    :func:`download_mitdb`) when it is incomplete and ``download`` is true.

    Args:
        mitdb_dir: Explicit directory, or ``None``.
        download: Allow downloading into the per-user cache directory.
        fetcher: Passed to :func:`download_mitdb`.

    Returns:
        The directory, with ``RECORDS`` and every listed record's .hea/.dat/.atr present.

    Raises:
        DataError: naming the directory and the first missing file.
    """
    if mitdb_dir is not None or os.environ.get(records.MITDB_ENV):
        source = "mitdb_dir argument" if mitdb_dir is not None else f"${records.MITDB_ENV}"
        d = Path(mitdb_dir if mitdb_dir is not None else os.environ[records.MITDB_ENV]).expanduser()
        missing = records.missing_record_files(d)
        if missing == [d / RECORDS_FILE] and missing[0].is_file():
            records.record_names(d)  # a RECORDS file that cannot be used: its own error names why
        if missing:
            raise DataError(
                f"MIT-BIH directory {d} (from {source}) does not hold the records: "
                f"{missing[0]} is missing"
                + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
            )
        return d
    d = records.user_cache_dir() / "mitdb"
    missing = records.missing_record_files(d)
    if not missing:
        return d
    if not download:
        raise DataError(
            f"MIT-BIH records not found in the cache directory {d} ({missing[0]} is missing) and "
            f"download=False; pass mitdb_dir, set ${records.MITDB_ENV}, or allow the download"
        )
    download_mitdb(d, fetcher=fetcher)
    missing = records.missing_record_files(d)
    if missing:
        raise DataError(f"download into {d} is incomplete: {missing[0]} is missing")
    return d


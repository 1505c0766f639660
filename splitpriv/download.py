"""The former home of the MIT-BIH download, now :mod:`splitpriv.data.download` (checksums:
:mod:`splitpriv.data.records`); its names stay importable from here."""

from splitpriv.data.download import (
    DEFAULT_MITDB_URL,
    URL_ENV,
    Fetcher,
    HttpFetcher,
    default_base_url,
    download_mitdb,
    resolve_mitdb_dir,
)
from splitpriv.data.records import parse_records, parse_sha256sums, sha256_file

__all__ = [
    "DEFAULT_MITDB_URL",
    "URL_ENV",
    "Fetcher",
    "HttpFetcher",
    "default_base_url",
    "download_mitdb",
    "parse_records",
    "parse_sha256sums",
    "resolve_mitdb_dir",
    "sha256_file",
]

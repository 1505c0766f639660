"""Downloading mitdb over HTTP from a local server (no internet), with checksum failures."""

from __future__ import annotations

import functools
import hashlib
import http.server
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from splitpriv.data import DataError, build_pool, resolve_mitdb_dir, verify_checksums
from splitpriv.data.download import HttpFetcher, download_mitdb
from splitpriv.data.records import parse_sha256sums

RECORDS = ("100", "101")
FILES = [f"{r}{ext}" for r in RECORDS for ext in (".hea", ".dat", ".atr")]


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args) -> None:
        pass


@pytest.fixture
def served(mitdb_dir: Path, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """Serve a two-record copy of mitdb on 127.0.0.1; yields (base URL, served directory)."""
    root = tmp_path / "served"
    root.mkdir()
    wanted = set(FILES)
    for name in FILES:
        shutil.copyfile(mitdb_dir / name, root / name)
    (root / "RECORDS").write_text("".join(f"{r}\n" for r in RECORDS))
    lines = (mitdb_dir / "SHA256SUMS.txt").read_text().splitlines()
    (root / "SHA256SUMS.txt").write_text(
        "".join(ln + "\n" for ln in lines if ln.split()[-1] in wanted)
    )
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.timeout = 5
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", root
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _leftovers(parent: Path) -> list[str]:
    return [p.name for p in parent.iterdir() if p.name.startswith(".")]


def test_download_verifies_and_places_files(served, tmp_path: Path) -> None:
    url, root = served
    dest = tmp_path / "cache" / "mitdb"
    out = download_mitdb(dest, fetcher=HttpFetcher(url, timeout=5), progress=False)
    assert out == dest
    assert sorted(p.name for p in dest.iterdir()) == sorted([*FILES, "RECORDS", "SHA256SUMS.txt"])
    for name in FILES:
        assert (dest / name).read_bytes() == (root / name).read_bytes()
    assert verify_checksums(dest) == len(FILES)
    assert _leftovers(dest.parent) == []
    pool = build_pool(dest)
    assert sorted(set(pool.record.tolist())) == [100, 101]


def test_default_fetcher_uses_the_url_env(served, tmp_path: Path, monkeypatch) -> None:
    url, _ = served
    monkeypatch.setenv("SPLITPRIV_MITDB_URL", url.rstrip("/"))
    assert HttpFetcher().base_url == url
    dest = download_mitdb(tmp_path / "mitdb", progress=True)
    assert (dest / "100.dat").stat().st_size == 1_950_000


def test_corrupted_file_is_named_and_nothing_is_left(served, tmp_path: Path) -> None:
    url, root = served
    raw = bytearray((root / "101.atr").read_bytes())
    raw[100] ^= 0x01
    (root / "101.atr").write_bytes(bytes(raw))
    dest = tmp_path / "cache" / "mitdb"
    with pytest.raises(DataError, match=r"101\.atr"):
        download_mitdb(dest, fetcher=HttpFetcher(url, timeout=5), progress=False)
    assert not dest.exists()
    assert list(dest.parent.iterdir()) == []


def test_missing_remote_file_is_named(served, tmp_path: Path) -> None:
    url, root = served
    (root / "100.hea").unlink()
    dest = tmp_path / "mitdb"
    with pytest.raises(DataError, match=r"100\.hea"):
        download_mitdb(dest, fetcher=HttpFetcher(url, timeout=5), progress=False)
    assert list(tmp_path.iterdir()) == [root.parent / "served"]


def test_file_without_checksum_is_named(served, tmp_path: Path) -> None:
    url, root = served
    sums = root / "SHA256SUMS.txt"
    sums.write_text(
        "".join(ln + "\n" for ln in sums.read_text().splitlines() if "101.dat" not in ln)
    )
    with pytest.raises(DataError, match=r"101\.dat"):
        download_mitdb(tmp_path / "mitdb", fetcher=HttpFetcher(url, timeout=5), progress=False)


def test_failed_download_keeps_the_existing_copy(served, tmp_path: Path) -> None:
    url, root = served
    dest = tmp_path / "mitdb"
    download_mitdb(dest, fetcher=HttpFetcher(url, timeout=5), progress=False)
    before = {p.name: p.read_bytes() for p in dest.iterdir()}
    (root / "100.dat").write_bytes(b"\0" * 10)
    with pytest.raises(DataError, match=r"100\.dat"):
        download_mitdb(dest, fetcher=HttpFetcher(url, timeout=5), progress=False)
    assert {p.name: p.read_bytes() for p in dest.iterdir()} == before
    assert _leftovers(tmp_path) == []


def test_redownload_replaces_an_existing_directory(served, tmp_path: Path) -> None:
    url, _ = served
    dest = tmp_path / "mitdb"
    dest.mkdir()
    (dest / "stale.txt").write_text("old")
    download_mitdb(dest, fetcher=HttpFetcher(url, timeout=5), progress=False)
    assert not (dest / "stale.txt").exists() and (dest / "101.atr").is_file()
    assert _leftovers(tmp_path) == []


def test_unreachable_server_is_a_data_error(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(DataError, match="SHA256SUMS.txt"):
        fetcher = HttpFetcher(f"http://127.0.0.1:{port}/", timeout=2)
        download_mitdb(tmp_path / "mitdb", fetcher=fetcher, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_resolve_downloads_over_http_into_the_user_cache(served, isolated_cache: Path) -> None:
    url, _ = served
    d = resolve_mitdb_dir(fetcher=HttpFetcher(url, timeout=5))
    assert d == isolated_cache / "mitdb"
    assert verify_checksums(d) == len(FILES)


def test_parse_sha256sums(tmp_path: Path) -> None:
    digest = hashlib.sha256(b"x").hexdigest()
    path = tmp_path / "SHA256SUMS.txt"
    path.write_text(f"{digest}  a.dat\n\n{digest.upper()} *b.hea\n")
    assert parse_sha256sums(path) == {"a.dat": digest, "b.hea": digest}
    path.write_text("nonsense\n")
    with pytest.raises(DataError, match="SHA256SUMS.txt"):
        parse_sha256sums(path)


def test_an_unreachable_server_says_how_to_work_offline(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:  # a port nothing listens on: the connection is refused at once
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(DataError, match=r"offline\? give the records' folder with --mitdb-dir "
                                        r"or \$SPLITPRIV_MITDB"):
        download_mitdb(tmp_path / "mitdb", fetcher=HttpFetcher(f"http://127.0.0.1:{port}/",
                                                               timeout=5), progress=False)

"""The MIT-BIH records on disk: where they are, their checksums, their WFDB files, one record read.

The database (PhysioNet mitdb 1.0.0; Moody & Mark 2001, Goldberger et al. 2000) is a directory
holding ``RECORDS`` (one record name per line), ``SHA256SUMS.txt`` (``<sha256>  <file name>``)
and each record's ``.hea`` header, ``.dat`` signals and ``.atr`` reference annotations.
Everything here checks a file before it is used and names it when it is bad: a missing or
truncated file, a checksum that does not match (``SHA256SUMS.txt``, or the 16-bit checksums a WFDB
header carries for its signals), a record ``RECORDS`` does not list.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from splitpriv.io import write_json

#: Environment variables: the records' directory and the cache root.
MITDB_ENV = "SPLITPRIV_MITDB"
CACHE_ENV = "SPLITPRIV_CACHE"


#: The paced records, in neither of de Chazal's sets (AAMI EC57 leaves them out).
PACED_RECORDS = (102, 104, 107, 217)
#: de Chazal et al. 2004 training set DS1 (paced records 102, 104, 107, 217 are in neither set).
#: The paper's preprocessing also drops 114, so DS1 in a default pool has 21 of these 22 records;
#: the ``inter-patient`` pool (:func:`~splitpriv.data.protocols.protocol_prep`) has all 22.
DS1_RECORDS = (
    101, 106, 108, 109, 112, 114, 115, 116, 118, 119, 122,
    124, 201, 203, 205, 207, 208, 209, 215, 220, 223, 230,
)  # fmt: skip
#: de Chazal et al. 2004 test set DS2.
DS2_RECORDS = (
    100, 103, 105, 111, 113, 117, 121, 123, 200, 202, 210,
    212, 213, 214, 219, 221, 222, 228, 231, 232, 233, 234,
)  # fmt: skip
#: The 48 records of the MIT-BIH Arrhythmia Database 1.0.0 (its RECORDS file); a pool is the
#: database's only if it holds every one its preprocessing does not exclude (the card's
#: ``records_missing`` lists the others)
MITDB_RECORDS = tuple(sorted((*PACED_RECORDS, *DS1_RECORDS, *DS2_RECORDS)))


#: The database's record index (one record name per line) and checksum file (``sha256sum`` format).
RECORDS_FILE = "RECORDS"
SUMS_FILE = "SHA256SUMS.txt"
#: The files of every record named in RECORDS: header, signals, reference annotations.
RECORD_EXTENSIONS = (".hea", ".dat", ".atr")


#: The memo of record-file digests in a cache root: ``{path: [size, mtime_ns, ctime_ns, inode,
#: sha256]}``, so a cache hit stats the record files instead of hashing them.
DIGESTS_FILE = "record-digests.json"


class DataError(ValueError):
    """Bad or missing input data; the message names the offending file or argument."""


def user_cache_dir() -> Path:
    """Return the per-user cache directory (not created).

    ``$SPLITPRIV_CACHE`` if set, else ``$XDG_CACHE_HOME/splitpriv``, else ``~/.cache/splitpriv``.
    """
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return Path(xdg).expanduser() / "splitpriv"
    return Path.home() / ".cache" / "splitpriv"


def parse_records(path: Path) -> list[str]:
    """Return the record names listed in a WFDB ``RECORDS`` file, in file order.

    Raises:
        DataError: naming ``path``, when it lists no record or a name that is not a bare file name.
    """
    names = [ln.strip() for ln in Path(path).read_text(encoding="utf-8").splitlines()]
    names = [n for n in names if n]
    if not names:
        raise DataError(f"record index {path} lists no record")
    for name in names:
        if "/" in name or "\\" in name or name in (".", ".."):
            raise DataError(f"record index {path} lists an unsupported record name {name!r}")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise DataError(f"record index {path} lists record(s) {twice} more than once (their beats "
                        "would be in the pool twice)")
    return names


def record_names(mitdb_dir: Path | str) -> list[str]:
    """Return the record names listed in ``mitdb_dir/RECORDS``, in file order.

    Raises:
        DataError: naming the RECORDS file, when it is missing, empty or names a path.
    """
    path = Path(mitdb_dir) / RECORDS_FILE
    if not path.is_file():
        raise DataError(f"record index {path} not found")
    return parse_records(path)


def missing_record_files(mitdb_dir: Path | str) -> list[Path]:
    """Return the files that ``mitdb_dir`` should hold but does not (empty when complete).

    A missing ``RECORDS`` file is reported as the only missing file.
    """
    d = Path(mitdb_dir)
    if not (d / RECORDS_FILE).is_file():
        return [d / RECORDS_FILE]
    try:
        names = record_names(d)
    except DataError:
        return [d / RECORDS_FILE]
    return [
        d / f"{n}{ext}"
        for n in names
        for ext in RECORD_EXTENSIONS
        if not (d / f"{n}{ext}").is_file()
    ]


def _wfdb() -> Any:
    """Import wfdb, hiding the pandas deprecation warnings its import triggers (not ours)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*inplace keyword.*")
        import wfdb
    return wfdb


def sha256_file(path: Path) -> str:
    """Return the hex SHA-256 digest of the file at ``path``."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def parse_sha256sums(path: Path) -> dict[str, str]:
    """Parse a ``sha256sum``-style file into ``{file name: hex digest}``.

    Raises:
        DataError: naming ``path`` and the line, when a line is malformed.
    """
    sums: dict[str, str] = {}
    text = Path(path).read_text(encoding="utf-8")
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split(None, 1)
        digest = parts[0].lower()
        if len(parts) != 2 or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise DataError(f"{path}: line {lineno} is not '<sha256>  <file>': {line!r}")
        name = parts[1].strip()
        sums[name.removeprefix("*")] = digest
    return sums


def verify_checksums(
    mitdb_dir: Path | str, files: Sequence[str] | None = None, *, allow_unlisted: bool = False
) -> int:
    """Check files of ``mitdb_dir`` against its ``SHA256SUMS.txt``.

    Hashing the whole database (about 100 MB) takes well under a second.

    Args:
        mitdb_dir: Directory holding ``SHA256SUMS.txt``.
        files: File names to check; ``None`` checks every file listed.
        allow_unlisted: A name of ``files`` that has no checksum line is skipped with a warning
            naming it, instead of an error.

    Returns:
        Number of files checked.

    Raises:
        DataError: naming the file, when ``SHA256SUMS.txt`` or a listed file is missing, a
            digest does not match, or (unless ``allow_unlisted``) a name of ``files`` has no
            checksum line.
    """
    d = Path(mitdb_dir)
    sums_path = d / SUMS_FILE
    if not sums_path.is_file():
        raise DataError(f"checksum file {sums_path} not found")
    sums = parse_sha256sums(sums_path)
    unlisted = [] if files is None else [f for f in files if f not in sums]
    if unlisted:
        more = f" (and {len(unlisted) - 1} more)" if len(unlisted) > 1 else ""
        if not allow_unlisted:
            raise DataError(
                f"{d / unlisted[0]}{more} has no line in {sums_path}, so it cannot be checked; "
                "add its line, or accept it unchecked with --allow-unlisted"
            )
        warnings.warn(
            f"{d / unlisted[0]}{more} has no line in {sums_path}: used without its SHA-256 "
            "check (--allow-unlisted; the WFDB header checksums of its signals are still checked)",
            stacklevel=2,
        )
    names = list(sums) if files is None else [f for f in files if f in sums]
    for name in names:
        path = d / name
        if not path.is_file():
            raise DataError(f"{path} is listed in {sums_path} but missing")
        actual = sha256_file(path)
        if actual != sums[name]:
            raise DataError(
                f"checksum mismatch for {path}: sha256 {actual}, {sums_path.name} says {sums[name]}"
            )
    return len(names)


def verify_header_checksums(mitdb_dir: Path | str, name: str | int) -> int:
    """Check a record's signals against the checksums its WFDB header carries.

    Each signal line of a ``.hea`` file may end with the 16-bit checksum of that signal's
    samples (their sum, modulo 2**16, as a signed number); a flipped byte in the ``.dat`` changes
    it. The ``.atr`` annotations carry no checksum: only ``SHA256SUMS.txt`` covers them.

    Returns:
        The number of signals checked (those whose header line has a checksum).

    Raises:
        DataError: naming the ``.dat`` file and the signal, when a checksum does not match.
    """
    wfdb = _wfdb()
    d = Path(mitdb_dir)
    name = str(name)
    check_record_files(d, name)
    try:
        rec = wfdb.rdrecord(str(d / name), physical=False)
    except Exception as exc:
        raise DataError(f"record {name} in {d}: wfdb could not read it: {exc}") from exc
    sums = np.asarray(rec.d_signal, dtype=np.int64).sum(axis=0)  # (n_sig,)
    actual = (sums + 2**15) % 2**16 - 2**15
    checked = 0
    for i, expected in enumerate(rec.checksum or []):
        if expected is None:
            continue
        checked += 1
        if int(actual[i]) != int(expected):
            raise DataError(
                f"checksum mismatch for {d / rec.file_name[i]}: signal {i} ({rec.sig_name[i]}) "
                f"sums to {int(actual[i])}, its header {d / f'{name}.hea'} says {int(expected)} "
                "(the file is corrupt)"
            )
    return checked


def record_digests(
    mitdb_dir: Path | str, names: Sequence[str], cache_dir: Path | str | None = None
) -> dict[str, str]:
    """The SHA-256 of every ``.hea``/``.dat``/``.atr`` file of the records ``names``.

    A file whose path, size, modification and change times and inode the memo
    (:data:`DIGESTS_FILE` in ``cache_dir``, else :func:`user_cache_dir`) knows is not hashed
    again; the memo is updated when it can be written (it is only a shortcut).

    Returns:
        ``{file name: hex digest}``.
    """
    d = Path(mitdb_dir)
    memo_path = (Path(cache_dir) if cache_dir is not None else user_cache_dir()) / DIGESTS_FILE
    try:
        memo = json.loads(memo_path.read_text(encoding="utf-8"))
        if not isinstance(memo, dict):
            memo = {}
    except (OSError, ValueError):
        memo = {}
    out: dict[str, str] = {}
    changed = False
    for fname in (f"{n}{ext}" for n in names for ext in RECORD_EXTENSIONS):
        path = (d / fname).resolve()
        st = path.stat()
        stamp = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
        known = memo.get(str(path))
        if isinstance(known, list) and len(known) == 5 and known[:4] == stamp:
            out[fname] = str(known[4])
            continue
        out[fname] = sha256_file(path)
        memo[str(path)] = [*stamp, out[fname]]
        changed = True
    if changed:
        with contextlib.suppress(OSError):
            write_json(memo_path, memo)
    return out


# Bytes per sample group of WFDB signal formats: (samples per group, bytes per group).
_FORMAT_BYTES: dict[str, tuple[int, int]] = {
    "8": (1, 1), "16": (1, 2), "24": (1, 3), "32": (1, 4), "61": (1, 2), "80": (1, 1),
    "160": (1, 2), "212": (2, 3), "310": (3, 4), "311": (3, 4),
}  # fmt: skip


def check_sums_cover_only_listed(d: Path) -> None:
    """Refuse a database whose ``SHA256SUMS.txt`` lists record files of a record its ``RECORDS``
    does not list (a record deleted with its RECORDS line: the pool would silently lack it)."""
    listed = set(record_names(d))
    stray = sorted({Path(f).stem for f in parse_sha256sums(d / SUMS_FILE)
                    if Path(f).suffix in RECORD_EXTENSIONS and Path(f).stem not in listed})
    if stray:
        raise DataError(f"{d / SUMS_FILE} lists the files of record(s) {stray}, which "
                        f"{d / RECORDS_FILE} does not list: the database is incomplete or edited; "
                        "restore them (or remove their lines from both files on purpose)")


def _check_annotation_end(path: Path, name: str) -> None:
    """A WFDB annotation file ends with its end-of-file marker, two zero bytes, after whole
    16-bit words; a file cut short does not (an empty one is named by :func:`read_record`)."""
    size = path.stat().st_size
    if size == 0:
        return
    with path.open("rb") as fh:
        fh.seek(max(size - 2, 0))
        tail = fh.read()
    if size % 2 or tail != b"\0\0":
        raise DataError(f"record {name}: annotation file {path} is truncated ({size:,} bytes, "
                        "no WFDB end-of-file marker)")


def check_record_files(d: Path, name: str) -> None:
    """Check that the record's files exist, that its .dat files are long enough and that its
    .atr file ends as a WFDB annotation file does."""
    wfdb = _wfdb()

    for ext in RECORD_EXTENSIONS:
        path = d / f"{name}{ext}"
        if not path.is_file():
            raise DataError(f"record {name}: file {path} not found")
    _check_annotation_end(d / f"{name}.atr", name)
    try:
        header = wfdb.rdheader(str(d / name))
    except Exception as exc:  # wfdb raises many types for bad headers
        raise DataError(f"record {name}: cannot parse header {d / f'{name}.hea'}: {exc}") from exc
    if not header.sig_len or not header.n_sig:
        raise DataError(f"record {name}: header {d / f'{name}.hea'} gives no signal length")
    per_file: dict[str, list[tuple[str, int]]] = {}
    offsets = header.byte_offset or [None] * header.n_sig
    for fname, fmt, off in zip(header.file_name, header.fmt, offsets, strict=False):
        per_file.setdefault(fname, []).append((str(fmt), int(off or 0)))
    for fname, sigs in per_file.items():
        path = d / fname
        if not path.is_file():
            raise DataError(f"record {name}: signal file {path} not found")
        fmt, offset = sigs[0]
        if fmt not in _FORMAT_BYTES or any(f != fmt for f, _ in sigs):
            continue  # unusual layout: leave it to wfdb
        per_group, nbytes = _FORMAT_BYTES[fmt]
        n_samples = header.sig_len * len(sigs)
        expected = offset + -(-n_samples // per_group) * nbytes
        size = path.stat().st_size
        if size < expected:
            raise DataError(
                f"record {name}: signal file {path} is truncated: {size} bytes, header implies "
                f"{expected} ({header.sig_len} samples x {len(sigs)} channels, format {fmt})"
            )


def read_record(
    mitdb_dir: Path | str, name: str | int, *, channel: int = 0, lead: str = ""
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Read one channel and the reference annotations of a record.

    Args:
        mitdb_dir: Directory holding ``<name>.hea/.dat/.atr``.
        name: Record name, e.g. ``100``.
        channel: Channel index (unless ``lead`` is given).
        lead: Signal name of the channel to read (``"MLII"``: channel 1 of record 114, channel 0
            of the other records that have it); empty: read ``channel``.

    Returns:
        ``(signal, ann_samples, ann_symbols)``: signal (n_samples,) float64 in physical units;
        annotation sample indices (n_ann,) int64; annotation symbols (n_ann,).

    Raises:
        DataError: naming the file or record, when a file is missing, a .dat file is shorter than
            its header implies, the record has no ``lead``, or wfdb fails.
    """
    wfdb = _wfdb()
    d = Path(mitdb_dir)
    name = str(name)
    check_record_files(d, name)
    base = str(d / name)
    if lead:
        names = list(wfdb.rdheader(base).sig_name or [])
        if lead not in names:
            raise DataError(f"record {name} in {d} has no {lead} lead (signals: {names})")
        channel = names.index(lead)
    try:
        with warnings.catch_warnings():
            # wfdb's annotation tables trip a pandas deprecation warning; not ours to fix.
            warnings.filterwarnings("ignore", message=".*inplace keyword.*")
            rec = wfdb.rdrecord(base, channels=[channel])
            ann = wfdb.rdann(base, "atr")
    except Exception as exc:
        raise DataError(f"record {name} in {d}: wfdb could not read it: {exc}") from exc
    if rec.p_signal is None or rec.p_signal.ndim != 2 or rec.p_signal.shape[1] != 1:
        raise DataError(f"record {name} in {d}: channel {channel} could not be read")
    sig = np.asarray(rec.p_signal[:, 0], dtype=np.float64)  # (n_samples,)
    if not np.all(np.isfinite(sig)):
        raise DataError(f"record {name} in {d}: channel {channel} holds NaN/inf samples")
    if len(ann.sample) == 0:
        raise DataError(f"record {name}: annotation file {d / f'{name}.atr'} holds no annotation")
    return sig, np.asarray(ann.sample, dtype=np.int64), list(ann.symbol)


def progress_bar(items: list, enabled: bool, desc: str, unit: str):
    """``items`` behind a tqdm progress bar when ``enabled``, else ``items`` as they are."""
    if not enabled:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, unit=unit)


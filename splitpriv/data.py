"""MIT-BIH beat pool, the paper's preprocessing, train/test protocols and HDF5 I/O.

Preprocessing follows the code of Abuadbba et al., "Can We Use Split Learning on 1D CNN Models
for Privacy Preserving Training?" (ASIACCS 2020, arXiv 2003.12365), whose numbers came from its
notebooks rather than from the paper text:

1. Records: every record of the MIT-BIH Arrhythmia Database (PhysioNet mitdb 1.0.0) except
   102, 104, 107, 114 and 217 (43 records); channel 0.
2. Min-max normalisation of the whole channel to [0, 1].
3. R-peaks are the annotation sample positions, dropping the first and the last annotation.
4. Each interior annotation with symbol N, L, R, A or V gives the 201-sample window
   ``[r_i - 100, r_i + 100]`` if that lies inside the signal and the neighbouring annotations
   lie outside it.
5. ``scipy.signal.resample`` to 128 samples, then wavelet denoising (``bior4.4``, full depth,
   soft threshold ``0.005 * sqrt(2 * log2(128))`` on every coefficient array).
6. Labels N=0, L=1, R=2, A=3, V=4. Pool: 96,049 beats (N 71,732, L 8,036, R 7,231, A 2,491,
   V 6,559).
7. The paper's split (:func:`make_split` with ``protocol="paper"``): 6000/6000/6000/2490/6000
   draws per class *with replacement*, half to train and half to test.

Two alternatives to the paper's split are offered: ``paper-unique`` (same sizes, drawn without
replacement, so no beat is in both halves) and ``inter-patient`` (de Chazal, O'Dwyer & Reilly,
"Automatic classification of heartbeats using ECG morphology and heartbeat interval features",
IEEE TBME 51(7):1196-1206, 2004: DS1 records train, DS2 records test). ``inter-patient`` has its
own pool (:func:`protocol_prep`): de Chazal's 44 records (every record but the paced 102, 104, 107
and 217, so 114 is in), each read from its MLII lead whichever channel holds it (channel 1 of
record 114, channel 0 elsewhere), steps 2-5 as above. Its labels are the paper's five beat types
or the AAMI classes (:data:`LABEL_SCHEMES`).

Data: Moody GB, Mark RG, "The impact of the MIT-BIH Arrhythmia Database", IEEE EMB 20(3), 2001;
Goldberger AL et al., "PhysioBank, PhysioToolkit, and PhysioNet", Circulation 101(23), 2000.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from splitpriv.io import atomic_path

__all__ = [
    "AAMI_CLASSES",
    "AAMI_SYMBOLS",
    "DS1_RECORDS",
    "DS2_RECORDS",
    "LABEL_SCHEMES",
    "MITDB_RECORDS",
    "PACED_RECORDS",
    "PAPER_CLASS_DRAWS",
    "PREP_VERSION",
    "PROTOCOLS",
    "BeatPool",
    "CacheWriteError",
    "DataError",
    "PrepConfig",
    "Split",
    "build_pool",
    "check_labels",
    "count_duplicate_rows",
    "dataset_card",
    "load_pool",
    "make_split",
    "missing_record_files",
    "paper_hdf5_split",
    "parse_hdf5_pair",
    "pool_cache_path",
    "protocol_prep",
    "read_paper_hdf5",
    "read_record",
    "record_digests",
    "record_names",
    "resolve_mitdb_dir",
    "user_cache_dir",
    "verify_checksums",
    "verify_header_checksums",
    "write_paper_hdf5",
]

#: Bump when the preprocessing code changes in a way that changes the pool; part of cache keys.
PREP_VERSION = 1

#: Environment variables.
MITDB_ENV = "SPLITPRIV_MITDB"
CACHE_ENV = "SPLITPRIV_CACHE"

#: Per-class draw sizes of the paper's protocol (classes N, L, R, A, V); half go to each side.
PAPER_CLASS_DRAWS = (6000, 6000, 6000, 2490, 6000)

#: The paced records, in neither of de Chazal's sets (AAMI EC57 leaves them out).
PACED_RECORDS = (102, 104, 107, 217)
#: de Chazal et al. 2004 training set DS1 (paced records 102, 104, 107, 217 are in neither set).
#: The paper's preprocessing also drops 114, so DS1 in a default pool has 21 of these 22 records;
#: the ``inter-patient`` pool (:func:`protocol_prep`) has all 22.
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

#: The AAMI heartbeat classes (ANSI/AAMI EC57; de Chazal et al. 2004, Table I): N normal and
#: bundle branch block beats, S supraventricular ectopic, V ventricular ectopic, F fusion of
#: ventricular and normal, Q paced, fusion of paced and normal, and unclassifiable.
AAMI_CLASSES = "NSVFQ"
#: MIT-BIH beat annotation symbol -> AAMI class (the standard EC57 mapping, de Chazal et al.
#: 2004 Table I). Other symbols (rhythm, noise, flutter waves ``!``, non-conducted P waves ``x``,
#: isolated QRS-like artefacts ``|``) are not beats of any class and are skipped.
AAMI_SYMBOLS: dict[str, str] = {
    "N": "N", "L": "N", "R": "N", "e": "N", "j": "N",
    "A": "S", "a": "S", "J": "S", "S": "S",
    "V": "V", "E": "V",
    "F": "F",
    "/": "Q", "f": "Q", "Q": "Q",
}  # fmt: skip
#: Label schemes: ``paper``, the paper's five beat types (``PrepConfig.classes``, each symbol its
#: own class), and ``aami``, :data:`AAMI_CLASSES` from :data:`AAMI_SYMBOLS`.
LABEL_SCHEMES = ("paper", "aami")

#: The database's record index (one record name per line) and checksum file (``sha256sum`` format).
RECORDS_FILE = "RECORDS"
SUMS_FILE = "SHA256SUMS.txt"
#: The files of every record named in RECORDS: header, signals, reference annotations.
RECORD_EXTENSIONS = (".hea", ".dat", ".atr")
_POOL_KEYS = ("x", "y", "record", "rpeak")
#: The memo of record-file digests in a cache root: ``{path: [size, mtime_ns, ctime_ns, inode,
#: sha256]}``, so a cache hit stats the record files instead of hashing them.
DIGESTS_FILE = "record-digests.json"
#: A temporary file (``.NAME.*.tmp``, :func:`splitpriv.io.atomic_path`) in the cache older than
#: this many seconds is an orphan of a killed process (a pool write takes seconds) and is removed.
STALE_TMP_S = 600.0


class DataError(ValueError):
    """Bad or missing input data; the message names the offending file or argument."""


class CacheWriteError(DataError, OSError):
    """The pool cache could not be written (an OSError, named as a DataError: one line)."""


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PrepConfig:
    """Parameters of the beat preprocessing (defaults: the paper's code).

    Attributes:
        excluded_records: Records left out of the pool (paper: the paced 102, 104, 107, 217 and
            114, whose channel 0 is not MLII).
        channel: Signal channel read from each record.
        half_window: Samples kept each side of the R-peak (window = 2 * half_window + 1).
        beat_length: Samples per beat after ``scipy.signal.resample``.
        wavelet: PyWavelets wavelet name for denoising.
        threshold_scale: Soft threshold is ``threshold_scale * sqrt(2 * log2(beat_length))``.
        classes: Class names; the label of a beat is its class's index here. Under
            ``labels="paper"`` the classes are the annotation symbols kept; under ``"aami"`` they
            are :data:`AAMI_CLASSES` (the paper's default ``"NLRAV"`` becomes them).
        lead: Read the channel whose signal name is this (``"MLII"``) in every record, instead of
            ``channel``; empty: ``channel`` everywhere. A record without the lead is an error.
        labels: Label scheme, one of :data:`LABEL_SCHEMES`.
    """

    excluded_records: tuple[int, ...] = (102, 104, 107, 114, 217)
    channel: int = 0
    half_window: int = 100
    beat_length: int = 128
    wavelet: str = "bior4.4"
    threshold_scale: float = 0.005
    classes: str = "NLRAV"
    lead: str = ""
    labels: str = "paper"

    def __post_init__(self) -> None:
        object.__setattr__(self, "excluded_records", tuple(int(r) for r in self.excluded_records))
        if self.labels not in LABEL_SCHEMES:
            raise DataError(
                f"PrepConfig.labels must be one of {LABEL_SCHEMES}, got {self.labels!r}"
            )
        if self.labels == "aami" and self.classes == "NLRAV":  # the default follows the scheme
            object.__setattr__(self, "classes", AAMI_CLASSES)
        if self.labels == "aami" and self.classes != AAMI_CLASSES:
            raise DataError(
                f"PrepConfig.classes must be {AAMI_CLASSES!r} under labels='aami', "
                f"got {self.classes!r}"
            )
        if self.channel < 0:
            raise DataError(f"PrepConfig.channel must be >= 0, got {self.channel}")
        if self.half_window < 1:
            raise DataError(f"PrepConfig.half_window must be >= 1, got {self.half_window}")
        if self.beat_length < 2:
            raise DataError(f"PrepConfig.beat_length must be >= 2, got {self.beat_length}")
        if not (self.threshold_scale >= 0 and np.isfinite(self.threshold_scale)):
            raise DataError(
                f"PrepConfig.threshold_scale must be finite and >= 0, got {self.threshold_scale}"
            )
        if not self.classes or len(set(self.classes)) != len(self.classes):
            raise DataError(f"PrepConfig.classes must be distinct symbols, got {self.classes!r}")
        import pywt

        if self.wavelet not in pywt.wavelist(kind="discrete"):
            raise DataError(f"PrepConfig.wavelet {self.wavelet!r} is not a discrete pywt wavelet")

    @property
    def threshold(self) -> float:
        """Soft threshold applied to every wavelet coefficient array."""
        return float(self.threshold_scale * np.sqrt(2.0 * np.log2(self.beat_length)))

    @property
    def symbol_labels(self) -> dict[str, int]:
        """Annotation symbol -> label of every beat symbol the pool keeps."""
        if self.labels == "aami":
            return {s: AAMI_CLASSES.index(c) for s, c in AAMI_SYMBOLS.items()}
        return {c: i for i, c in enumerate(self.classes)}

    def to_dict(self) -> dict[str, Any]:
        """Return the fields as JSON-ready values."""
        d = dataclasses.asdict(self)
        d["excluded_records"] = list(self.excluded_records)
        return d

    def cache_key(self) -> str:
        """Return a 16-hex-digit key over every field and :data:`PREP_VERSION`.

        ``lead`` and ``labels`` enter the key only when set (not ``""`` / ``"paper"``), so the
        paper pool's cache, written before they existed, keeps its key; the record list enters
        through ``excluded_records``."""
        d = self.to_dict()
        for name, default in (("lead", ""), ("labels", "paper")):
            if d[name] == default:
                del d[name]
        payload = json.dumps(
            {"prep_version": PREP_VERSION, **d}, sort_keys=True, separators=(",", ":")
        )
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]


# --------------------------------------------------------------------------------------------
# Locating and checking records
# --------------------------------------------------------------------------------------------


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
    :func:`splitpriv.download.download_mitdb`) when it is incomplete and ``download`` is true.

    Args:
        mitdb_dir: Explicit directory, or ``None``.
        download: Allow downloading into the per-user cache directory.
        fetcher: Passed to :func:`splitpriv.download.download_mitdb`.

    Returns:
        The directory, with ``RECORDS`` and every listed record's .hea/.dat/.atr present.

    Raises:
        DataError: naming the directory and the first missing file.
    """
    if mitdb_dir is not None or os.environ.get(MITDB_ENV):
        source = "mitdb_dir argument" if mitdb_dir is not None else f"${MITDB_ENV}"
        d = Path(mitdb_dir if mitdb_dir is not None else os.environ[MITDB_ENV]).expanduser()
        missing = missing_record_files(d)
        if missing == [d / RECORDS_FILE] and missing[0].is_file():
            record_names(d)  # a RECORDS file that cannot be used: its own error names why
        if missing:
            raise DataError(
                f"MIT-BIH directory {d} (from {source}) does not hold the records: "
                f"{missing[0]} is missing"
                + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
            )
        return d
    d = user_cache_dir() / "mitdb"
    missing = missing_record_files(d)
    if not missing:
        return d
    if not download:
        raise DataError(
            f"MIT-BIH records not found in the cache directory {d} ({missing[0]} is missing) and "
            f"download=False; pass mitdb_dir, set ${MITDB_ENV}, or allow the download"
        )
    from splitpriv.download import download_mitdb

    download_mitdb(d, fetcher=fetcher)
    missing = missing_record_files(d)
    if missing:
        raise DataError(f"download into {d} is incomplete: {missing[0]} is missing")
    return d


def _wfdb() -> Any:
    """Import wfdb, hiding the pandas deprecation warnings its import triggers (not ours)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*inplace keyword.*")
        import wfdb
    return wfdb


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
    from splitpriv.download import parse_sha256sums, sha256_file

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
    _check_record_files(d, name)
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
    from splitpriv.download import sha256_file
    from splitpriv.io import write_json

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


def _check_sums_cover_only_listed(d: Path) -> None:
    """Refuse a database whose ``SHA256SUMS.txt`` lists record files of a record its ``RECORDS``
    does not list (a record deleted with its RECORDS line: the pool would silently lack it)."""
    from splitpriv.download import parse_sha256sums

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


def _check_record_files(d: Path, name: str) -> None:
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
    _check_record_files(d, name)
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


# --------------------------------------------------------------------------------------------
# Beat pool
# --------------------------------------------------------------------------------------------


@dataclass
class BeatPool:
    """All preprocessed beats, records in ascending order, beats in annotation order.

    Attributes:
        x: (N, beat_length) float64 denoised beats.
        y: (N,) int64 labels, indices into ``classes``.
        record: (N,) int32 record number of each beat.
        rpeak: (N,) int64 R-peak sample index of each beat in its record.
        classes: Class symbols; ``classes[y[i]]`` is the annotation symbol of beat i.
    """

    x: np.ndarray
    y: np.ndarray
    record: np.ndarray
    rpeak: np.ndarray
    classes: str = "NLRAV"

    def __post_init__(self) -> None:
        n = len(self.y)
        if (
            self.x.ndim != 2
            or self.x.shape[0] != n
            or len(self.record) != n
            or len(self.rpeak) != n
        ):
            raise DataError(
                f"BeatPool arrays disagree: x {self.x.shape}, y {self.y.shape}, "
                f"record {self.record.shape}, rpeak {self.rpeak.shape}"
            )

    def __len__(self) -> int:
        return len(self.y)

    def class_counts(self) -> dict[str, int]:
        """Return ``{class symbol: number of beats}``."""
        return _class_counts(self.y, self.classes)


def _class_counts(y: np.ndarray, classes: str) -> dict[str, int]:
    counts = np.bincount(np.asarray(y, dtype=np.int64), minlength=len(classes))
    return {c: int(counts[i]) for i, c in enumerate(classes)}


def progress_bar(items: list, enabled: bool, desc: str, unit: str):
    """``items`` behind a tqdm progress bar when ``enabled``, else ``items`` as they are."""
    if not enabled:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, unit=unit)


def _record_beats(
    sig: np.ndarray, samples: np.ndarray, symbols: list[str], prep: PrepConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Select the beats of one record (paper steps 3-4), of the symbols ``prep`` labels.

    Returns:
        ``(rpeaks, labels)``: (n_beats,) int64 R-peak indices, (n_beats,) int64 labels.
    """
    r = samples[1:-1]  # drop the first and last annotation
    sym = symbols[1:-1]
    w = prep.half_window
    last = len(sig) - 1
    label_of = prep.symbol_labels
    keep_r: list[int] = []
    keep_y: list[int] = []
    for i in range(1, len(r) - 1):
        s = sym[i]
        if s not in label_of:
            continue
        lo, hi = r[i] - w, r[i] + w
        if lo >= 0 and lo >= r[i - 1] and hi <= last and hi <= r[i + 1]:
            keep_r.append(int(r[i]))
            keep_y.append(label_of[s])
    return np.asarray(keep_r, dtype=np.int64), np.asarray(keep_y, dtype=np.int64)


def _denoise(beats: np.ndarray, prep: PrepConfig) -> np.ndarray:
    """Resample and wavelet-denoise beats (paper step 5); (n, 2w+1) -> (n, beat_length)."""
    import pywt
    from scipy.signal import resample

    x = resample(beats, prep.beat_length, axis=-1)  # (n, beat_length)
    coeffs = pywt.wavedec(x, prep.wavelet, axis=-1)  # full depth, default mode
    coeffs = [pywt.threshold(c, prep.threshold, "soft") for c in coeffs]
    out = pywt.waverec(coeffs, prep.wavelet, axis=-1)
    if out.shape[-1] < prep.beat_length:
        raise DataError(f"wavelet reconstruction gave {out.shape[-1]} < {prep.beat_length} samples")
    return np.ascontiguousarray(out[..., : prep.beat_length], dtype=np.float64)


def _used_records(mitdb_dir: Path, prep: PrepConfig) -> list[str]:
    names = record_names(mitdb_dir)
    bad = [n for n in names if not n.isdigit()]
    if bad:
        raise DataError(f"{mitdb_dir / RECORDS_FILE} lists non-numeric record {bad[0]!r}")
    excluded = set(prep.excluded_records)
    return [n for n in sorted(names, key=int) if int(n) not in excluded]


def build_pool(
    mitdb_dir: Path | str,
    prep: PrepConfig = PrepConfig(),
    progress: bool = False,
    *,
    verify: bool = True,
    allow_unlisted: bool = False,
) -> BeatPool:
    """Build the beat pool from raw records (paper steps 1-6).

    Args:
        mitdb_dir: Directory with ``RECORDS`` and the records' .hea/.dat/.atr files.
        prep: Preprocessing parameters.
        progress: Show a tqdm progress bar over records.
        verify: Check the used records' files against ``SHA256SUMS.txt`` when that file exists;
            when it does not (a warning says so), and with ``allow_unlisted``, check every used
            record's signals against its WFDB header checksums
            (:func:`verify_header_checksums`).
        allow_unlisted: Accept, with a warning, a used file that ``SHA256SUMS.txt`` has no line
            for (else that is an error naming it).

    Returns:
        The pool; with the default ``prep`` on mitdb 1.0.0, 96,049 beats.

    Raises:
        DataError: naming the file or record at fault.
    """
    d = Path(mitdb_dir)
    names = _used_records(d, prep)
    if not names:
        raise DataError(
            f"{d / RECORDS_FILE}: no record left after excluding {prep.excluded_records}"
        )
    for name in names:
        _check_record_files(d, name)
    if verify:
        files = [f"{n}{ext}" for n in names for ext in RECORD_EXTENSIONS]
        has_sums = (d / SUMS_FILE).is_file()
        if has_sums:
            _check_sums_cover_only_listed(d)
            verify_checksums(d, files, allow_unlisted=allow_unlisted)
        else:
            warnings.warn(
                f"{d / SUMS_FILE} not found; record files not checksummed: only the signals are "
                "checked, against their WFDB header checksums (not the .atr annotations)",
                stacklevel=2,
            )
        if allow_unlisted or not has_sums:
            for name in names:
                verify_header_checksums(d, name)
    xs, ys, recs, peaks = [], [], [], []
    offsets = np.arange(-prep.half_window, prep.half_window + 1)  # (2w+1,)
    for name in progress_bar(names, progress, "beats", "record"):
        sig, samples, symbols = read_record(d, name, channel=prep.channel, lead=prep.lead)
        lo, hi = sig.min(), sig.max()
        if hi <= lo:
            which = prep.lead or prep.channel
            raise DataError(f"record {name} in {d}: channel {which} is constant")
        sig = (sig - lo) / (hi - lo)  # min-max to [0, 1]
        rpeaks, labels = _record_beats(sig, samples, symbols, prep)
        if len(rpeaks) == 0:
            continue
        windows = sig[rpeaks[:, None] + offsets[None, :]]  # (n_beats, 2w+1)
        xs.append(_denoise(windows, prep))
        ys.append(labels)
        recs.append(np.full(len(labels), int(name), dtype=np.int32))
        peaks.append(rpeaks)
    if not xs:
        raise DataError(f"no beat of classes {prep.classes!r} found in {d}")
    return BeatPool(
        x=np.concatenate(xs),
        y=np.concatenate(ys),
        record=np.concatenate(recs),
        rpeak=np.concatenate(peaks),
        classes=prep.classes,
    )


def pool_cache_path(prep: PrepConfig = PrepConfig(), cache_dir: Path | str | None = None) -> Path:
    """Return ``(cache_dir or user_cache_dir())/pools/pool-<prep.cache_key()>.hdf5``."""
    base = Path(cache_dir) if cache_dir is not None else user_cache_dir()
    return base / "pools" / f"pool-{prep.cache_key()}.hdf5"


@contextlib.contextmanager
def _atomic_h5(path: Path) -> Iterator[Any]:
    """Open a temporary HDF5 file next to ``path``; rename it to ``path`` only on success."""
    import h5py

    with atomic_path(path) as tmp, h5py.File(tmp, "x") as fh:
        yield fh


def _write_pool_cache(
    path: Path, pool: BeatPool, prep: PrepConfig, records: list[str], sources: dict[str, str]
) -> None:
    try:
        with _atomic_h5(path) as fh:
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
    prep: PrepConfig = PrepConfig(),
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
            differ = _sources_differ(sources, record_digests(d, _used_records(d, prep), root))
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
    names = _used_records(d, prep)
    sources = record_digests(d, names, root)
    pool = build_pool(d, prep, progress=progress, allow_unlisted=allow_unlisted)
    _write_pool_cache(path, pool, prep, names, sources)
    return pool


# --------------------------------------------------------------------------------------------
# Splits and protocols
# --------------------------------------------------------------------------------------------


@dataclass
class Split:
    """A train/val/test split. Beats are shaped (n, 1, beat_length) like the paper's HDF5 files.

    Attributes:
        protocol: Name of the protocol that made it (``"hdf5"`` when read from files).
        x_train, x_val, x_test: (n, 1, L) float64 beats.
        y_train, y_val, y_test: (n,) int64 labels.
        pool_idx_train, pool_idx_val, pool_idx_test: (n,) int64 pool row of each row, -1 if unknown.
        record_train, record_val, record_test: (n,) int32 record number of each row, -1 if unknown.
        classes: Class symbols.
    """

    protocol: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    pool_idx_train: np.ndarray
    pool_idx_val: np.ndarray
    pool_idx_test: np.ndarray
    record_train: np.ndarray
    record_val: np.ndarray
    record_test: np.ndarray
    classes: str = "NLRAV"

    @property
    def n_train(self) -> int:
        """Number of training rows."""
        return len(self.y_train)

    @property
    def n_val(self) -> int:
        """Number of validation rows."""
        return len(self.y_val)

    @property
    def n_test(self) -> int:
        """Number of test rows."""
        return len(self.y_test)

    @classmethod
    def from_pool(
        cls, pool: BeatPool, protocol: str, train: np.ndarray, val: np.ndarray, test: np.ndarray
    ) -> Split:
        """Build a split from pool row indices (each (n,) int64)."""

        def rows(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
            idx = np.asarray(idx, dtype=np.int64)
            x = pool.x[idx][:, None, :]  # (n, 1, L)
            return x, pool.y[idx].astype(np.int64), idx, pool.record[idx].astype(np.int32)

        xtr, ytr, itr, rtr = rows(train)
        xva, yva, iva, rva = rows(val)
        xte, yte, ite, rte = rows(test)
        return cls(
            protocol, xtr, ytr, xva, yva, xte, yte, itr, iva, ite, rtr, rva, rte, pool.classes
        )


#: A protocol maps (pool, seed) to (train, test) pool row indices; val is carved afterwards.
ProtocolFn = Callable[[BeatPool, int], tuple[np.ndarray, np.ndarray]]
#: A val carver maps (pool, train indices, val_fraction, rng) to (train, val) indices.
CarveFn = Callable[
    [BeatPool, np.ndarray, float, np.random.RandomState], tuple[np.ndarray, np.ndarray]
]


@dataclass(frozen=True)
class _Protocol:
    split: ProtocolFn
    carve_val: CarveFn
    doc: str = field(default="")
    #: the protocol's pool for a label scheme (schemes it cannot take raise DataError)
    prep: Callable[[str], PrepConfig] | None = None


def _paper_prep(labels: str) -> PrepConfig:
    if labels != "paper":
        raise DataError(f"the paper's protocols take labels='paper' only, got {labels!r}")
    return PrepConfig()


def _inter_patient_prep(labels: str) -> PrepConfig:
    """de Chazal et al. 2004's records (all but the paced ones), each on its MLII lead."""
    if labels not in LABEL_SCHEMES:
        raise DataError(f"labels must be one of {LABEL_SCHEMES}, got {labels!r}")
    return PrepConfig(excluded_records=PACED_RECORDS, lead="MLII", labels=labels)


def _class_rows(pool: BeatPool) -> list[np.ndarray]:
    """Pool rows of each class, in pool order."""
    return [np.flatnonzero(pool.y == c) for c in range(len(pool.classes))]


def _require_paper_classes(pool: BeatPool, protocol: str) -> list[np.ndarray]:
    if pool.classes != "NLRAV":
        raise DataError(
            f"protocol {protocol!r} needs classes 'NLRAV', the pool has {pool.classes!r}"
        )
    rows = _class_rows(pool)
    return rows


def _split_paper(pool: BeatPool, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The paper's split, bit for bit (Abuadbba et al. 2020 preprocessing notebook).

    ``np.random.seed(2019)``; per class N, L, R, A, V draw 6000, 6000, 6000, 2490, 6000 row
    indices *with replacement*; the first half of each draw trains, the rest tests. Train and
    test are then shuffled by one permutation array that is shuffled once for train and again,
    in place, for test. Sampling with replacement puts exact copies of training beats in the
    test set (a known flaw of the protocol).
    """
    rows = _require_paper_classes(pool, "paper")
    rng = np.random.RandomState(seed)
    train, test = [], []
    for c, n in enumerate(PAPER_CLASS_DRAWS):
        idx = rng.choice(len(rows[c]), n)
        train.append(rows[c][idx[: n // 2]])
        test.append(rows[c][idx[n // 2 :]])
    tr, te = np.concatenate(train), np.concatenate(test)
    perm = np.arange(len(tr))
    rng.shuffle(perm)
    tr = tr[perm]
    rng.shuffle(perm)
    te = te[perm]
    return tr, te


def _split_paper_unique(pool: BeatPool, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The paper's class sizes (3000/3000/3000/1245/3000 per half) drawn without replacement.

    No pool row appears in both halves; both halves are shuffled. Patients still appear on both
    sides (intra-patient evaluation).
    """
    rows = _require_paper_classes(pool, "paper-unique")
    rng = np.random.RandomState(seed)
    train, test = [], []
    for c, n in enumerate(PAPER_CLASS_DRAWS):
        if n > len(rows[c]):
            raise DataError(
                f"protocol 'paper-unique' needs {n} beats of class "
                f"{pool.classes[c]!r}, the pool has {len(rows[c])}"
            )
        idx = rng.choice(len(rows[c]), n, replace=False)
        train.append(rows[c][idx[: n // 2]])
        test.append(rows[c][idx[n // 2 :]])
    tr, te = np.concatenate(train), np.concatenate(test)
    return tr[rng.permutation(len(tr))], te[rng.permutation(len(te))]


def _split_inter_patient(pool: BeatPool, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """de Chazal et al. 2004 inter-patient split: DS1 records train, DS2 records test.

    Every pool beat of a DS1 record trains and every beat of a DS2 record tests, in pool order,
    without class balancing, so class counts are imbalanced (mostly N). On the protocol's own
    pool (:func:`protocol_prep`) DS1 has its 22 records; on the paper's pool, which excludes
    114, 21. ``seed`` is unused.
    """
    del seed
    tr = np.flatnonzero(np.isin(pool.record, DS1_RECORDS))
    te = np.flatnonzero(np.isin(pool.record, DS2_RECORDS))
    if len(tr) == 0 or len(te) == 0:
        raise DataError("protocol 'inter-patient': the pool holds no DS1 or no DS2 record")
    return tr, te


def _split_records_holdout(pool: BeatPool, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded random half of the pool's records train (every beat of each, rows shuffled, so
    that a training subset spans every training record); the other records test: the patients
    held out at random of patient-level membership inference (``attacks.membership``), beside
    de Chazal's fixed DS1/DS2. On the ``inter-patient`` pool (44 records): 22 and 22."""
    rng = np.random.RandomState(seed)
    records = np.unique(pool.record)
    members = rng.permutation(records)[: len(records) // 2]
    inside = np.isin(pool.record, members)
    if inside.all() or not inside.any():
        raise DataError("protocol 'records-holdout': the pool needs two records or more")
    tr, te = np.flatnonzero(inside), np.flatnonzero(~inside)
    return tr[rng.permutation(len(tr))], te[rng.permutation(len(te))]


def _carve_stratified(
    pool: BeatPool, train: np.ndarray, fraction: float, rng: np.random.RandomState
) -> tuple[np.ndarray, np.ndarray]:
    """Move ``round(fraction * n_c)`` random training rows of each class c to validation.

    Rows are chosen by position, so under the paper protocol (which samples with replacement)
    the same pool row may still be in train and val.
    """
    labels = pool.y[train]
    take = np.zeros(len(train), dtype=bool)
    for c in range(len(pool.classes)):
        pos = np.flatnonzero(labels == c)
        k = round(fraction * len(pos))
        if k:
            take[rng.choice(pos, k, replace=False)] = True
    return train[~take], train[take]


def _carve_records(
    pool: BeatPool, train: np.ndarray, fraction: float, rng: np.random.RandomState
) -> tuple[np.ndarray, np.ndarray]:
    """Move whole training records to validation (validation patients are unseen).

    Records are taken in one seeded random order. First, for each class of the training rows,
    rarest first, of which the records chosen so far hold less than ``fraction`` of its
    training beats, one more record holding the class: the first (in the seeded order) holding
    between ``fraction`` and half of them, else the one holding most short of half, else the one
    holding most; never the class's last training record. So every class appears in validation
    where it can, without leaving training. Then further records until the validation rows reach
    ``fraction`` of the training rows, skipping any that would take the last training record of
    a class.
    """
    recs, labels = pool.record[train], pool.y[train]
    order = [int(r) for r in rng.permutation(np.unique(recs))]
    per_rec = {r: np.bincount(labels[recs == r], minlength=len(pool.classes)) for r in order}
    holds = {r: set(np.flatnonzero(per_rec[r]).tolist()) for r in order}
    size = {r: int(np.sum(recs == r)) for r in order}
    chosen: list[int] = []

    def keeps_every_class(r: int) -> bool:
        """Whether moving r leaves every class it holds in some other training record."""
        left = [q for q in order if q != r and q not in chosen]
        return all(any(c in holds[q] for q in left) for c in holds[r])

    counts = np.bincount(labels, minlength=len(pool.classes))
    for c in sorted(np.flatnonzero(counts).tolist(), key=lambda c: (counts[c], c)):
        if sum(per_rec[r][c] for r in chosen) >= fraction * counts[c]:
            continue
        cands = [r for r in order if c in holds[r] and r not in chosen and keeps_every_class(r)]
        share = {r: per_rec[r][c] / counts[c] for r in cands}
        fits = [r for r in cands if fraction <= share[r] <= 0.5]
        under = [r for r in cands if share[r] <= 0.5]
        if cands:
            chosen.append(fits[0] if fits else max(under or cands, key=share.__getitem__))
    target = fraction * len(train)
    for r in order:
        if sum(size[q] for q in chosen) >= target:
            break
        if r not in chosen and keeps_every_class(r):
            chosen.append(r)
    if len(chosen) == len(order):
        raise DataError(f"val_fraction={fraction} would move every training record to validation")
    take = np.isin(recs, chosen)
    return train[~take], train[take]


_PROTOCOL_REGISTRY: dict[str, _Protocol] = {
    "paper": _Protocol(_split_paper, _carve_stratified, "Abuadbba et al. 2020, with replacement"),
    "paper-unique": _Protocol(
        _split_paper_unique, _carve_stratified, "paper sizes, no replacement"
    ),
    "inter-patient": _Protocol(
        _split_inter_patient, _carve_records, "de Chazal et al. 2004", _inter_patient_prep
    ),
    "records-holdout": _Protocol(
        _split_records_holdout, _carve_records, "a random half of the records train",
        _inter_patient_prep
    ),
}
#: Names accepted by :func:`make_split`.
PROTOCOLS: tuple[str, ...] = tuple(_PROTOCOL_REGISTRY)


def protocol_prep(protocol: str, labels: str = "paper") -> PrepConfig:
    """The preprocessing of a protocol's pool under a label scheme.

    ``paper`` and ``paper-unique``: the paper's pool (:class:`PrepConfig` defaults; labels
    ``paper`` only). ``inter-patient``: de Chazal et al. 2004's 44 records (the paced 102, 104,
    107, 217 excluded), each read from its MLII lead, labelled by ``labels``.

    Raises:
        DataError: naming the protocol or the label scheme.
    """
    spec = _PROTOCOL_REGISTRY.get(protocol)
    if spec is None:
        raise DataError(f"unknown protocol {protocol!r}; valid: {', '.join(PROTOCOLS)}")
    return spec.prep(labels) if spec.prep is not None else _paper_prep(labels)


def check_labels(protocol: str, labels: str) -> None:
    """Raise DataError unless ``labels`` is a scheme that ``protocol`` takes (an unknown protocol
    is left to :func:`make_split`)."""
    if protocol in _PROTOCOL_REGISTRY:
        protocol_prep(protocol, labels)
    elif labels not in LABEL_SCHEMES:
        raise DataError(f"labels must be one of {LABEL_SCHEMES}, got {labels!r}")


def make_split(
    pool: BeatPool, protocol: str = "paper-unique", *, val_fraction: float = 0.0, seed: int = 2019
) -> Split:
    """Split the pool into train/val/test by a named protocol.

    Protocols (see :data:`PROTOCOLS`):

    * ``paper``: Abuadbba et al. 2020's split, bit for bit (13,245 train / 13,245 test, drawn
      with replacement: test holds exact copies of training beats).
    * ``paper-unique``: same per-class sizes, drawn without replacement.
    * ``inter-patient``: de Chazal et al. 2004, DS1 records train, DS2 records test.
    * ``records-holdout``: the same pool; a random half of its records (drawn by ``seed``)
      train, the others test.

    Validation rows are carved from the training rows with ``RandomState(seed + 1)``: stratified
    by class for ``paper`` and ``paper-unique``, whole records for ``inter-patient`` and
    ``records-holdout``.

    Args:
        pool: The beat pool.
        protocol: Protocol name.
        val_fraction: Fraction of training rows moved to validation, in [0, 1).
        seed: Seed of the protocol's ``np.random.RandomState`` (paper: 2019).

    Returns:
        The split.

    Raises:
        DataError: naming ``protocol`` (with the valid names) or ``val_fraction``.
    """
    spec = _PROTOCOL_REGISTRY.get(protocol)
    if spec is None:
        raise DataError(f"unknown protocol {protocol!r}; valid: {', '.join(PROTOCOLS)}")
    try:
        frac = float(val_fraction)
    except (TypeError, ValueError) as exc:
        raise DataError(f"val_fraction must be a number in [0, 1), got {val_fraction!r}") from exc
    if not (0.0 <= frac < 1.0):
        raise DataError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    train, test = spec.split(pool, seed)
    if frac > 0:
        train, val = spec.carve_val(pool, train, frac, np.random.RandomState(seed + 1))
    else:
        val = np.zeros(0, dtype=np.int64)
    return Split.from_pool(pool, protocol, train, val, test)


# --------------------------------------------------------------------------------------------
# Dataset card
# --------------------------------------------------------------------------------------------


def _row_keys(x: np.ndarray) -> np.ndarray:
    """Hash each row's bytes to a uint64 (rows (n, ...) flattened; -0.0 counted as 0.0)."""
    flat = np.ascontiguousarray(x.reshape(len(x), -1), dtype=np.float64) + 0.0  # (n, L)
    words = flat.view(np.uint64)  # (n, L)
    mult = np.random.RandomState(0).randint(1, 2**63 - 1, size=words.shape[1], dtype=np.int64)
    mult = mult.astype(np.uint64) | np.uint64(1)
    with np.errstate(over="ignore"):
        return (words * mult).sum(axis=1, dtype=np.uint64)  # (n,)


def count_duplicate_rows(reference: np.ndarray, query: np.ndarray) -> int:
    """Count rows of ``query`` whose values equal some row of ``reference`` exactly.

    Rows are hashed to 64 bits, candidates found with ``np.isin`` and then compared exactly, so
    hash collisions cannot inflate the count.
    """
    if len(reference) == 0 or len(query) == 0:
        return 0
    ref = np.ascontiguousarray(reference.reshape(len(reference), -1), dtype=np.float64) + 0.0
    qry = np.ascontiguousarray(query.reshape(len(query), -1), dtype=np.float64) + 0.0
    hr, hq = _row_keys(ref), _row_keys(qry)
    cand = np.flatnonzero(np.isin(hq, hr))
    if len(cand) == 0:
        return 0
    lookup: dict[int, list[int]] = {}
    for i in np.flatnonzero(np.isin(hr, hq[cand])):
        lookup.setdefault(int(hr[i]), []).append(int(i))
    return sum(
        any(np.array_equal(qry[q], ref[r]) for r in lookup.get(int(hq[q]), ())) for q in cand
    )


def _records_of(rec: np.ndarray) -> list[int]:
    return sorted(int(r) for r in np.unique(rec) if r >= 0)


def dataset_card(
    pool: BeatPool | None, split: Split, prep: PrepConfig | None = None
) -> dict[str, Any]:
    """Summarise a split for logs and result files.

    Args:
        pool: The pool the split came from, or ``None`` (pool fields are then ``None``).
        split: The split.
        prep: The pool's preprocessing; when given, the card also has ``records_missing`` (the
            records of MIT-BIH 1.0.0 the preprocessing keeps that the pool holds no beat of:
            empty for the whole database), ``classes``, ``labels``,
            ``lead`` (``""``: channel ``channel``), ``channel``, ``excluded_records``,
            ``records_val`` and ``class_counts_by_val_record`` (``{record: {class: n}}``).

    Returns:
        Dict with keys protocol, pool_size, pool_class_counts, n_train, n_val, n_test,
        class_counts_train, class_counts_val, class_counts_test, test_rows_duplicating_train
        (test rows equal to some training row, value for value), records_train, records_test
        (sorted record numbers; empty when unknown) and records_shared (records on both sides).
    """
    rtr, rte = _records_of(split.record_train), _records_of(split.record_test)
    card = {
        "protocol": split.protocol,
        "pool_size": None if pool is None else len(pool),
        "pool_class_counts": None if pool is None else pool.class_counts(),
        "n_train": split.n_train,
        "n_val": split.n_val,
        "n_test": split.n_test,
        "class_counts_train": _class_counts(split.y_train, split.classes),
        "class_counts_val": _class_counts(split.y_val, split.classes),
        "class_counts_test": _class_counts(split.y_test, split.classes),
        "test_rows_duplicating_train": count_duplicate_rows(split.x_train, split.x_test),
        "records_train": rtr,
        "records_test": rte,
        "records_shared": len(set(rtr) & set(rte)),
    }
    if prep is not None:
        rva = _records_of(split.record_val)
        expected = set(MITDB_RECORDS) - set(prep.excluded_records)
        card |= {
            "records_missing": sorted(expected - set(_records_of(pool.record)))
            if pool is not None else None,
            "classes": split.classes, "labels": prep.labels, "lead": prep.lead,
            "channel": prep.channel, "excluded_records": list(prep.excluded_records),
            "records_val": rva,
            "class_counts_by_val_record": {
                str(r): _class_counts(split.y_val[split.record_val == r], split.classes)
                for r in rva
            },
        }
    return card


# --------------------------------------------------------------------------------------------
# The paper's HDF5 files
# --------------------------------------------------------------------------------------------


def write_paper_hdf5(split: Split, out_dir: Path | str) -> tuple[Path, Path]:
    """Write ``train_ecg.hdf5`` {x_train, y_train} and ``test_ecg.hdf5`` {x_test, y_test}.

    The layout is the paper's: x (N, 1, 128) float64, y (N,) int64. Each file is written to a
    temporary file and renamed into place. The paper format has no validation set: validation
    rows are not written (a warning says so).

    Returns:
        ``(train_path, test_path)``.
    """
    out = Path(out_dir)
    if split.n_val:
        warnings.warn(
            f"write_paper_hdf5: {split.n_val} validation rows are not written", stacklevel=2
        )
    paths = []
    for part in ("train", "test"):
        path = out / f"{part}_ecg.hdf5"
        with _atomic_h5(path) as fh:
            fh.create_dataset(f"x_{part}", data=np.asarray(getattr(split, f"x_{part}"), np.float64))
            fh.create_dataset(f"y_{part}", data=np.asarray(getattr(split, f"y_{part}"), np.int64))
        paths.append(path)
    return paths[0], paths[1]


def _read_xy(path: Path, part: str, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    import h5py

    if not path.is_file():
        raise DataError(f"HDF5 file {path} not found")
    xk, yk = f"x_{part}", f"y_{part}"
    try:
        with h5py.File(path, "r") as fh:
            missing = [k for k in (xk, yk) if k not in fh]
            if missing:
                raise DataError(
                    f"{path}: dataset {missing[0]!r} missing (has {sorted(fh.keys())}, "
                    f"expected {xk!r} and {yk!r})"
                )
            x, y = fh[xk][()], fh[yk][()]
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"{path} is not a readable HDF5 file: {exc}") from exc
    if x.ndim == 2:
        x = x[:, None, :]  # (N, 128) -> (N, 1, 128)
    if x.ndim != 3 or x.shape[1] != 1 or x.shape[2] != 128:
        raise DataError(f"{path}: {xk} has shape {x.shape}, expected (N, 1, 128) or (N, 128)")
    if not np.issubdtype(x.dtype, np.floating):
        raise DataError(f"{path}: {xk} has dtype {x.dtype}, expected a float type")
    if not np.all(np.isfinite(x)):
        raise DataError(f"{path}: {xk} holds NaN or inf values")
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise DataError(f"{path}: {yk} has shape {y.shape}, expected (N,)")
    if np.issubdtype(y.dtype, np.floating):
        if not np.all(np.isfinite(y)) or np.any(y != np.round(y)):
            raise DataError(f"{path}: {yk} holds non-integer labels")
    elif not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{path}: {yk} has dtype {y.dtype}, expected integer labels")
    if len(y) != len(x):
        raise DataError(f"{path}: {xk} has {len(x)} rows but {yk} has {len(y)}")
    if len(y) == 0:
        raise DataError(f"{path}: {xk} is empty")
    if y.min() < 0 or y.max() >= n_classes:
        raise DataError(f"{path}: {yk} holds labels outside 0..{n_classes - 1}")
    return x.astype(np.float64), y.astype(np.int64)


def read_paper_hdf5(train_path: Path | str, test_path: Path | str) -> Split:
    """Read the paper's ``train_ecg.hdf5`` / ``test_ecg.hdf5`` into a :class:`Split`.

    The split has protocol ``"hdf5"``, no validation rows, and pool indices and records -1.

    Raises:
        DataError: naming the file and the problem: missing file, missing keys, shape not
            (N, 1, 128) or (N, 128), non-float beats, NaN/inf, labels outside 0..4, or x/y length
            mismatch.
    """
    classes = "NLRAV"
    xtr, ytr = _read_xy(Path(train_path), "train", len(classes))
    xte, yte = _read_xy(Path(test_path), "test", len(classes))

    def unknown(n: int, dtype: type) -> np.ndarray:
        return np.full(n, -1, dtype=dtype)

    empty_x = np.zeros((0, 1, xtr.shape[2]), dtype=np.float64)
    return Split(
        "hdf5", xtr, ytr, empty_x, np.zeros(0, np.int64), xte, yte,
        unknown(len(ytr), np.int64), unknown(0, np.int64), unknown(len(yte), np.int64),
        unknown(len(ytr), np.int32), unknown(0, np.int32), unknown(len(yte), np.int32),
        classes,
    )  # fmt: skip


def parse_hdf5_pair(spec: str) -> tuple[Path, Path]:
    """``"TRAIN,TEST"`` -> the two paths (the ``hdf5`` run option).

    Raises:
        DataError: naming ``hdf5``, unless there are exactly two non-empty names.
    """
    parts = [p.strip() for p in str(spec).split(",")]
    if len(parts) != 2 or not all(parts):
        raise DataError(
            f"hdf5: expected TRAIN,TEST (the paper's train_ecg.hdf5 and test_ecg.hdf5, separated "
            f"by a comma), got {spec!r}"
        )
    return Path(parts[0]).expanduser(), Path(parts[1]).expanduser()


def check_hdf5_run(spec: str, *, protocol: str, labels: str) -> tuple[Path, Path]:
    """The two paths of a run's ``hdf5`` option, checked against the run's other options before
    anything is written.

    Raises:
        DataError: naming ``hdf5``: not ``TRAIN,TEST``, labels other than the paper's, or the
            ``inter-patient`` protocol (the files hold their own split).
    """
    pair = parse_hdf5_pair(spec)
    if labels != "paper":
        raise DataError(f"hdf5: the paper's files hold its five beat types N/L/R/A/V; labels "
                        f"must be 'paper', got {labels!r}")
    if protocol in ("inter-patient", "records-holdout"):
        raise DataError("hdf5: the files hold their own train/test split; protocol "
                        f"{protocol!r} cannot apply to them (leave --protocol out)")
    return pair


def paper_hdf5_split(
    train_path: Path | str, test_path: Path | str, *, val_fraction: float = 0.0, seed: int = 2019
) -> tuple[BeatPool, Split]:
    """The paper's HDF5 files (:func:`read_paper_hdf5`, validated as it does) as a run's pool and
    split.

    The pool is the files' rows, the training file's first (records and R-peaks unknown: -1);
    the split (protocol ``"hdf5"``) trains on the training file's rows and tests on the test
    file's. With ``val_fraction`` > 0, ``round(val_fraction * n_c)`` seeded random training rows
    of each class c move to validation (``RandomState(seed + 1)``, as :func:`make_split` carves
    the ``paper`` protocol's).

    Raises:
        DataError: naming the file (see :func:`read_paper_hdf5`) or ``val_fraction``.
    """
    files = read_paper_hdf5(train_path, test_path)
    frac = float(val_fraction)
    if not 0.0 <= frac < 1.0:
        raise DataError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    n, m = files.n_train, files.n_test
    pool = BeatPool(np.concatenate([files.x_train, files.x_test])[:, 0, :],
                    np.concatenate([files.y_train, files.y_test]), np.full(n + m, -1, np.int32),
                    np.full(n + m, -1, np.int64), files.classes)
    train, val = np.arange(n), np.zeros(0, np.int64)
    if frac > 0:
        train, val = _carve_stratified(pool, train, frac, np.random.RandomState(seed + 1))
    return pool, Split.from_pool(pool, "hdf5", train, val, np.arange(n, n + m))

"""MIT-BIH beats: the paper's preprocessing, from a record's signal to the pool of labelled beats.

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

:class:`PrepConfig` holds these parameters (and the ``inter-patient`` protocol's: every record
read from its MLII lead, labels of the paper's five beat types or the AAMI classes,
:data:`LABEL_SCHEMES`); :func:`build_pool` applies them to every record.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from splitpriv.data.records import (
    RECORD_EXTENSIONS,
    RECORDS_FILE,
    SUMS_FILE,
    DataError,
    check_record_files,
    check_sums_cover_only_listed,
    progress_bar,
    read_record,
    record_names,
    verify_checksums,
    verify_header_checksums,
)

#: Bump when the preprocessing code changes in a way that changes the pool; part of cache keys.
PREP_VERSION = 1


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


#: The paper's preprocessing (:class:`PrepConfig`'s defaults).
PAPER_PREP = PrepConfig()


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
        return class_counts(self.y, self.classes)


def class_counts(y: np.ndarray, classes: str) -> dict[str, int]:
    counts = np.bincount(np.asarray(y, dtype=np.int64), minlength=len(classes))
    return {c: int(counts[i]) for i, c in enumerate(classes)}


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


def used_records(mitdb_dir: Path, prep: PrepConfig) -> list[str]:
    names = record_names(mitdb_dir)
    bad = [n for n in names if not n.isdigit()]
    if bad:
        raise DataError(f"{mitdb_dir / RECORDS_FILE} lists non-numeric record {bad[0]!r}")
    excluded = set(prep.excluded_records)
    return [n for n in sorted(names, key=int) if int(n) not in excluded]


def build_pool(
    mitdb_dir: Path | str,
    prep: PrepConfig = PAPER_PREP,
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
    names = used_records(d, prep)
    if not names:
        raise DataError(
            f"{d / RECORDS_FILE}: no record left after excluding {prep.excluded_records}"
        )
    for name in names:
        check_record_files(d, name)
    if verify:
        files = [f"{n}{ext}" for n in names for ext in RECORD_EXTENSIONS]
        has_sums = (d / SUMS_FILE).is_file()
        if has_sums:
            check_sums_cover_only_listed(d)
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


"""MIT-BIH heartbeats: records, the paper's beat preprocessing, the pool cache, train/test
protocols, the dataset card and the paper's HDF5 files.

One module per concept, in the order data flows:

* :mod:`~splitpriv.data.records`: the records on disk: WFDB formats, checksums, reading one record;
* :mod:`~splitpriv.data.download`: where the records come from (a directory given, or PhysioNet);
* :mod:`~splitpriv.data.beats`: the paper's preprocessing (:class:`PrepConfig`), beats into a
  :class:`BeatPool`;
* :mod:`~splitpriv.data.pool`: the pool's cache (:func:`load_pool`);
* :mod:`~splitpriv.data.protocols`: train/test protocols and validation carving (:class:`Split`);
* :mod:`~splitpriv.data.card`: the dataset card of a split;
* :mod:`~splitpriv.data.hdf5`: the paper's ``train_ecg.hdf5`` / ``test_ecg.hdf5`` written (read
  as the ``arrays`` dataset's paper layout).

Every name is importable from here (``from splitpriv.data import load_pool``).

Data: Moody GB, Mark RG, "The impact of the MIT-BIH Arrhythmia Database", IEEE EMB 20(3), 2001;
Goldberger AL et al., "PhysioBank, PhysioToolkit, and PhysioNet", Circulation 101(23), 2000.
"""

from splitpriv.data.beats import (
    AAMI_CLASSES,
    AAMI_SYMBOLS,
    LABEL_SCHEMES,
    PREP_VERSION,
    BeatPool,
    PrepConfig,
    build_pool,
)
from splitpriv.data.card import count_duplicate_rows, dataset_card
from splitpriv.data.download import download_mitdb, resolve_mitdb_dir
from splitpriv.data.hdf5 import (
    check_hdf5_run,
    parse_hdf5_pair,
    write_paper_hdf5,
)
from splitpriv.data.pool import STALE_TMP_S, CacheWriteError, load_pool, pool_cache_path
from splitpriv.data.protocols import (
    PAPER_CLASS_DRAWS,
    PROTOCOLS,
    Split,
    check_labels,
    make_split,
    protocol_prep,
)
from splitpriv.data.records import (
    CACHE_ENV,
    DIGESTS_FILE,
    DS1_RECORDS,
    DS2_RECORDS,
    MITDB_ENV,
    MITDB_RECORDS,
    PACED_RECORDS,
    RECORD_EXTENSIONS,
    RECORDS_FILE,
    SUMS_FILE,
    DataError,
    missing_record_files,
    parse_records,
    parse_sha256sums,
    progress_bar,
    read_record,
    record_digests,
    record_names,
    sha256_file,
    user_cache_dir,
    verify_checksums,
    verify_header_checksums,
)

__all__ = [
    "AAMI_CLASSES",
    "AAMI_SYMBOLS",
    "CACHE_ENV",
    "DIGESTS_FILE",
    "DS1_RECORDS",
    "DS2_RECORDS",
    "LABEL_SCHEMES",
    "MITDB_ENV",
    "MITDB_RECORDS",
    "PACED_RECORDS",
    "PAPER_CLASS_DRAWS",
    "PREP_VERSION",
    "PROTOCOLS",
    "RECORDS_FILE",
    "RECORD_EXTENSIONS",
    "STALE_TMP_S",
    "SUMS_FILE",
    "BeatPool",
    "CacheWriteError",
    "DataError",
    "PrepConfig",
    "Split",
    "build_pool",
    "check_hdf5_run",
    "check_labels",
    "count_duplicate_rows",
    "dataset_card",
    "download_mitdb",
    "load_pool",
    "make_split",
    "missing_record_files",
    "parse_hdf5_pair",
    "parse_records",
    "parse_sha256sums",
    "pool_cache_path",
    "progress_bar",
    "protocol_prep",
    "read_record",
    "record_digests",
    "record_names",
    "resolve_mitdb_dir",
    "sha256_file",
    "user_cache_dir",
    "verify_checksums",
    "verify_header_checksums",
    "write_paper_hdf5",
]

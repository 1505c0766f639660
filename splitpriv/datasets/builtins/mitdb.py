"""``mitdb``: the MIT-BIH Arrhythmia Database's heartbeats under the run's protocol.

``leads=1`` (the default) is the run's data of every earlier version, bit for bit: the beat
pool, protocol split and card of :func:`splitpriv.run.data.load_split` (the protocol, label
scheme and the record and cache directories come from the run's configuration), the beats as
(N, 1, 128); ``--hdf5`` (the paper's HDF5 pair) is ``arrays``' paper layout instead
(:func:`splitpriv.datasets.run_dataset`). ``leads=2`` adds each beat's window of the record's
other signal, read and preprocessed the same way (channel 1, the same annotations and R-peaks,
so beat i of both pools is the same heartbeat): (N, 2, 128) beats; the card names each record's
second signal (V1, V2, V4 or V5; Moody & Mark 2001). Two leads are read by channel, so they need
a protocol whose pool reads channel 0 (``paper``, ``paper-unique``, ``records-holdout``; not
``inter-patient``, which reads MLII wherever it is).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from splitpriv.data.records import DataError
from splitpriv.datasets import DATASETS, Dataset, DatasetSplit


@DATASETS.register("mitdb")
class MitBih(Dataset):
    summary = "MIT-BIH heartbeats (N, leads, 128) under --protocol/--labels (the default)"

    @dataclass
    class Config:
        """Attributes:
        leads: 1 (MLII on channel 0, as every earlier version) or 2 (and channel 1's lead).
        """

        leads: int = 1

    def check(self, run: Any) -> None:
        if self.config.leads not in (1, 2):
            raise ValueError(f"dataset 'mitdb': leads must be 1 or 2, got {self.config.leads}")
        if self.config.leads == 2 and run.protocol == "inter-patient":
            raise ValueError("dataset 'mitdb:leads=2' reads channels 0 and 1 of each record: it "
                             "takes --protocol paper, paper-unique or records-holdout, not "
                             "inter-patient")

    def describe(self, run: Any) -> tuple[tuple[int, ...], int]:
        from splitpriv.data import protocol_prep

        return (self.config.leads, 128), len(protocol_prep(run.protocol, run.labels).classes)

    def load(self, run: Any) -> DatasetSplit:
        from splitpriv.run.data import load_split

        self.check(run)
        pool, split, card = load_split(run)
        x = pool.x[:, None, :].astype(np.float32)  # (N, 1, 128)
        if self.config.leads == 2:
            second, names = _second_lead(run, pool)
            x = np.concatenate([x, second[:, None, :].astype(np.float32)], axis=1)
            card = card | {"leads": {"0": "channel 0 (MLII)", "1": names}}
        return DatasetSplit(
            x=x, y=np.asarray(pool.y, np.int64), groups=np.asarray(pool.record, np.int64),
            train=np.asarray(split.pool_idx_train, np.int64),
            val=np.asarray(split.pool_idx_val, np.int64),
            test=np.asarray(split.pool_idx_test, np.int64),
            classes=tuple(split.classes), card=card,
            rpeak=np.asarray(pool.rpeak, np.int64))


def _second_lead(run: Any, pool: Any) -> tuple[np.ndarray, dict[str, str]]:
    """Every pool beat's window of channel 1 ((N, 128), the pool's preprocessing) and the name of
    each record's channel 1 (``{record: name}``).

    Raises:
        DataError: the channel-1 pool's beats are not the channel-0 pool's (records, R-peaks).
    """
    from splitpriv.data import load_pool, protocol_prep
    from splitpriv.data.download import resolve_mitdb_dir
    from splitpriv.data.records import _wfdb

    prep = dataclasses.replace(protocol_prep(run.protocol, run.labels), channel=1)
    other = load_pool(run.mitdb_dir, cache_dir=run.cache_dir, prep=prep)
    if not (np.array_equal(other.record, pool.record) and np.array_equal(other.rpeak, pool.rpeak)):
        raise DataError("mitdb:leads=2: channel 1's beats are not channel 0's (another record "
                        "set or annotations); rebuild the pool caches (splitpriv data --rebuild)")
    directory = resolve_mitdb_dir(run.mitdb_dir, download=False)
    names = {str(r): str(_wfdb().rdheader(str(directory / str(r))).sig_name[1])
             for r in np.unique(pool.record)}
    return other.x, names

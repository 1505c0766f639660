"""Every release a server keeps (splitpriv.releases): the blocks, the exact means the windows
combine, replays not counted twice, a killed run's log resumed to the uninterrupted one's, and
what it costs on disk."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from splitpriv.channel import Kind, Message, RecordPolicy, Transcript
from splitpriv.releases import ReleaseLog, release_blocks
from splitpriv.run import TrainConfig, run_training
from splitpriv.trainer import SplitTrainer


@pytest.mark.parametrize("epochs", [1, 2, 3, 5, 8, 9, 10, 30, 400])
def test_release_blocks_cover_every_epoch_once_latest_first(epochs):
    for spec in ("windows", "all"):
        blocks = release_blocks(epochs, spec)
        covered = [e for lo, hi in blocks for e in range(lo, hi + 1)]
        assert sorted(covered) == list(range(1, epochs + 1))  # every epoch in one block
        assert [lo for lo, _ in blocks] == sorted((lo for lo, _ in blocks), reverse=True)
    # the windows "the last 1, 2, 4, 8 epochs and all" are unions of the latest blocks
    ends = np.cumsum([hi - lo + 1 for lo, hi in release_blocks(epochs, "windows")])
    assert list(ends) == [n for n in (1, 2, 4, 8) if n < epochs] + [epochs]
    assert release_blocks(epochs, "none") == ()
    with pytest.raises(ValueError, match="record_releases"):
        release_blocks(epochs, "some")


def _releases(n_ids: int, epochs: int, seed: int = 0) -> torch.Tensor:
    """(epochs, n_ids, 2, 3) random releases."""
    return torch.randn(epochs, n_ids, 2, 3, generator=torch.Generator().manual_seed(seed))


def _log_of(values: torch.Tensor, blocks, *, batch: int = 7) -> ReleaseLog:
    """A log fed the releases epoch by epoch, each epoch's ids in a shuffled batch order."""
    log = ReleaseLog(blocks)
    gen = torch.Generator().manual_seed(1)
    for e in range(values.shape[0]):
        order = torch.randperm(values.shape[1], generator=gen)
        for ids in order.split(batch):
            log.add(ids, values[e, ids], e + 1)
    return log


def test_windows_are_the_exact_means_of_each_ids_latest_releases():
    values = _releases(20, 10)  # epochs 1..10
    log = _log_of(values, release_blocks(10, "windows"))
    ids = torch.tensor([3, 0, 19, 7])
    windows = log.windows(ids)
    # windows 1..5 span the last 1, 2, 4, 8 and 10 epochs
    assert [(w.first, w.last) for w in windows] == [(10, 10), (9, 10), (7, 10), (3, 10),
                                                    (1, 10)]
    for w in windows:
        want = values[w.first - 1:w.last, ids].mean(0)
        torch.testing.assert_close(w.mean, want, rtol=0, atol=1e-6)
        assert w.count.tolist() == [w.last - w.first + 1] * len(ids)
    # written and read back (float16 means): the same windows to float16's precision
    back = ReleaseLog.from_arrays(log.arrays())
    for w, b in zip(windows, back.windows(ids), strict=True):
        torch.testing.assert_close(b.mean, w.mean, rtol=1e-3, atol=1e-3)
        assert torch.equal(b.count, w.count)


def test_a_replayed_release_is_not_counted_again():
    # releases=R in formal DP: epochs after R re-send the kept releases (bitwise equal); the
    # server holds nothing new, and a window of them combines the R fresh releases only
    values = _releases(12, 2)
    log = ReleaseLog(release_blocks(6, "windows"))  # blocks (6,6), (5,5), (3,4), (1,2)
    for e in (1, 2):
        log.add(torch.arange(12), values[e - 1], e)
    for e in (3, 4, 5, 6):  # replays of epoch 2's release
        log.add(torch.arange(12), values[1], e)
    windows = log.windows(torch.arange(12))
    assert len(windows) == 1  # only block (1, 2) holds a release
    assert windows[0].count.tolist() == [2] * 12
    torch.testing.assert_close(windows[0].mean, values.mean(0), rtol=0, atol=1e-6)
    assert not log.arrays().keys() - {"releases|1-2|mean", "releases|1-2|count"}


def test_the_transcript_keeps_releases_whatever_else_it_records():
    values = _releases(5, 3)
    t = Transcript(policy=RecordPolicy(epochs=frozenset(), kinds=frozenset(),
                                       releases=release_blocks(3, "windows")))
    for e in (1, 2, 3):
        t.record(Message(Kind.ACTIVATIONS, values[e - 1], torch.arange(5), e, "train"))
        t.record(Message(Kind.ACTIVATIONS, values[e - 1] + 9, torch.arange(5), e, "test"))
    assert t.keys() == []  # no message recorded
    assert [w.count.tolist() for w in t.releases.windows(torch.arange(5))] == [
        [1] * 5, [2] * 5, [3] * 5]
    torch.testing.assert_close(t.releases.windows(torch.arange(5))[-1].mean, values.mean(0))


@pytest.fixture(scope="module")
def six_epochs(pool_dirs):
    mitdb, cache = pool_dirs
    return TrainConfig(protocol="paper-unique", epochs=6, train_subset=300, test_subset=100,
                       record_epochs="last", record_kinds="labels", mitdb_dir=str(mitdb),
                       cache_dir=str(cache), threads=1)


class Killed(BaseException):
    """Stands in for a kill (nothing after it runs)."""


def test_a_run_killed_mid_block_resumes_to_the_log_of_an_uninterrupted_run(six_epochs, tmp_path,
                                                                          monkeypatch):
    # blocks (6,6), (5,5), (3,4), (1,2): killed in epoch 4, inside block (3,4), whose epoch 3
    # sums are in the part files only
    whole = run_training(six_epochs, tmp_path / "whole", progress=False)
    real = SplitTrainer.train_epochs

    def dies_in_4(self, epoch):
        if epoch == 4:
            raise Killed
        return real(self, epoch)

    monkeypatch.setattr(SplitTrainer, "train_epochs", dies_in_4)
    with pytest.raises(Killed):
        run_training(six_epochs, tmp_path / "killed", progress=False)
    monkeypatch.setattr(SplitTrainer, "train_epochs", real)
    resumed = run_training(six_epochs, tmp_path / "killed", progress=False)
    assert resumed["test_accuracy"] == whole["test_accuracy"]
    a = Transcript.load(tmp_path / "whole" / "transcript.npz").releases
    b = Transcript.load(tmp_path / "killed" / "transcript.npz").releases
    assert a.blocks == b.blocks == ((6, 6), (5, 5), (3, 4), (1, 2))
    for x, y in zip(a.windows(torch.arange(300)), b.windows(torch.arange(300)), strict=True):
        assert torch.equal(x.mean, y.mean) and torch.equal(x.count, y.count)
        assert x.count.tolist() == [x.last - x.first + 1] * 300
    assert not (tmp_path / "killed" / "transcript.parts").exists()


def test_the_log_holds_what_the_last_epoch_sent_and_costs_what_it_says(six_epochs, tmp_path):
    cfg = six_epochs
    run_training(cfg, tmp_path / "run", progress=False)
    with np.load(tmp_path / "run" / "transcript.npz") as z:
        sizes = {k: z[k].nbytes for k in z.files}
    t = Transcript.load(tmp_path / "run" / "transcript.npz")
    windows = t.releases.windows(torch.arange(300))
    # window 1 is the last epoch's releases; 4 blocks of 300 x 512 float16 and their counts
    assert (windows[0].first, windows[0].last) == (6, 6)
    log_bytes = sum(v for k, v in sizes.items() if k.startswith("releases|"))
    assert log_bytes == 4 * 300 * (16 * 32 * 2 + 2)
    none = TrainConfig(**{**cfg.__dict__, "record_releases": "none"})
    run_training(none, tmp_path / "none", progress=False)
    assert Transcript.load(tmp_path / "none" / "transcript.npz").releases is None

"""The sweep executor: tasks run in worker processes (or on Ray) give the rows they give here, in
the plan's order; a failing task stops the sweep naming it; bad flags are refused."""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import pytest

from splitpriv.executor import Executor, TaskFailed
from studies import depth

#: what differs between two sweeps of the same plan: where they ran and how long they took
RUN_SPECIFIC = {"run_dir", "train_seconds", "wall_seconds"}


def square_or_fail(x: int) -> tuple[int, int]:
    """A task for the workers (module level, so a spawned worker can import it)."""
    import torch

    if x == 3:
        raise ValueError("three is not allowed")
    return x * x, torch.get_num_threads()


def test_local_workers_keep_the_order_and_pin_threads():
    with Executor(jobs=2) as ex:
        out = ex.map(square_or_fail, [5, 1, 4, 2], threads=1, progress=False)
        assert out == [(25, 1), (1, 1), (16, 1), (4, 1)]
        assert ex.map(square_or_fail, [6], progress=False) == [(36, 1)]  # one task: here
        assert ex.map(square_or_fail, [7, 8], progress=False)[1] == (64, 1)  # the same pool


def test_a_failing_worker_task_is_named_in_one_line():
    with Executor(jobs=2) as ex:
        with pytest.raises(TaskFailed, match=r"^beat 3: ValueError: three is not allowed$") as e:
            ex.map(square_or_fail, [1, 3, 2], names=["beat 1", "beat 3", "beat 2"],
                   progress=False)
        assert "Traceback" in e.value.details
        assert ex.map(square_or_fail, [1, 2], progress=False) == [(1, 1), (4, 1)]  # usable again


def test_in_process_errors_propagate_unchanged():
    with pytest.raises(ValueError, match="three is not allowed"):
        Executor(jobs=1).map(square_or_fail, [1, 3], progress=False)


@pytest.mark.parametrize("kw, named", [
    (dict(executor="dask"), "--executor"), (dict(jobs=-1), "--jobs"),
    (dict(address="auto"), "--address"),
])
def test_bad_executor_flags_are_refused(kw, named):
    with pytest.raises(ValueError, match=named):
        Executor(**kw)


def test_a_bad_executor_flag_is_one_line_from_a_study(capsys, tmp_path):
    with pytest.raises(SystemExit):
        depth.main(["--quick", "--executor", "dask", "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--executor" in err[0] and "dask" in err[0]
    assert not any(tmp_path.iterdir())


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return [{k: v for k, v in r.items() if k not in RUN_SPECIFIC} for r in csv.DictReader(fh)]


def depth_study(pool_dirs, out: Path, *flags: str) -> list[dict[str, str]]:
    mitdb, cache = pool_dirs
    depth.main(["--quick", "--no-progress", "--train-subset", "300", "--test-subset", "200",
                "--epochs", "1", "--dcor-victims", "60", "--dtw-victims", "20",
                "--decoder-victims", "40", "--decoder-epochs", "2", "--depths", "2", "3",
                "--seeds", "2", "--out", str(out), "--mitdb-dir", str(mitdb),
                "--cache-dir", str(cache), *flags])
    return read_rows(out / "results.csv")


@pytest.fixture(scope="module")
def in_process_rows(pool_dirs, tmp_path_factory) -> list[dict[str, str]]:
    """The depth study (two stacked groups, four runs) run here, in order."""
    return depth_study(pool_dirs, tmp_path_factory.mktemp("here"), "--jobs", "1")


def test_worker_processes_give_the_same_rows(pool_dirs, tmp_path, in_process_rows):
    rows = depth_study(pool_dirs, tmp_path, "--jobs", "2")
    assert len(rows) == 4
    assert rows == in_process_rows


@pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                    reason="Ray not installed (pip install 'splitpriv[cluster]')")
def test_a_local_ray_instance_gives_the_same_rows_and_resumes(pool_dirs, tmp_path,
                                                              in_process_rows):
    rows = depth_study(pool_dirs, tmp_path, "--executor", "ray", "--jobs", "2")
    assert rows == in_process_rows
    done = sorted(tmp_path.glob("runs/*/result.json"))
    before = [p.stat().st_mtime_ns for p in done]
    (tmp_path / "runs" / "depth3-s1" / "attacks" / "dtw.json").unlink()  # killed in an attack
    assert depth_study(pool_dirs, tmp_path, "--executor", "ray", "--jobs", "2") == rows
    assert [p.stat().st_mtime_ns for p in done] == before  # nothing retrained


@pytest.mark.parametrize("address", ["127.0.0.1:1", "ray://127.0.0.1:1"])
def test_a_ray_address_where_nothing_answers_fails_within_a_bounded_time(address):
    import time

    t0 = time.monotonic()
    with pytest.raises(ValueError, match=f"--address {address}: no Ray cluster answers there"):
        Executor(executor="ray", address=address).map(square_or_fail, [1, 2], progress=False)
    assert time.monotonic() - t0 < 15


def test_jobs_are_capped_at_two_per_core_and_at_the_tasks(capsys):
    from splitpriv.executor import available_cores

    ex = Executor(jobs=99)
    assert ex.jobs == 2 * available_cores()
    assert f"--jobs 99 capped at {2 * available_cores()}" in capsys.readouterr().err
    with ex:
        assert ex.map(square_or_fail, [5, 1], progress=False) == [(25, 1), (1, 1)]
        assert ex._pool_size == 2  # not one process per job asked for

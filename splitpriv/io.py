"""Small run helpers: atomic writes (nothing half-written when a run dies), the device and the
number of CPU threads."""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import secrets
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import torch

T = TypeVar("T")

#: what reading a damaged, truncated or foreign file raises (besides FileNotFoundError)
READ_ERRORS = (OSError, EOFError, ValueError, KeyError, RuntimeError, UnicodeDecodeError,
               zipfile.BadZipFile, pickle.UnpicklingError)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it into place only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # a fresh name the block creates itself, so the file gets the umask's permissions
    tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_file(path: str | Path, load: Callable[[Path], T], what: str) -> T:
    """``load(path)``, with any failure to read it as one line naming the file: the one place
    that turns OSError, BadZipFile, a truncated pickle... into an error a user can act on.

    Raises:
        ValueError: ``PATH: no such file``, ``PATH: is a directory...``, or ``PATH: cannot be
            read as WHAT (reason)``.
    """
    path = Path(path)
    try:
        return load(path)
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file") from None
    except (IsADirectoryError, NotADirectoryError):
        raise ValueError(f"{path}: not a file") from None
    except READ_ERRORS as exc:
        lines = str(exc).strip().splitlines()
        reason = lines[0] if lines else type(exc).__name__
        raise ValueError(f"{path}: cannot be read as {what} ({reason})") from None


def read_json(path: str | Path) -> Any:
    """A JSON file's content.

    Raises:
        ValueError: the file is missing, unreadable or not JSON (named).
    """
    return read_file(path, lambda p: json.loads(p.read_text()), "JSON")


def torch_save(obj: Any, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def torch_load(path: str | Path) -> Any:
    """A tensor file written by :func:`torch_save`, on the CPU, tensors and plain containers only.

    Raises:
        ValueError: the file is missing, truncated, corrupt or holds something else (named).
    """
    return read_file(path, lambda p: torch.load(p, map_location="cpu", weights_only=True),
                     "a torch file")


def save_npz(path: str | Path, arrays: dict[str, Any]) -> None:
    """``arrays`` as an uncompressed ``.npz``, atomically."""
    import numpy as np

    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)


def load_npz(path: str | Path) -> dict[str, Any]:
    """Every array of an ``.npz`` written by :func:`save_npz`, read into memory.

    Raises:
        ValueError: the file is missing, truncated or not an npz (named, :func:`read_file`).
    """
    import numpy as np

    def load(p: Path) -> dict[str, Any]:
        with np.load(p, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}

    return read_file(path, load, "an npz file")


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present, else the CPU.

    Raises:
        ValueError: a name torch does not know, or a CUDA device this machine does not have.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ValueError(f"device: unknown device {name!r} (auto, cpu, cuda, cuda:N)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device: {name!r} asked for, but torch sees no CUDA device here")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device: {name!r} asked for, but there are only "
                             f"{torch.cuda.device_count()} CUDA device(s)")
    return device


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``n`` torch CPU threads (None: unchanged), restoring the setting after.

    The split model's kernels are small: on a CPU one thread is fastest (two threads made an
    epoch 2.4x slower on the 2-core development machine, ``benchmarks/speed.py --threads 2``)."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)

"""Optional experiment tracking (``splitpriv train --log tensorboard``, off by default): each
epoch's metrics and the run's privacy claims, written as TensorBoard events to DIR/tensorboard/.

The tracker reads what the run itself writes, so it needs nothing from the trainer: while the run
trains it follows DIR/metrics.jsonl (one line per finished epoch; a resumed run's earlier epochs
are written too) and, when the run ends, DIR/result.json's privacy claims
(:class:`~splitpriv.defense.PrivacyClaim`). Per epoch, at step = the epoch: ``PHASE/loss``,
``PHASE/accuracy``, ``PHASE/macro_f1``, ``PHASE/balanced_accuracy`` for the train, val and test
phases and ``time/seconds``. At the end: ``privacy/epsilon`` (the last formal claim's accounted
epsilon, where there is one), ``result/test_accuracy`` (the validation-selected epoch's), and a
text ``privacy/claims`` with every claim: its name, formal or not, epsilon and delta, scope and
conditions (``--defense`` specs and the config as the text ``config``).

It uses TensorBoard's ``SummaryWriter`` (``torch.utils.tensorboard``), which needs the
``tensorboard`` package: ``pip install 'splitpriv[tracking]'`` (scripts/setup.sh installs it).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from splitpriv.defense import PrivacyClaim
from splitpriv.io import read_json

BACKENDS = ("tensorboard",)
PHASES = ("train", "val", "test")
MEASURES = ("loss", "accuracy", "macro_f1", "balanced_accuracy")


def check_backend(name: str) -> None:
    """Refuse, before anything trains, a backend that is unknown or not installed.

    Raises:
        ValueError: one line naming the flag and the install command.
    """
    if name not in BACKENDS:
        raise ValueError(f"--log must be one of {BACKENDS}, got {name!r}")
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:
        raise ValueError("--log tensorboard needs the tensorboard package: pip install "
                         "'splitpriv[tracking]'") from None


def claims_text(result: dict[str, Any]) -> str:
    """Every privacy claim of a result.json in words, one markdown line each."""
    lines = []
    for claim in map(PrivacyClaim.from_dict, result.get("defenses", [])):
        if claim.formal:
            head = f"epsilon {claim.epsilon:g}, delta {claim.delta:g}, formal ({claim.accountant})"
        else:
            head = "no formal guarantee"
        lines.append(f"- **{claim.name}**: {head}; scope: {claim.scope or '-'}; conditions: "
                     + ("; ".join(claim.conditions) or "-"))
    return "\n".join(lines) or "no defense: no privacy claim"


class Tracker:
    """Write a run directory's epochs and claims to TensorBoard while it trains: a context
    manager around the training (every ``interval`` seconds the new lines of metrics.jsonl; on
    exit the rest and, if the run finished, its claims)."""

    def __init__(self, run_dir: str | Path, backend: str = "tensorboard",
                 interval: float = 5.0) -> None:
        check_backend(backend)
        self.run_dir, self.interval = Path(run_dir), interval
        self.written = 0
        self.writer: Any = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def log_dir(self) -> Path:
        return self.run_dir / "tensorboard"

    def write_epochs(self) -> int:
        """The epochs metrics.jsonl holds beyond those written; how many were written now."""
        try:
            lines = [ln for ln in (self.run_dir / "metrics.jsonl").read_text().splitlines()
                     if ln.strip()]
        except OSError:
            return 0
        new = 0
        for line in lines[self.written:]:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # a line being written: read it next time
                break
            self._writer().add_scalar("time/seconds", row.get("seconds", 0.0), row["epoch"])
            for phase in PHASES:
                for m in MEASURES:
                    value = row.get(f"{phase}_{m}")
                    if isinstance(value, (int, float)):
                        self._writer().add_scalar(f"{phase}/{m}", value, row["epoch"])
            self.written += 1
            new += 1
        if new:
            self._writer().flush()
        return new

    def write_result(self) -> bool:
        """The finished run's claims and headline (False: no result.json yet)."""
        path = self.run_dir / "result.json"
        if not path.is_file():
            return False
        result = read_json(path)
        step = int(result.get("epochs", self.written))
        w = self._writer()
        formal = [c for c in map(PrivacyClaim.from_dict, result.get("defenses", []))
                  if c.formal and c.epsilon is not None]
        epsilon = formal[-1].epsilon if formal else None
        if epsilon is not None:
            w.add_scalar("privacy/epsilon", float(epsilon), step)
        w.add_scalar("result/test_accuracy", float(result["test_accuracy"]), step)
        w.add_text("privacy/claims", claims_text(result), step)
        w.add_text("config", "    " + json.dumps(result.get("config", {}), indent=1)
                   .replace("\n", "\n    "), step)
        w.flush()
        return True

    def _writer(self) -> Any:
        if self.writer is None:
            import shutil

            from torch.utils.tensorboard import SummaryWriter

            # every epoch is (re)written from metrics.jsonl: a resumed or retrained run's old
            # events would repeat its steps
            shutil.rmtree(self.log_dir, ignore_errors=True)
            self.writer = SummaryWriter(log_dir=str(self.log_dir))
        return self.writer

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.write_epochs()

    def __enter__(self) -> Tracker:
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.write_epochs()
        self.write_result()
        if self.writer is not None:
            self.writer.close()

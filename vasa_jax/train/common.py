"""Pieces every trainer shares: metrics logging, the non-finite-loss guard, small timers.

Each trainer appends one JSON object per logged step to `WORKDIR/metrics.jsonl` and writes the
same scalars as TensorBoard events under `WORKDIR/tensorboard/`.
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any, Mapping

import numpy as np


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or inf; the message names the step and the last good checkpoint."""


def _scalar(v: Any) -> float | int:
    if isinstance(v, (int, np.integer)):
        return int(v)
    return float(np.asarray(v))


def is_remote(path: str | os.PathLike) -> bool:
    """A bucket path (gs://, s3://, ...) rather than a local one."""
    return "://" in os.fspath(path)


class MetricsWriter:
    """Appends `{"step": ..., name: value, ...}` lines to metrics.jsonl and TensorBoard events.

    A bucket workdir (gs://...) gets metrics.jsonl rewritten whole at each write (object stores
    cannot append; the file stays small) and no TensorBoard events.
    """

    def __init__(self, workdir: str | os.PathLike, *, tensorboard: bool = True,
                 enabled: bool = True):
        self.path = os.path.join(os.fspath(workdir), "metrics.jsonl")
        self.enabled = enabled  # only process 0 writes in multi-host runs
        self._tb = None
        self._remote_text = None
        if enabled and is_remote(workdir):
            from etils import epath

            epath.Path(workdir).mkdir(parents=True, exist_ok=True)
            path = epath.Path(self.path)
            self._remote_text = path.read_text() if path.exists() else ""
        elif enabled:
            os.makedirs(os.fspath(workdir), exist_ok=True)
            if tensorboard:
                from tensorboardX import SummaryWriter

                self._tb = SummaryWriter(os.path.join(os.fspath(workdir), "tensorboard"))

    def write(self, step: int, metrics: Mapping[str, Any]) -> dict:
        record = {"step": int(step)}
        record.update({k: _scalar(v) for k, v in metrics.items()})
        if not self.enabled:
            return record
        if self._remote_text is not None:
            from etils import epath

            self._remote_text += json.dumps(record) + "\n"
            epath.Path(self.path).write_text(self._remote_text)
            return record
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for k, v in record.items():
                if k != "step":
                    self._tb.add_scalar(k, v, int(step))
        return record

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def read_metrics(workdir: str | os.PathLike) -> list[dict]:
    from etils import epath

    text = epath.Path(os.path.join(os.fspath(workdir), "metrics.jsonl")).read_text()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def check_finite(step: int, metrics: Mapping[str, Any], last_good_step: int | None) -> None:
    """Raises NonFiniteLossError if any metric is NaN/inf, naming the step and what to do."""
    bad = sorted(k for k, v in metrics.items() if not math.isfinite(float(np.asarray(v))))
    if bad:
        where = (f"the last good checkpoint is step {last_good_step}"
                 if last_good_step is not None else "no checkpoint was written yet")
        raise NonFiniteLossError(
            f"non-finite {', '.join(bad)} at step {step}; training stopped, {where} "
            f"(lower the learning rate or check the data, then resume)")


class StepTimer:
    """Steps per second between successive `tick` calls."""

    def __init__(self):
        self._t = time.perf_counter()
        self._step = None

    def tick(self, step: int) -> float:
        now = time.perf_counter()
        rate = 0.0
        if self._step is not None and step > self._step:
            rate = (step - self._step) / max(now - self._t, 1e-9)
        self._t, self._step = now, step
        return rate

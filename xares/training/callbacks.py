"""Callbacks: training throughput in samples per second."""

from __future__ import annotations

import time

import lightning.pytorch as pl


class Throughput(pl.Callback):
    """Logs ``train/samples_per_sec`` averaged over the last ``window`` optimisation steps."""

    def __init__(self, window: int = 10):
        self.window = window
        self._start: float | None = None
        self._samples = 0
        self._steps = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self._start is None:
            self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._samples += int(batch["audio"].shape[0])
        self._steps += 1
        if self._steps >= self.window:
            elapsed = time.perf_counter() - self._start
            if elapsed > 0:
                pl_module.log("train/samples_per_sec", self._samples / elapsed, prog_bar=True)
            self._start, self._samples, self._steps = time.perf_counter(), 0, 0

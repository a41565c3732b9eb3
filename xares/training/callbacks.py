"""Callbacks: training throughput, and the efficiency block of a run's report."""

from __future__ import annotations

import logging
import resource
import sys
import time
from typing import Any

import lightning.pytorch as pl
import torch

from xares.encoders.contract import normalise_output

log = logging.getLogger(__name__)

# Completed CUDA event pairs are folded into a running total once this many are pending, so a
# long run does not hold one pair per step (query() does not block).
_PENDING_EVENTS = 256


def _sig(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else float(f"{value:.{digits}g}")


class Efficiency(pl.Callback):
    """Measures what a run costs: the encoder's speed, train and eval throughput, memory, time.

    Logs ``train/samples_per_sec`` over the last ``window`` steps while training, and
    :meth:`summary` returns the ``efficiency`` block of ``scores.json``.

    Nothing here waits for the GPU inside a step: encoder time is taken with CUDA events and
    audio/frame counts are summed on the device; both are read at the end of a phase. The numbers
    are this process's (rank 0 writes the report); no collective call is made, so a rank that
    stops early cannot hang the others.
    """

    def __init__(self, window: int = 10, sample_rate: int | None = None):
        self.window = window
        self.sample_rate = sample_rate
        self._device: torch.device | None = None
        self._hooks: list = []
        self._encoder: torch.nn.Module | None = None
        # encoder
        self._calls = 0
        self._encoder_seconds = 0.0
        self._events: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []
        self._call_started: float | torch.cuda.Event | None = None
        self._call_mask: torch.Tensor | None = None
        self._audio_samples: torch.Tensor | int = 0
        self._frames: torch.Tensor | int = 0
        self._frames_known = True
        # phases
        self.fit_start: float | None = None
        self.fit_end: float | None = None
        self.test_start: float | None = None
        self.test_end: float | None = None
        # training loop
        self._steps = 0
        self._samples = 0
        self._steady_samples = 0
        self._first_end: float | None = None
        self._loop_end: float | None = None
        self._warmup: float | None = None
        self._batch_start: float | None = None
        self._last_end: float | None = None
        self._wait = 0.0
        self._window_start: float | None = None
        self._window_samples = 0
        self._window_steps = 0
        # test loop
        self._clips = 0
        self._test_loop_start: float | None = None
        self._test_loop_end: float | None = None

    # ------------------------------------------------------------------ helpers
    @classmethod
    def of(cls, trainer: pl.Trainer, sample_rate: int | None = None) -> Efficiency:
        """The trainer's meter; one is added when the config has none (``xares.run.evaluate``)."""
        for callback in trainer.callbacks:  # type: ignore[attr-defined]
            if isinstance(callback, cls):
                return callback
        meter = cls(sample_rate=sample_rate)
        trainer.callbacks.append(meter)  # type: ignore[attr-defined]
        return meter

    def _cuda(self) -> bool:
        return self._device is not None and self._device.type == "cuda"

    def _now(self) -> float:
        # Phase boundaries only: the queued GPU work belongs to the phase that queued it.
        if self._cuda():
            torch.cuda.synchronize(self._device)
        return time.perf_counter()

    # ------------------------------------------------------------------ encoder hooks
    def _before_encoder(self, module, args, kwargs) -> None:
        audio = args[0] if args else kwargs.get("audio")
        mask = args[1] if len(args) > 1 else kwargs.get("audio_attention_mask")
        if mask is None:
            mask = torch.ones_like(audio, dtype=torch.long)
        self._call_mask = mask
        self._audio_samples = self._audio_samples + torch.count_nonzero(mask)
        if audio.is_cuda:
            start = torch.cuda.Event(enable_timing=True)
            start.record()
            self._call_started = start
        else:
            self._call_started = time.perf_counter()

    def _after_encoder(self, module, args, kwargs, output) -> None:
        self._calls += 1
        if isinstance(self._call_started, torch.cuda.Event):
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            self._events.append((self._call_started, end))
            if len(self._events) >= _PENDING_EVENTS:
                self._fold_events(wait=False)
        elif self._call_started is not None:
            self._encoder_seconds += time.perf_counter() - self._call_started
        self._call_started = None
        if self._frames_known:
            try:
                # The same frame mask the model uses, so a mask that does not line up with the
                # frames (or none) counts the frames the model actually keeps.
                _, frame_mask = normalise_output(output, self._call_mask, warn_state={"warned": 1})
                self._frames = self._frames + torch.count_nonzero(frame_mask)
            except Exception:  # an output the model cannot read fails there, with its own message
                self._frames_known = False
        self._call_mask = None

    def _fold_events(self, wait: bool) -> None:
        pending = []
        for start, end in self._events:
            if wait or end.query():
                end.synchronize()
                self._encoder_seconds += start.elapsed_time(end) / 1000.0
            else:
                pending.append((start, end))
        self._events = pending

    def _attach(self, pl_module: pl.LightningModule) -> None:
        encoder = getattr(getattr(pl_module, "model", None), "encoder", None)
        if encoder is None or self._hooks:
            return
        self._encoder = encoder
        self._hooks = [
            encoder.register_forward_pre_hook(self._before_encoder, with_kwargs=True),
            encoder.register_forward_hook(self._after_encoder, with_kwargs=True),
        ]

    def _detach(self) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks = []

    # ------------------------------------------------------------------ lightning hooks
    def setup(self, trainer, pl_module, stage: str) -> None:
        if self._device is None:  # first stage of the run: fit, or test alone
            # The module is moved to its device only after this hook; the strategy knows where.
            self._device = trainer.strategy.root_device if trainer is not None else pl_module.device
            if self._cuda():
                # Peaks of an earlier run in this process (a sweep) are not this run's.
                torch.cuda.reset_peak_memory_stats(self._device)
            if self.sample_rate is None:
                # The rate the clips were read at, from the loaders that read them.
                datamodule = getattr(trainer, "datamodule", None) if trainer is not None else None
                self.sample_rate = getattr(datamodule, "sample_rate", None)
        self._attach(pl_module)

    def teardown(self, trainer, pl_module, stage: str) -> None:
        self._detach()

    def on_fit_start(self, trainer, pl_module) -> None:
        self.fit_start = self._now()

    def on_fit_end(self, trainer, pl_module) -> None:
        self.fit_end = self._now()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        now = time.perf_counter()
        if self._last_end is not None:
            self._wait += now - self._last_end
        self._batch_start = now
        if self._window_start is None:
            self._window_start = now

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        size = int(batch["audio"].shape[0])
        self._steps += 1
        self._samples += size
        if self._first_end is None:
            # The first step carries one-off costs (allocator, kernel selection, compilation);
            # it is reported as warm-up and left out of the steady rate.
            self._first_end = self._now()
            self._warmup = self._first_end - self._batch_start
            self._last_end = time.perf_counter()
        else:
            self._steady_samples += size
            self._last_end = time.perf_counter()
        self._window_samples += size
        self._window_steps += 1
        if self._window_steps >= self.window:
            elapsed = self._last_end - self._window_start
            if elapsed > 0:
                pl_module.log(
                    "train/samples_per_sec", self._window_samples / elapsed, prog_bar=True
                )
            self._window_start, self._window_samples, self._window_steps = None, 0, 0

    def on_train_end(self, trainer, pl_module) -> None:
        self._loop_end = self._now()

    def on_test_start(self, trainer, pl_module) -> None:
        self.test_start = self._now()

    def on_test_epoch_start(self, trainer, pl_module) -> None:
        self._test_loop_start = time.perf_counter()

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self._clips += int(batch["audio"].shape[0])

    def on_test_epoch_end(self, trainer, pl_module) -> None:
        # Callbacks run before the module's hook, so scoring is left out of the loop's rate.
        self._test_loop_end = self._now()

    def on_test_end(self, trainer, pl_module) -> None:
        self.test_end = self._now()

    # ------------------------------------------------------------------ the block
    def _peak_memory(self) -> tuple[float, str]:
        if self._cuda():
            return torch.cuda.max_memory_allocated(self._device) / 2**20, "cuda max allocated"
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        # ru_maxrss is in kilobytes on Linux and in bytes on macOS.
        return peak / (2**20 if sys.platform == "darwin" else 2**10), "process peak RSS"

    def _encoder_block(self) -> dict[str, Any] | None:
        if self._encoder is None:
            return None
        self._fold_events(wait=True)
        # Without a known rate the audio's length is unknown, and so is the frame rate measured.
        rate = self.sample_rate
        audio_seconds = float(self._audio_samples) / float(rate) if rate else 0.0
        frames = float(self._frames) if self._frames_known and self._calls else None
        frame_rate = getattr(self._encoder, "frame_rate", None)
        if audio_seconds > 0 and frames is not None:
            frame_rate = frames / audio_seconds
        return {
            "name": type(self._encoder).__name__,
            "parameters": sum(p.numel() for p in self._encoder.parameters()),
            # With features served from a cache, only real encoder calls are timed and counted.
            "calls": self._calls,
            "audio_seconds": _sig(audio_seconds),
            "seconds": _sig(self._encoder_seconds),
            "real_time_factor": _sig(self._encoder_seconds / audio_seconds)
            if audio_seconds > 0
            else None,
            "frames_per_second": _sig(frame_rate) if frame_rate is not None else None,
            "timer": "cuda events" if self._cuda() else "perf_counter",
        }

    def _train_block(self) -> dict[str, Any] | None:
        if not self._steps:
            return None
        steady = None
        wait = None
        if self._steps > 1 and self._loop_end is not None:
            loop = self._loop_end - self._first_end
            if loop > 0:
                steady = self._steady_samples / loop
                wait = 100.0 * self._wait / loop
        return {
            "steps": self._steps,
            "samples": self._samples,
            "samples_per_sec": _sig(steady),
            "warmup_seconds": _sig(self._warmup),
            "data_wait_percent": _sig(wait, 3),
        }

    def _eval_block(self) -> dict[str, Any] | None:
        if self._test_loop_end is None or self._test_loop_start is None:
            return None
        loop = self._test_loop_end - self._test_loop_start
        return {
            "clips": self._clips,
            "clips_per_sec": _sig(self._clips / loop) if loop > 0 and self._clips else None,
            "loop_seconds": _sig(loop),
        }

    def summary(self, started: float | None = None, trainer: pl.Trainer | None = None) -> dict:
        """The ``efficiency`` block; ``started`` is the ``time.perf_counter()`` of the run's start.

        Phases: setup (start until training, or evaluation when there is no training), train
        (the fit), eval (the test loop with scoring), total (start until now).
        """
        now = time.perf_counter()
        first = self.fit_start if self.fit_start is not None else self.test_start

        def span(a: float | None, b: float | None) -> float | None:
            return _sig(b - a) if a is not None and b is not None else None

        peak, peak_kind = self._peak_memory()
        device = str(self._device) if self._device is not None else "cpu"
        if self._cuda():
            device += f" ({torch.cuda.get_device_name(self._device)})"
        return {
            "device": device,
            "rank": trainer.global_rank if trainer is not None else 0,
            "world_size": trainer.world_size if trainer is not None else 1,
            "encoder": self._encoder_block(),
            "train": self._train_block(),
            "eval": self._eval_block(),
            "peak_memory_mb": _sig(peak),
            "peak_memory_kind": peak_kind,
            "seconds": {
                "setup": span(started, first),
                "train": span(self.fit_start, self.fit_end),
                "eval": span(self.test_start, self.test_end),
                "total": span(started, now),
            },
        }

"""Stop on SIGTERM within seconds wherever the run is, saving a checkpoint when training.

SIGTERM is what ``timeout``, ``kill``, job schedulers and SLURM pre-emption send. Lightning
already acts on it between training steps: its handler sets ``trainer.received_sigterm``
and the loop raises ``SIGTERMException`` at the next batch end. That leaves two gaps this
module closes:

- outside ``trainer.fit`` / ``trainer.test`` (preparing data, loading models, writing
  reports) nothing listens, and a stuck data stream or step never reaches a batch end;
- ``SIGTERMException`` exits with status 0, so a killed run looks like a finished one.

``stop_on_sigterm()`` (around the whole run) raises ``Terminated`` (exit status 143, as a
process killed by SIGTERM) at once, except inside training, where Lightning gets
``grace_seconds`` to reach a batch end; ``CheckpointOnTerminate`` then writes ``last.ckpt``
with the step reached. Under SLURM, Lightning's own requeue on the pre-emption signal
(SIGUSR1 by default) is left as it is.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.utilities.exceptions import SIGTERMException

from xares.layout import LAST_CHECKPOINT

log = logging.getLogger(__name__)

EXIT_STATUS = 128 + signal.SIGTERM


class Terminated(SystemExit):
    """The run was stopped by SIGTERM; exits with status 143."""

    def __init__(self, message: str):
        super().__init__(EXIT_STATUS)
        self.message = message

    def __str__(self) -> str:
        return self.message


class _State:
    # Set while a training loop can still stop cleanly at a batch end.
    grace_seconds: float | None = None
    owner: int | None = None  # the process that installed the handlers


def _raise(message: str) -> None:
    log.error(message)
    raise Terminated(message)


def _on_sigterm(signum, frame) -> None:
    if os.getpid() != _State.owner:
        # A forked data-loader worker (a scheduler signals every process of the job): the
        # main process decides, and shuts its workers down as it stops.
        return
    if _State.grace_seconds is None:
        _raise("SIGTERM received: stopping now")
    log.warning(
        "SIGTERM received during training: stopping at the end of this step "
        "(at most %.0f s) and saving a checkpoint",
        _State.grace_seconds,
    )
    signal.setitimer(signal.ITIMER_REAL, _State.grace_seconds)


def _on_alarm(signum, frame) -> None:
    if os.getpid() != _State.owner:
        return
    _raise(
        f"SIGTERM received and no training step ended within {_State.grace_seconds:.0f} s: "
        "stopping now"
    )


def _worker_sigterm(signum, frame) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second one ends the worker


def leave_sigterm_to_the_main_process(worker_id: int) -> None:
    """``worker_init_fn`` of the data loaders: a worker outlives the first SIGTERM.

    Schedulers signal every process of a job. A loader worker that died at once would fail
    the step in progress ("DataLoader worker is killed by signal") before the main process
    could finish it and save a checkpoint; the main process shuts its workers down as it
    stops, and a second SIGTERM still ends a worker.
    """
    signal.signal(signal.SIGTERM, _worker_sigterm)


@contextlib.contextmanager
def stop_on_sigterm() -> Iterator[None]:
    """Install the handlers for the duration of a run (main thread only; a no-op elsewhere)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGALRM)}
    _State.grace_seconds, _State.owner = None, os.getpid()
    signal.signal(signal.SIGTERM, _on_sigterm)
    signal.signal(signal.SIGALRM, _on_alarm)
    try:
        yield
    except SIGTERMException as error:  # Lightning's clean stop at a batch end: exit 0 otherwise
        raise Terminated("stopped by SIGTERM") from error
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        _State.grace_seconds = None
        for signum, handler in previous.items():
            signal.signal(signum, handler)


class CheckpointOnTerminate(pl.Callback):
    """Writes ``<dirpath>/last.ckpt`` when training stops on SIGTERM between steps.

    A stop at a batch end (Lightning's) or while waiting for data leaves the weights and the
    optimiser consistent, so the checkpoint resumes exactly; a stop in the middle of a step
    that overran ``grace_seconds`` does not, and the last regular checkpoint stays.
    """

    def __init__(self, dirpath: str | Path, grace_seconds: float = 10.0):
        self.dirpath = Path(dirpath)
        self.grace_seconds = float(grace_seconds)
        self._in_step = False

    def on_train_start(self, trainer, pl_module) -> None:
        _State.grace_seconds = self.grace_seconds

    def on_train_end(self, trainer, pl_module) -> None:
        _State.grace_seconds = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._in_step = True

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._in_step = False

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        _State.grace_seconds = None
        signal.setitimer(signal.ITIMER_REAL, 0)
        if not isinstance(exception, (SIGTERMException, Terminated)):
            return
        if trainer.state.fn != "fit" or trainer.fast_dev_run:
            return
        if self._in_step:
            log.warning(
                "stopped inside a training step: %s keeps its last regular checkpoint", self.dirpath
            )
            return
        path = self.dirpath / LAST_CHECKPOINT
        trainer.save_checkpoint(path, weights_only=False)  # the full state, to resume from
        log.warning(
            "stopped by SIGTERM at step %d; resume with ckpt_path=%s", trainer.global_step, path
        )

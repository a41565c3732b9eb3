"""SIGTERM (timeout, kill, schedulers, pre-emption) ends a run within seconds wherever it is,
and a run stopped inside training keeps a checkpoint of the step it reached."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from helpers.config import FAST, ROOT

# Slow or hanging on purpose; writes how often it has been called, so the test knows when
# training has started (call 1 is the contract check).
ENCODER = """
import time
from pathlib import Path

import torch


class SlowEncoder(torch.nn.Module):
    def __init__(self, marker, delay=0.0, hang_after=None):
        super().__init__()
        self.output_dim, self.marker, self.delay, self.hang_after = 8, marker, delay, hang_after
        self.calls = 0

    def forward(self, audio, audio_attention_mask=None):
        self.calls += 1
        Path(self.marker).write_text(str(self.calls))
        if self.hang_after is not None and self.calls > self.hang_after:
            time.sleep(3600)
        time.sleep(self.delay)
        frames = max(1, audio.shape[1] // 1600)
        return audio[:, : frames * 1600].reshape(audio.shape[0], frames, 1600)[..., :8], None
"""


def start(tmp_path: Path, data_home: Path, *overrides: str) -> subprocess.Popen:
    (tmp_path / "slow_encoder.py").write_text(ENCODER)
    env = dict(os.environ, XARES_DATA_HOME=str(data_home), WANDB_MODE="offline")
    command = [
        sys.executable,
        str(ROOT / "train.py"),
        *FAST,
        "logger=none",
        "encoder=custom",
        f"encoder.path={tmp_path / 'slow_encoder.py'}",
        f"+encoder.kwargs.marker={tmp_path / 'calls'}",
        f"hydra.run.dir={tmp_path / 'run'}",
        *overrides,
    ]
    return subprocess.Popen(
        command,
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group, as a scheduler's job
    )


def wait_for(condition, proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended early: {proc.stdout.read()[-3000:]}")
        assert time.monotonic() < deadline, "the run never got there"
        time.sleep(0.2)


def calls(tmp_path: Path) -> int:
    try:
        return int((tmp_path / "calls").read_text() or 0)
    except (FileNotFoundError, ValueError):
        return 0


def terminate(proc: subprocess.Popen, group: bool = False) -> tuple[int, float, str]:
    sent = time.monotonic()
    if group:  # what SLURM and most schedulers do: every process of the job, workers included
        os.killpg(proc.pid, signal.SIGTERM)
    else:
        proc.send_signal(signal.SIGTERM)
    err, _ = proc.communicate(timeout=60)
    return proc.returncode, time.monotonic() - sent, err


def group_ends(group: int, timeout: float = 15) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    return False


def test_sigterm_in_training_stops_at_the_step_end_with_a_checkpoint(tmp_path, data_home):
    proc = start(
        tmp_path,
        data_home,
        "trainer.max_steps=1000",
        "+encoder.kwargs.delay=0.2",
        "data.num_workers=1",
    )
    wait_for(lambda: calls(tmp_path) >= 4, proc)
    status, seconds, err = terminate(proc, group=True)
    assert status == 128 + signal.SIGTERM, err[-3000:]
    assert seconds < 10
    assert group_ends(proc.pid), "a data-loader worker outlived the run"
    checkpoint = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)
    assert 1 <= checkpoint["global_step"] < 1000
    assert "resume with ckpt_path=" in err


def test_sigterm_ends_a_hung_training_step_within_the_grace(tmp_path, data_home):
    proc = start(
        tmp_path,
        data_home,
        "trainer.max_steps=1000",
        "+encoder.kwargs.hang_after=2",
        "callbacks.checkpoint_on_terminate.grace_seconds=2",
    )
    wait_for(lambda: calls(tmp_path) >= 3, proc)  # inside the second training step, for good
    status, seconds, err = terminate(proc)
    assert status == 128 + signal.SIGTERM, err[-3000:]
    assert seconds < 10
    assert "no training step ended within 2 s" in err


def test_sigterm_outside_training_stops_at_once(tmp_path, data_home):
    # Data preparation that never ends (a download that hangs, a generator stuck).
    proc = start(
        tmp_path,
        data_home,
        "task.prepare._target_=time.sleep",
        "~task.prepare.root",
        "~task.prepare.seed",
        "~task.prepare.train",
        "~task.prepare.test",
        "+task.prepare._args_=[3600]",
    )
    wait_for(lambda: (tmp_path / "run" / ".xares_run.json").is_file(), proc)
    time.sleep(2)
    status, seconds, err = terminate(proc)
    assert status == 128 + signal.SIGTERM, err[-3000:]
    assert seconds < 5
    assert "SIGTERM received: stopping now" in err

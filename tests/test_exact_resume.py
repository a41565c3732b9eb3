"""A run killed and resumed is the run it resumes: same weights and scores (deterministic mode)."""

from __future__ import annotations

import shutil

import pytest
import torch
from helpers.config import FAST

from xares.run.train import train
from xares.training.module import AudioLLMModule

COMMON = [
    *FAST,
    "logger=none",
    "trainer.max_steps=30",
    "callbacks.model_checkpoint.every_n_train_steps=10",
    "data.eval_limit=8",
]


class Killed(RuntimeError):
    """Stands for a kill -9 between two training steps."""


def kill_at(monkeypatch, step: int) -> None:
    original = AudioLLMModule.on_train_batch_start

    def dies(self, batch, batch_idx):
        if self.global_step == step:
            raise Killed(f"killed at step {step}")
        return original(self, batch, batch_idx)

    monkeypatch.setattr(AudioLLMModule, "on_train_batch_start", dies)


def weights(run) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]


def killed_then_resumed(make_cfg, monkeypatch, run, *overrides, step: int = 20):
    with monkeypatch.context() as patch:
        kill_at(patch, step)  # the checkpoint of that step is written; the next never runs
        with pytest.raises(Killed):
            train(make_cfg(*COMMON, *overrides, output_dir=run))
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == step
    return train(make_cfg(*COMMON, *overrides, f"ckpt_path={run}", output_dir=run))


def test_a_deterministic_run_killed_and_resumed_equals_the_uninterrupted_one(
    make_cfg, tmp_path, monkeypatch
):
    # Features kept on disk outlive the kill, so the resumed run reads what the first one wrote.
    exact = ["trainer=deterministic", f"speed.feature_cache.dir={tmp_path / 'features'}"]
    whole = train(make_cfg(*COMMON, *exact, output_dir=tmp_path / "whole"))
    shutil.rmtree(tmp_path / "features")  # as if the uninterrupted run had never been
    resumed = killed_then_resumed(make_cfg, monkeypatch, tmp_path / "killed", *exact)
    # The same batches in the same order with the same dropout: the same weights, bit for bit.
    a, b = weights(tmp_path / "whole"), weights(tmp_path / "killed")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [t["score"] for t in resumed["tasks"]] == [t["score"] for t in whole["tasks"]]
    assert resumed["overall"] == whole["overall"]
    assert "resumed" not in {r["code"] for r in resumed["comparability"]["reasons"]}


@pytest.mark.slow  # a minute of training runs; `make test-full` runs it
def test_a_resume_that_is_not_exact_says_so(make_cfg, tmp_path, monkeypatch):
    resumed = killed_then_resumed(make_cfg, monkeypatch, tmp_path / "killed")
    reason = next(r for r in resumed["comparability"]["reasons"] if r["code"] == "resumed")
    assert "resumed at step 20 without trainer=deterministic" in reason["text"]
    # Deterministic, but with the in-memory feature cache alone: not exact either.
    again = killed_then_resumed(make_cfg, monkeypatch, tmp_path / "memory", "trainer=deterministic")
    assert "resumed" in {r["code"] for r in again["comparability"]["reasons"]}


@pytest.mark.slow  # a minute of training runs; `make test-full` runs it
def test_with_loader_workers_the_resumed_stream_goes_on_in_turn(make_cfg, tmp_path, monkeypatch):
    """Batches come from the workers in turn: after the resume, the next worker's turn."""
    exact = [
        "trainer=deterministic",
        f"speed.feature_cache.dir={tmp_path / 'features'}",
        "data.num_workers=2",
        # An odd step: the first batch after the resume is the second worker's turn.
        "callbacks.model_checkpoint.every_n_train_steps=7",
    ]
    train(make_cfg(*COMMON, *exact, output_dir=tmp_path / "whole"))
    shutil.rmtree(tmp_path / "features")
    killed_then_resumed(make_cfg, monkeypatch, tmp_path / "killed", *exact, step=21)
    a, b = weights(tmp_path / "whole"), weights(tmp_path / "killed")
    assert all(torch.equal(a[k], b[k]) for k in a)

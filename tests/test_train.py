"""End-to-end runs on generated shards: training, evaluation, files, resume, determinism, sweeps."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import torch
from helpers.config import FAST, ROOT

from xares.run.evaluate import evaluate
from xares.run.train import train


def read_tsv(path):
    with open(path) as f:
        return list(csv.DictReader(f, delimiter="\t"))


def train_losses(run_dir) -> list[float]:
    with open(run_dir / "csv" / "metrics.csv") as f:
        return [float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")]


def test_training_learns_and_writes_all_outputs(make_cfg, tmp_path):
    cfg = make_cfg(
        *FAST, "trainer.max_steps=120", "trainer.log_every_n_steps=5", "data.eval_limit=16"
    )
    summary = train(cfg)
    run = tmp_path / "run"

    losses = train_losses(run)
    assert len(losses) >= 10
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < 0.7 * first, f"loss did not fall: {losses}"

    rows = read_tsv(run / "scores.tsv")
    assert [r["task"] for r in rows] == ["eval_pitch", "eval_melody", "overall"]
    assert [r["metric"] for r in rows[:2]] == ["Accuracy", "iWER"]
    for row in rows:
        assert 0.0 <= float(row["score"]) <= 1.0
    overall = (float(rows[0]["score"]) + float(rows[1]["score"])) / 2
    assert abs(float(rows[2]["score"]) - overall) < 1e-3
    assert abs(summary["overall"] - overall) < 1e-3

    scores = json.loads((run / "scores.json").read_text())
    assert [t["task"] for t in scores["tasks"]] == ["eval_pitch", "eval_melody"]
    assert scores["tasks"][0]["clips"] == 16
    # Each test set's identity (its clips, labels, prompt and metric), as the report groups.
    ids = [t["set_id"] for t in scores["tasks"]]
    assert len(set(ids)) == 2 and all(len(i) == 12 for i in ids)
    # The smoke task is no challenge task, and its batch of 8 is not the protocol's 4.
    verdict = scores["comparability"]
    assert verdict["comparable"] is False
    codes = {r["code"] for r in verdict["reasons"]}
    assert {"task", "decoder", "batch", "eval_limit"} <= codes
    assert "decoder_dtype" not in codes  # fp32 on a CPU

    for task in ("eval_pitch", "eval_melody"):
        with open(run / f"predictions_{task}.csv") as f:
            reader = csv.DictReader(f)
            assert reader.fieldnames == ["key", "prompt", "prediction", "reference"]
            items = list(reader)
        assert len(items) == 16
        assert all(r["key"].startswith(task.removeprefix("eval_")) for r in items)

    # Pitch answers come from the audio: a trained model beats chance (0.25) clearly.
    assert float(rows[0]["score"]) >= 0.5

    # Per-task scores, learning rate and throughput reached the logger.
    with open(run / "csv" / "metrics.csv") as f:
        header = next(csv.reader(f))
    for key in (
        "train/loss",
        "train/samples_per_sec",
        "test/eval_pitch/Accuracy",
        "test/eval_melody/iWER",
    ):
        assert key in header
    assert any(h.startswith("lr-") for h in header)

    # Checkpoint: only trainable tensors plus the resolved config.
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    keys = list(ckpt["state_dict"])
    assert keys and all(".projector." in k or "lora_" in k for k in keys)
    assert ckpt["xares_config"]["encoder"]["_target_"].endswith("MelEncoder")
    assert ckpt["global_step"] == 120
    assert ckpt["xares_training"] == {
        "device": "cpu",
        "decoder_dtype": "float32",
        "matmul_precision": "highest",
        "precision": "32-true",
        "world_size": 1,
        "accumulate_grad_batches": 1,
        "steps": 120,
        "skipped_steps": 0,
    }

    # Re-scoring the checkpoint without training gives the same scores.
    eval_cfg = make_cfg(
        f"ckpt_path={run}", "data.eval_limit=16", config_name="eval", output_dir=tmp_path / "eval"
    )
    again = evaluate(eval_cfg)
    assert abs(again["overall"] - summary["overall"]) < 1e-6
    # The re-scoring judges the model by how it was trained (the checkpoint's record) too.
    assert again["comparability"]["reasons"] == summary["comparability"]["reasons"], again[
        "comparability"
    ]["reasons"]
    assert (tmp_path / "eval" / "scores.tsv").is_file()


def test_skipped_steps_neither_count_nor_move_the_schedule(make_cfg, tmp_path, monkeypatch, capsys):
    from xares.models.audio_llm import AudioLLM

    original, calls = AudioLLM.batch_loss, []

    def two_non_finite(self, batch):
        calls.append(1)
        loss = original(self, batch)
        return loss * float("nan") if len(calls) in (3, 4) else loss

    monkeypatch.setattr(AudioLLM, "batch_loss", two_non_finite)
    summary = train(make_cfg(*FAST, "logger=none", "trainer.max_steps=6"))
    assert len(calls) == 8  # six optimiser steps, plus the two skipped
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)
    # Lightning counts the skipped batches in global_step; six of its steps moved weights.
    assert ckpt["global_step"] == 8
    assert ckpt["xares_training"]["skipped_steps"] == 2 and ckpt["xares_training"]["steps"] == 6
    assert ckpt["lr_schedulers"][0]["last_epoch"] == 6  # the schedule advanced per real step
    assert summary["skipped_steps"] == 2
    assert "training: 2 step(s) skipped for a non-finite loss" in capsys.readouterr().out


def test_resume_continues_from_last_checkpoint(make_cfg, tmp_path):
    first = make_cfg(*FAST, "trainer.max_steps=6", "evaluate=false", output_dir=tmp_path / "a")
    train(first)
    ckpt = tmp_path / "a" / "checkpoints" / "last.ckpt"
    assert torch.load(ckpt, weights_only=False)["global_step"] == 6

    # The resumed run keeps the step counter and the scheduler position and stops at 10.
    second = make_cfg(
        *FAST,
        "trainer.max_steps=10",
        "evaluate=false",
        f"ckpt_path={tmp_path / 'a'}",
        output_dir=tmp_path / "b",
    )
    train(second)
    resumed = torch.load(tmp_path / "b" / "checkpoints" / "last.ckpt", weights_only=False)
    assert resumed["global_step"] == 10
    with open(tmp_path / "b" / "csv" / "metrics.csv") as f:
        steps = [int(r["step"]) for r in csv.DictReader(f) if r.get("train/loss")]
    assert steps and min(steps) >= 6


def test_resume_last_finds_newest_run(make_cfg, tmp_path):
    runs = tmp_path / "mel__smoke"
    logs = f"paths.log_dir={tmp_path}"
    train(make_cfg(*FAST, logs, "trainer.max_steps=3", "evaluate=false", output_dir=runs / "t1"))
    cfg = make_cfg(
        *FAST,
        logs,
        "trainer.max_steps=5",
        "evaluate=false",
        "ckpt_path=last",
        output_dir=runs / "t2",
    )
    train(cfg)
    assert (
        torch.load(runs / "t2" / "checkpoints" / "last.ckpt", weights_only=False)["global_step"]
        == 5
    )


def test_deterministic_run_repeats_exactly(make_cfg, tmp_path):
    outputs = []
    for name in ("one", "two"):
        cfg = make_cfg(
            *FAST,
            "trainer=deterministic",
            "trainer.max_steps=8",
            "logger=none",
            output_dir=tmp_path / name,
        )
        train(cfg)
        outputs.append((tmp_path / name / "scores.tsv").read_text())
        outputs.append((tmp_path / name / "predictions_eval_melody.csv").read_text())
    assert outputs[0] == outputs[2]
    assert outputs[1] == outputs[3]


def test_fast_dev_run_debug_config(make_cfg, tmp_path):
    summary = train(make_cfg(*FAST, "debug=fdr", "logger=none"))
    assert [t["task"] for t in summary["tasks"]] == ["eval_pitch", "eval_melody"]
    assert (tmp_path / "run" / "scores.tsv").is_file()


def test_wandb_logger_runs_offline(make_cfg, tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc credentials
    cfg = make_cfg(*FAST, "logger=wandb", "trainer.max_steps=2")
    train(cfg)
    import wandb

    assert wandb.run is None  # finished even though the run went through Lightning
    assert list((tmp_path / "run" / "wandb").glob("offline-run-*"))


def test_multirun_sweeps_two_encoders(tmp_path, data_home):
    env = dict(os.environ, XARES_DATA_HOME=str(data_home), WANDB_MODE="offline")
    command = [
        sys.executable,
        str(ROOT / "train.py"),
        "-m",
        "encoder=mel,dummy",
        *FAST,
        "trainer.max_steps=3",
        "logger=none",
        f"paths.log_dir={tmp_path}",
        f"hydra.sweep.dir={tmp_path}/sweep",
    ]
    result = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    runs = sorted(p.name for p in (tmp_path / "sweep").iterdir() if p.is_dir())
    assert runs == ["0_mel__smoke", "1_dummy__smoke"]
    for run in runs:
        rows = read_tsv(tmp_path / "sweep" / run / "scores.tsv")
        assert rows[-1]["task"] == "overall"
    assert "overall" in result.stdout

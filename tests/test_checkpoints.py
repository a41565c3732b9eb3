"""Checkpoints: unreadable files are named, `last` falls back, other models are refused,
failed writes fail the run."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest
import torch
from conftest import FAST, compose_config

from xares.evaluate import evaluate, evaluation_config
from xares.train import train
from xares.training.checkpoint import (
    CheckpointError,
    VerifiedCheckpointIO,
    model_differences,
    read_checkpoint,
    resolve_checkpoint,
)

QUICK = [*FAST, "logger=none", "trainer.max_steps=3", "data.eval_limit=2"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_home) -> Path:
    """One short mel run: its directory holds checkpoints/last.ckpt."""
    run = tmp_path_factory.mktemp("trained") / "mel__smoke" / "first"
    train(compose_config([*QUICK, "evaluate=false"], run, data_home))
    return run


@pytest.fixture
def no_weights(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the model was built before the checkpoint was checked")

    monkeypatch.setattr("xares.pipeline.build_model", refuse)


def test_empty_and_truncated_checkpoints_name_the_file(trained, tmp_path):
    good = trained / "checkpoints" / "last.ckpt"
    empty = tmp_path / "empty.ckpt"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match=f"{empty} is empty"):
        read_checkpoint(empty)
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=f"{cut} .* is unreadable, probably truncated"):
        read_checkpoint(cut)


def test_last_and_run_directories_fall_back_to_the_newest_readable(trained, make_cfg, tmp_path):
    runs = tmp_path / "mel__smoke"
    old = runs / "old" / "checkpoints"
    old.mkdir(parents=True)
    shutil.copy(trained / "checkpoints" / "last.ckpt", old / "last.ckpt")
    broken = runs / "new" / "checkpoints"
    broken.mkdir(parents=True)
    (broken / "last.ckpt").write_bytes(b"PK\x03\x04 cut short")
    now = time.time()
    os.utime(old / "last.ckpt", (now - 60, now - 60))
    cfg = make_cfg(*QUICK, f"paths.log_dir={tmp_path}")
    path, checkpoint = resolve_checkpoint("last", cfg)
    assert path == str(old / "last.ckpt") and checkpoint["global_step"] == 3

    # Inside one run directory: a step checkpoint when last.ckpt is broken.
    shutil.copy(old / "last.ckpt", broken / "step3.ckpt")
    os.utime(broken / "step3.ckpt", (now - 30, now - 30))
    path, _ = resolve_checkpoint(str(runs / "new"), cfg)
    assert path == str(broken / "step3.ckpt")

    (broken / "step3.ckpt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="none of the 2 checkpoint"):
        resolve_checkpoint(str(runs / "new"), cfg)


def test_evaluating_with_another_encoder_is_refused(trained, make_cfg, no_weights):
    # Same feature width as mel, so the projector's shapes match: it used to load and score 0.
    cfg = make_cfg(
        f"ckpt_path={trained}",
        "encoder=dummy",
        "encoder.output_dim=1280",
        config_name="eval",
        output_dir=trained.parent / "eval_dummy",
    )
    with pytest.raises(CheckpointError) as caught:
        evaluate(cfg)
    message = str(caught.value)
    assert "encoder._target_: checkpoint 'xares.encoders.mel.MelEncoder'" in message
    assert "'xares.encoders.dummy.DummyEncoder'" in message and "allow_ckpt_mismatch" in message


def test_evaluating_with_another_decoder_is_refused(trained, make_cfg, no_weights):
    cfg = make_cfg(
        f"ckpt_path={trained}",
        "llm=smollm2_135m_random",
        config_name="eval",
        output_dir=trained.parent / "eval_decoder",
    )
    with pytest.raises(CheckpointError, match="num_hidden_layers: checkpoint 2, this run 30"):
        evaluate(cfg)


def test_train_false_with_another_encoders_checkpoint_is_refused(trained, make_cfg, no_weights):
    cfg = make_cfg(*QUICK, "encoder=dummy", "train=false", f"ckpt_path={trained}")
    with pytest.raises(CheckpointError, match="trained with another model"):
        train(cfg)


def test_shape_mismatch_names_both_encoders(trained, make_cfg):
    cfg = make_cfg(
        *QUICK, "encoder=dummy", "train=false", f"ckpt_path={trained}", "allow_ckpt_mismatch=true"
    )
    with pytest.raises(
        CheckpointError, match="encoder xares.encoders.mel.MelEncoder .*DummyEncoder"
    ):
        train(cfg)


def test_eval_takes_encoder_options_and_edits_without_plus(trained, make_cfg):
    saved = torch.load(trained / "checkpoints" / "last.ckpt", weights_only=False)["xares_config"]
    cfg = make_cfg(f"ckpt_path={trained}", "encoder=mel", config_name="eval")
    assert not model_differences(saved, _resolved(evaluation_config(cfg, saved)))
    cfg = make_cfg(f"ckpt_path={trained}", "encoder=mel", "encoder.stack=8", config_name="eval")
    assert model_differences(saved, _resolved(evaluation_config(cfg, saved))) == [
        "encoder.stack: checkpoint 16, this run 8"
    ]
    # A challenge task brings the protocol decoder along; it is not the user's choice here.
    cfg = make_cfg(f"ckpt_path={trained}", "task=esc-50", config_name="eval")
    merged = evaluation_config(cfg, saved)
    assert merged.llm.decoder._target_ == saved["llm"]["decoder"]["_target_"]
    assert merged.task.name == "esc-50"


def test_eval_overrides_generation_and_speed_and_keeps_the_rest(trained, make_cfg):
    saved = torch.load(trained / "checkpoints" / "last.ckpt", weights_only=False)["xares_config"]
    cfg = make_cfg(
        f"ckpt_path={trained}",
        "generation.max_new_tokens=3",
        "speed=reference",
        config_name="eval",
    )
    merged = evaluation_config(cfg, saved)
    assert merged.generation.max_new_tokens == 3
    # Settings this command leaves at null keep the checkpoint's values.
    assert merged.generation.repetition_penalty == saved["generation"]["repetition_penalty"]
    assert merged.speed.logits == "full" and saved["speed"]["logits"] == "targets"


def _resolved(cfg):
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg, resolve=True)


def test_a_moved_model_is_the_same_model():
    saved = {"encoder": {"_target_": "E", "name_or_path": "mispeech/dasheng-base", "layer": 6}}
    moved = {"encoder": {"_target_": "E", "name_or_path": "/models/dasheng-base/", "layer": 6}}
    assert model_differences(saved, moved) == []
    other = {"encoder": {"_target_": "E", "name_or_path": "mispeech/dasheng-0.6B", "layer": 6}}
    assert model_differences(saved, other) == [
        "encoder.name_or_path: checkpoint 'dasheng-base', this run 'dasheng-0.6B'"
    ]


def test_unwritable_checkpoint_directory_fails_before_training(make_cfg, tmp_path, no_weights):
    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoints").write_text("a file where the directory should be")
    with pytest.raises(CheckpointError, match="checkpoints cannot be written to"):
        train(make_cfg(*QUICK, output_dir=out))


def test_a_failed_checkpoint_write_fails_the_run(make_cfg, tmp_path, monkeypatch):
    # The error Lightning's own atomic save drops (an unwritable directory, as non-root sees it).
    real = os.replace

    def denied(src, dst):
        if str(dst).endswith(".ckpt"):
            raise PermissionError(1, "Operation not permitted", str(dst))
        real(src, dst)

    monkeypatch.setattr("xares.training.checkpoint.os.replace", denied)
    with pytest.raises(CheckpointError, match=r"could not write checkpoint .*last\.ckpt"):
        train(make_cfg(*QUICK, "evaluate=false"))
    assert not list((tmp_path / "run" / "checkpoints").glob("*.ckpt"))
    assert not list((tmp_path / "run" / "checkpoints").glob(".*.tmp"))


def test_verified_checkpoint_io_writes_whole_files(tmp_path):
    VerifiedCheckpointIO().save_checkpoint({"step": 1}, tmp_path / "a" / "x.ckpt")
    assert torch.load(tmp_path / "a" / "x.ckpt") == {"step": 1}

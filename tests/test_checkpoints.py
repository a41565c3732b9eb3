"""Checkpoints: unreadable and corrupt files are named, `last` falls back, other models are
refused, failed writes fail the run with the file and the cause."""

from __future__ import annotations

import errno
import logging
import os
import shutil
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from helpers.config import FAST, compose_config
from helpers.small_disk import small_disk

from xares.run.evaluate import evaluate, evaluation_config
from xares.run.plan import RunLayout
from xares.run.train import train
from xares.training import checkpoint as checkpoint_module
from xares.training.checkpoint import (
    DIGEST_KEY,
    CheckpointError,
    CheckpointWriteError,
    VerifiedCheckpointIO,
    checkpoint_digest,
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

    monkeypatch.setattr("xares.run.pipeline.build_model", refuse)


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
    path, checkpoint = resolve_checkpoint("last", RunLayout.of(cfg).runs_dir)
    assert path == str(old / "last.ckpt") and checkpoint["global_step"] == 3

    # Inside one run directory: a step checkpoint when last.ckpt is broken.
    shutil.copy(old / "last.ckpt", broken / "step3.ckpt")
    os.utime(broken / "step3.ckpt", (now - 30, now - 30))
    path, _ = resolve_checkpoint(str(runs / "new"), None)
    assert path == str(broken / "step3.ckpt")

    (broken / "step3.ckpt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="none of the 2 checkpoint"):
        resolve_checkpoint(str(runs / "new"), None)


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
    saved = torch.load(tmp_path / "a" / "x.ckpt", weights_only=True)
    assert saved == {"step": 1, DIGEST_KEY: checkpoint_digest({"step": 1})}
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["x.ckpt"]


def flip_tensor_bytes(path: Path, count: int = 16) -> None:
    """Flip ``count`` bytes inside the largest trainable tensor of ``path``; it still unpickles."""
    state = torch.load(path, weights_only=True)["state_dict"]
    tensor = max(state.values(), key=torch.Tensor.numel)
    data = tensor.contiguous().view(torch.uint8).numpy().tobytes()
    raw = bytearray(path.read_bytes())
    start = raw.find(data)  # tensors are stored uncompressed
    assert start >= 0 and raw.find(data, start + 1) < 0
    for offset in range(start + len(data) // 2, start + len(data) // 2 + count):
        raw[offset] ^= 0x5A
    path.write_bytes(bytes(raw))


def test_checkpoints_carry_a_checksum_of_tensors_and_config(trained):
    saved = torch.load(trained / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved[DIGEST_KEY].startswith("sha256:")
    assert saved[DIGEST_KEY] == checkpoint_digest(saved)
    # What it covers: every tensor's bytes and the config, whatever the dicts' order.
    reordered = {k: saved[k] for k in reversed(list(saved))}
    assert checkpoint_digest(reordered) == saved[DIGEST_KEY]
    name = next(iter(saved["state_dict"]))
    nudged = {**saved, "state_dict": {**saved["state_dict"]}}
    nudged["state_dict"][name] = saved["state_dict"][name].clone()
    nudged["state_dict"][name].view(-1)[0] += 1.0
    assert checkpoint_digest(nudged) != saved[DIGEST_KEY]
    edited = {
        **saved,
        "xares_config": {**saved["xares_config"], "seed": 1 + saved["xares_config"]["seed"]},
    }
    assert checkpoint_digest(edited) != saved[DIGEST_KEY]


def test_a_corrupt_checkpoint_is_named_and_never_used(trained, make_cfg, tmp_path, caplog):
    good = trained / "checkpoints" / "last.ckpt"
    flipped = tmp_path / "flipped.ckpt"
    shutil.copy(good, flipped)
    flip_tensor_bytes(flipped)
    with pytest.raises(CheckpointError, match=f"checkpoint {flipped} is corrupt: .*checksum"):
        read_checkpoint(flipped)
    # Lightning's resume reads through the same checks.
    with pytest.raises(CheckpointError, match=f"checkpoint {flipped} is corrupt"):
        VerifiedCheckpointIO().load_checkpoint(flipped)

    # An edited config is caught too, not only damaged tensors.
    record = torch.load(good, weights_only=True)
    record["xares_config"]["trainer"]["max_steps"] = 3000
    edited = tmp_path / "edited.ckpt"
    torch.save(record, edited)
    with pytest.raises(CheckpointError, match=f"checkpoint {edited} is corrupt"):
        read_checkpoint(edited)

    # In a run directory the newest intact checkpoint is used, and the corrupt one is named.
    run = tmp_path / "run" / "checkpoints"
    run.mkdir(parents=True)
    shutil.copy(good, run / "step3.ckpt")
    shutil.copy(flipped, run / "last.ckpt")
    now = time.time()
    os.utime(run / "step3.ckpt", (now - 60, now - 60))
    with caplog.at_level(logging.WARNING, logger=checkpoint_module.__name__):
        path, checkpoint = resolve_checkpoint(str(tmp_path / "run"), None)
    assert path == str(run / "step3.ckpt") and checkpoint["global_step"] == 3
    assert f"{run / 'last.ckpt'} is corrupt" in caplog.text
    (run / "step3.ckpt").unlink()
    with pytest.raises(
        CheckpointError, match=f"(?s)none of the 1 checkpoint.*{run / 'last.ckpt'} is corrupt"
    ):
        resolve_checkpoint(str(tmp_path / "run"), None)


def test_a_checkpoint_without_a_checksum_is_used_with_a_note(trained, tmp_path, caplog):
    record = torch.load(trained / "checkpoints" / "last.ckpt", weights_only=True)
    del record[DIGEST_KEY]
    older = tmp_path / "older.ckpt"
    torch.save(record, older)
    with caplog.at_level(logging.INFO, logger=checkpoint_module.__name__):
        checkpoint = read_checkpoint(older)
    assert checkpoint["global_step"] == 3
    notes = [r for r in caplog.records if str(older) in r.getMessage()]
    assert notes and "no checksum" in notes[0].getMessage() and notes[0].levelno == logging.INFO


def temporary_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


def test_a_full_disk_is_one_error_naming_the_file_and_the_cause(tmp_path, monkeypatch):
    target = tmp_path / "checkpoints" / "last.ckpt"
    state = {"state_dict": {"w": torch.zeros(1000)}}

    def enospc(obj, file):
        file.write(b"PK\x03\x04 part of a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    def torch_style(obj, file):
        # What torch.save does when the disk fills: its writer's OSError becomes the context
        # of a RuntimeError that names neither the file nor the cause.
        try:
            file.write(b"PK\x03\x04")
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:
            raise RuntimeError(
                "[enforce fail at inline_container.cc:672] . unexpected pos 4352 vs 4288"
            ) from None

    for failing in (enospc, torch_style):
        monkeypatch.setattr(checkpoint_module.torch, "save", failing)
        with pytest.raises(CheckpointWriteError) as caught:
            VerifiedCheckpointIO().save_checkpoint(state, target)
        error = caught.value
        assert isinstance(error, OSError) and isinstance(error, CheckpointError)
        assert error.errno == errno.ENOSPC and error.filename == str(target)
        assert str(error).startswith(
            f"could not write checkpoint {target}: no space left on device"
        )
        assert "Free space" in str(error)
        assert not target.exists() and temporary_files(target.parent) == []

    # torch.save given a path loses the OSError; the free space tells a full disk apart.
    def bare(obj, file):
        file.write(b"PK\x03\x04")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

    monkeypatch.setattr(checkpoint_module.torch, "save", bare)
    monkeypatch.setattr(
        checkpoint_module.shutil, "disk_usage", lambda path: SimpleNamespace(free=512)
    )
    with pytest.raises(CheckpointWriteError, match="no space left on device .*512 bytes free"):
        VerifiedCheckpointIO().save_checkpoint(state, target)
    monkeypatch.undo()
    assert temporary_files(target.parent) == []

    # Any other cause is named as it is.
    def denied(obj, file):
        raise PermissionError(errno.EACCES, "Permission denied", str(file.name))

    monkeypatch.setattr(checkpoint_module.torch, "save", denied)
    with pytest.raises(
        CheckpointWriteError, match=f"{target}: permission denied .*Make .* writable"
    ):
        VerifiedCheckpointIO().save_checkpoint(state, target)
    assert temporary_files(target.parent) == []


def test_a_real_full_disk_is_named_and_leaves_no_temporary_file(tmp_path):
    with small_disk(tmp_path / "disk", size="3m") as disk:
        target = disk / "checkpoints" / "last.ckpt"
        with pytest.raises(CheckpointWriteError) as caught:
            VerifiedCheckpointIO().save_checkpoint(
                {"state_dict": {"w": torch.zeros(10**6)}}, target
            )
        assert caught.value.errno == errno.ENOSPC
        assert f"could not write checkpoint {target}: no space left on device" in str(caught.value)
        assert list(target.parent.iterdir()) == []
        # And a checkpoint that fits is written whole after the failure.
        VerifiedCheckpointIO().save_checkpoint({"state_dict": {"w": torch.ones(1000)}}, target)
        assert torch.equal(read_checkpoint_plain(target)["state_dict"]["w"], torch.ones(1000))


def read_checkpoint_plain(path: Path) -> dict:
    return VerifiedCheckpointIO().load_checkpoint(path)


def test_a_run_whose_final_checkpoint_does_not_fit_names_it(make_cfg, tmp_path):
    # The run directory on a disk too small for last.ckpt (2.4 MB here): the report's case.
    with small_disk(tmp_path / "disk", size="2m") as disk:
        out = disk / "run"
        with pytest.raises(CheckpointWriteError) as caught:
            train(make_cfg(*QUICK, "evaluate=false", output_dir=out))
        assert caught.value.errno == errno.ENOSPC
        assert f"could not write checkpoint {out / 'checkpoints' / 'last.ckpt'}: no space" in str(
            caught.value
        )
        assert temporary_files(out / "checkpoints") == []
        assert not (out / "checkpoints" / "last.ckpt").exists()

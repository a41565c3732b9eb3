"""Opening a checkpoint never runs code: xares writes plain data and reads with weights_only."""

from __future__ import annotations

import ast
import logging
import os
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from helpers.config import FAST, ROOT, compose_config
from lightning.pytorch.demos.boring_classes import BoringModel
from omegaconf import OmegaConf

from xares.run.evaluate import evaluate
from xares.run.train import train
from xares.training import checkpoint as checkpoint_module
from xares.training.checkpoint import (
    DIGEST_KEY,
    CheckpointWriteError,
    UnsafeCheckpointError,
    VerifiedCheckpointIO,
    checkpoint_digest,
    read_checkpoint,
    seal,
)

QUICK = [*FAST, "logger=none", "trainer.max_steps=3", "data.eval_limit=2"]


class CreatesAFile:
    """Unpickling this creates ``marker``: a stand-in for any code a file can ask to run."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_home) -> Path:
    run = tmp_path_factory.mktemp("safe") / "mel__smoke" / "first"
    train(compose_config([*QUICK, "evaluate=false"], run, data_home))
    return run


@pytest.fixture
def crafted(trained, tmp_path) -> tuple[Path, Path]:
    """A run directory whose checkpoints/last.ckpt is a real one plus code to run on opening."""
    marker = tmp_path / "code-ran"
    checkpoint = torch.load(trained / "checkpoints" / "last.ckpt", weights_only=True)
    checkpoint.pop(DIGEST_KEY, None)
    checkpoint["extra"] = CreatesAFile(marker)
    folder = tmp_path / "crafted"
    (folder / "checkpoints").mkdir(parents=True)
    torch.save(checkpoint, folder / "checkpoints" / "last.ckpt")
    return folder, marker


@pytest.fixture
def no_weights(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the model was built before the checkpoint was refused")

    monkeypatch.setattr("xares.run.pipeline.build_model", refuse)


def assert_refused(error: BaseException, path: Path) -> None:
    message = str(error)
    assert f"checkpoint {path} was refused" in message
    assert "io.open" in message  # what it would have run
    assert f"python -m xares.training.checkpoint --convert {path}" in message


def test_evaluate_refuses_a_checkpoint_that_runs_code(crafted, make_cfg, no_weights):
    folder, marker = crafted
    cfg = make_cfg(f"ckpt_path={folder}", config_name="eval", output_dir=folder.parent / "eval")
    with pytest.raises(UnsafeCheckpointError) as caught:
        evaluate(cfg)
    assert not marker.exists()
    assert_refused(caught.value, folder / "checkpoints" / "last.ckpt")


def test_resume_refuses_a_checkpoint_that_runs_code(crafted, make_cfg, no_weights):
    folder, marker = crafted
    cfg = make_cfg(*QUICK, f"ckpt_path={folder}", output_dir=folder.parent / "resumed")
    with pytest.raises(UnsafeCheckpointError) as caught:
        train(cfg)
    assert not marker.exists()
    assert_refused(caught.value, folder / "checkpoints" / "last.ckpt")


def test_a_refused_checkpoint_is_not_passed_over_for_an_older_one(crafted, trained):
    # A damaged newest file falls back to an older one; a file asking to run code is a
    # decision for its owner, so it stops the run instead.
    folder, marker = crafted
    older = folder / "checkpoints" / "step3.ckpt"
    older.write_bytes((trained / "checkpoints" / "last.ckpt").read_bytes())
    os.utime(older, (1, 1))
    with pytest.raises(UnsafeCheckpointError):
        checkpoint_module.resolve_checkpoint(str(folder), None)
    assert not marker.exists()


def test_lightnings_resume_path_opens_checkpoints_as_data(crafted, tmp_path):
    folder, marker = crafted
    path = folder / "checkpoints" / "last.ckpt"
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        plugins=[VerifiedCheckpointIO()],
    )
    # Even a caller asking for full unpickling gets a data-only load.
    with pytest.raises(UnsafeCheckpointError) as caught:
        trainer.fit(BoringModel(), ckpt_path=path, weights_only=False)
    assert not marker.exists()
    assert_refused(caught.value, path)
    with pytest.raises(UnsafeCheckpointError):
        VerifiedCheckpointIO().load_checkpoint(path, weights_only=False)
    assert not marker.exists()


def test_training_checkpoints_are_plain_data_and_resume(trained, make_cfg, tmp_path, monkeypatch):
    last = trained / "checkpoints" / "last.ckpt"
    saved = torch.load(last, weights_only=True)  # Lightning's states and xares' config, as data
    for key in ("state_dict", "loops", "callbacks", "optimizer_states", "lr_schedulers"):
        assert key in saved
    assert saved[DIGEST_KEY] == checkpoint_digest(saved)

    loads: list[tuple[str, object]] = []
    real_load = torch.load

    def recording_load(source, *args, **kwargs):
        loads.append((str(getattr(source, "name", source)), kwargs.get("weights_only")))
        return real_load(source, *args, **kwargs)

    resumed_from: list[str] = []
    real_io_load = VerifiedCheckpointIO.load_checkpoint

    def recording_io_load(self, path, *args, **kwargs):
        resumed_from.append(str(path))
        return real_io_load(self, path, *args, **kwargs)

    monkeypatch.setattr(torch, "load", recording_load)
    monkeypatch.setattr(VerifiedCheckpointIO, "load_checkpoint", recording_io_load)
    cfg = make_cfg(
        *QUICK,
        "trainer.max_steps=5",
        "evaluate=false",
        f"ckpt_path={trained}",
        output_dir=tmp_path / "resumed",
    )
    train(cfg)
    # Lightning restored the loops, optimizer and scheduler through xares' reader...
    assert resumed_from == [str(last)]
    checkpoint_loads = [(p, w) for p, w in loads if p.endswith(".ckpt")]
    assert checkpoint_loads and all(w is True for _, w in checkpoint_loads), checkpoint_loads
    assert all(w is not False for _, w in loads), loads
    monkeypatch.undo()
    # ...and the resumed run went on from step 3 to step 5.
    resumed = torch.load(tmp_path / "resumed" / "checkpoints" / "last.ckpt", weights_only=True)
    assert resumed["global_step"] == 5 and resumed[DIGEST_KEY] == checkpoint_digest(resumed)


def test_optimizer_and_scheduler_states_of_every_option_are_plain_data():
    from hydra.utils import instantiate

    parameter = torch.nn.Parameter(torch.ones(3))
    for option in ("linear_warmup", "cosine"):
        spec = OmegaConf.load(ROOT / "conf" / "scheduler" / f"{option}.yaml")
        spec.num_training_steps = 10
        spec.num_warmup_steps = 2
        optimizer = instantiate(OmegaConf.load(ROOT / "conf" / "optimizer" / "adamw.yaml"))(
            params=[parameter]
        )
        scheduler = instantiate(spec)(optimizer=optimizer)
        parameter.sum().backward()
        optimizer.step()
        scheduler.step()
        state = {
            "optimizer_states": [optimizer.state_dict()],
            "lr_schedulers": [scheduler.state_dict()],
        }
        sealed, _ = seal(state, option)  # raises on anything that would not load as data
        assert sealed[DIGEST_KEY] == checkpoint_digest(state)


def test_writing_something_that_is_not_plain_data_is_refused(tmp_path):
    target = tmp_path / "x.ckpt"
    checkpoint = {"xares_config": OmegaConf.create({"seed": 1}), "where": tmp_path}
    with pytest.raises(CheckpointWriteError) as caught:
        VerifiedCheckpointIO().save_checkpoint(checkpoint, target)
    message = str(caught.value)
    assert f"checkpoint {target} was not written" in message
    assert "['xares_config']: omegaconf.dictconfig.DictConfig" in message
    assert "['where']: pathlib.PosixPath" in message and "OmegaConf.to_container" in message
    assert not list(tmp_path.iterdir())


def test_a_trusted_checkpoint_is_converted_to_plain_data(trained, tmp_path, capsys, caplog):
    # A checkpoint another tool wrote with an OmegaConf config: harmless, but not plain data.
    checkpoint = torch.load(trained / "checkpoints" / "last.ckpt", weights_only=True)
    config = checkpoint.pop("xares_config")
    checkpoint.pop(DIGEST_KEY, None)
    checkpoint["xares_config"] = OmegaConf.create(config)
    checkpoint["dirpath"] = tmp_path
    path = tmp_path / "other.ckpt"
    torch.save(checkpoint, path)
    with pytest.raises(UnsafeCheckpointError, match="omegaconf"):
        read_checkpoint(path)

    assert checkpoint_module.main(["--convert", str(path)]) == 0
    assert f"wrote {path}" in capsys.readouterr().out
    with caplog.at_level(logging.INFO, logger=checkpoint_module.__name__):
        converted = read_checkpoint(path)
    assert "no checksum" not in caplog.text  # converting adds one
    assert converted["xares_config"] == config and converted["dirpath"] == str(tmp_path)
    assert converted["state_dict"].keys() == checkpoint["state_dict"].keys()
    for name, tensor in checkpoint["state_dict"].items():
        assert torch.equal(converted["state_dict"][name], tensor)

    # A file that is not there is an error, not a traceback.
    assert checkpoint_module.main(["--convert", str(tmp_path / "missing.ckpt")]) == 1
    assert "missing.ckpt" in capsys.readouterr().err


def test_every_torch_load_in_xares_is_data_only():
    """Every ``torch.load`` in the package passes ``weights_only=True``, but the converter,
    which exists to open a file its owner vouches for."""
    unsafe = []
    for source in sorted((ROOT / "xares").rglob("*.py")):
        tree = ast.parse(source.read_text(), str(source))
        functions = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)]
        for call in ast.walk(tree):
            if not (isinstance(call, ast.Call) and ast.unparse(call.func) == "torch.load"):
                continue
            option = {k.arg: k.value for k in call.keywords}.get("weights_only")
            if isinstance(option, ast.Constant) and option.value is True:
                continue
            inside = [f.name for f in functions if f.lineno <= call.lineno <= f.end_lineno]
            if source.name == "checkpoint.py" and inside == ["convert"]:
                continue
            unsafe.append(f"{source.relative_to(ROOT)}:{call.lineno}")
    assert not unsafe, f"torch.load without weights_only=True: {unsafe}"

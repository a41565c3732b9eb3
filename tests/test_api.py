"""The Python API: a training and an evaluation without the CLI, Hydra's state left as found."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from helpers.config import CONF, FAST
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.singleton import Singleton

from xares import api
from xares.run.directory import RunDirError

QUIET = [*FAST, "logger=none"]


def tree(root: Path) -> list[Path]:
    return sorted(p.relative_to(root) for p in root.rglob("*"))


def hydra_state() -> tuple:
    """Hydra's process-wide objects and what they hold (other tests leave theirs set)."""
    session = Singleton._instances.get(GlobalHydra)
    config = Singleton._instances.get(HydraConfig)
    return session, getattr(session, "hydra", None), config, getattr(config, "cfg", None)


def same_objects(before: tuple, after: tuple) -> bool:
    return all(a is b for a, b in zip(before, after))


def test_dict_overrides_read_back_as_the_values_given():
    values = {
        "encoder": "mel",
        "trainer.max_steps": 20,
        "optimizer.lr": 1e-5,
        "data.eval_limit": None,
        "model.pack": True,
        "run_name": "42",  # a string that would read as a number
        "+tag": "true",
        "+note": "a,b",  # would read as a sweep
        "+where": Path("/data/with=sign/it's here\\"),
        "+names": ["x y", None, "null", 3],
        "+table": {"a": 1, "b": ["c"]},
        "+pattern": "${paths.data_dir}/x",
    }
    overrides = api.to_overrides(values)
    assert overrides[:4] == [
        "encoder=mel",
        "trainer.max_steps=20",
        "optimizer.lr=1e-05",
        "data.eval_limit=null",
    ]
    parser = OverridesParser.create()
    for override, (key, value) in zip(overrides, values.items()):
        parsed = parser.parse_override(override)
        assert parsed.get_key_element() == key
        expected = os.fspath(value) if isinstance(value, Path) else value
        assert parsed.value() == expected, override
    assert api.to_overrides({"~callbacks.lr_monitor": None}) == ["~callbacks.lr_monitor"]
    assert api.to_overrides(["encoder=mel", "task=mini"]) == ["encoder=mel", "task=mini"]
    with pytest.raises(TypeError, match=r"write \['encoder=mel'\]"):
        api.to_overrides("encoder=mel")
    with pytest.raises(api.OverrideError, match="'trainer.max_steps=\\[1' is not valid"):
        api.to_overrides(["trainer.max_steps=[1"])
    with pytest.raises(api.OverrideError, match="cannot be written"):
        api.to_overrides({"x": object()})


def test_a_bad_override_is_named_with_the_valid_options(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # The caller's own Hydra session: it must be the same, still usable, afterwards.
    monkeypatch.setattr(HydraConfig.instance(), "cfg", None)  # undone after the test
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        mine = compose("train", overrides=["encoder=dummy"], return_hydra_config=True)
        HydraConfig.instance().set_config(mine)
        session, hydra_config = GlobalHydra.instance(), HydraConfig.instance()

        with pytest.raises(api.OverrideError) as error:
            api.train(["experiment=smoke", "encoder=nope"])
        message = str(error.value)
        assert "'encoder=nope'" in message
        assert "Available options in 'encoder':" in message
        assert "\tmel\n" in message and "\tdummy\n" in message

        with pytest.raises(api.OverrideError) as error:
            api.train({"experiment": "smoke", "trainer.max_stepz": 3})
        message = str(error.value)
        assert "'trainer.max_stepz=3'" in message
        assert "+trainer.max_stepz=3" in message  # Hydra's own advice
        assert "Available keys in 'trainer':" in message and "\tmax_steps" in message

        with pytest.raises(api.OverrideError, match="write '~debug'"):
            api.train({"debug": None})

        # config_dir adds the caller's own options: task=birds is found there, so the error
        # is the next override's.
        (tmp_path / "my_conf" / "task").mkdir(parents=True)
        (tmp_path / "my_conf" / "task" / "birds.yaml").write_text("name: birds\n")
        with pytest.raises(api.OverrideError, match="'task=birds'.*\n(.*\n)*\tmini"):
            api.train(["task=birds"])
        with pytest.raises(api.OverrideError, match="'nosuch=1'"):
            api.train(["task=birds", "nosuch=1"], config_dir=tmp_path / "my_conf")

        assert GlobalHydra.instance() is session and session.is_initialized()
        assert HydraConfig.instance() is hydra_config
        assert HydraConfig.get().runtime.choices.encoder == "dummy"
        assert "_target_" in compose("train", overrides=["encoder=beats"]).encoder
    assert [p.name for p in tmp_path.iterdir()] == ["my_conf"]  # nothing was written


def test_train_writes_only_its_run_dir_and_evaluate_rescores_it(tmp_path, monkeypatch, data_home):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    before = hydra_state()
    result = api.train([*QUIET, f"paths.data_dir={data_home}"])

    run = Path(result["run_dir"])
    assert run.parent == work / "outputs" / "mel__smoke"
    assert re.fullmatch(r"\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d_\d+", run.name)
    assert [t["task"] for t in result["tasks"]] == ["eval_pitch", "eval_melody"]
    assert all(0.0 <= t["score"] <= 1.0 for t in result["tasks"])
    assert 0.0 <= result["overall"] <= 1.0
    assert result["comparability"]["comparable"] is False
    scores = json.loads((run / "scores.json").read_text())
    assert scores["overall"] == pytest.approx(result["overall"])
    for name in (
        "scores.tsv",
        "predictions_eval_pitch.csv",
        "checkpoints/last.ckpt",
        "report.html",
    ):
        assert (run / name).is_file(), name
    # The classification set's diagnosis, not the transcription set's.
    assert [("diagnosis" in t) for t in scores["tasks"]] == [True, False]
    assert "trainer.max_steps=20" in (run / ".hydra" / "overrides.yaml").read_text()

    # Nothing outside the run directory: no ./None, no claim in outputs/, no ./xares_data.
    assert [p.name for p in work.iterdir()] == ["outputs"]
    assert {p.parts[:3] for p in tree(work)} - {("outputs",), ("outputs", "mel__smoke")} == {
        ("outputs", "mel__smoke", run.name)
    }
    assert not any("None" in p.parts for p in tree(work))
    assert same_objects(before, hydra_state())

    again = api.evaluate(
        run,
        {
            "data.eval_limit": 8,
            "paths.data_dir": data_home,
            "reuse_scores": False,  # score again, not the answers kept from the training run
            "trainer.enable_progress_bar": False,
        },
    )
    assert again["overall"] == pytest.approx(result["overall"])
    assert again["reused"] == []
    evaluated = Path(again["run_dir"])
    assert evaluated.parent == work / "outputs" / "eval"
    assert (evaluated / "scores.json").is_file()
    assert (evaluated / "checkpoint.txt").read_text().strip().startswith(str(run))
    assert [p.name for p in work.iterdir()] == ["outputs"]
    assert not any("None" in p.parts for p in tree(work))


@pytest.mark.slow  # a minute of training runs; `make test-full` runs it
def test_train_twice_in_one_process(tmp_path, monkeypatch, data_home):
    monkeypatch.chdir(tmp_path)
    # Under SLURM the job id names the folder: both calls would get the same one.
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID", raising=False)
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    overrides = {
        "experiment": "smoke",
        "trainer.max_steps": 5,
        "trainer.enable_progress_bar": False,
        "trainer.enable_model_summary": False,
        "data.eval_limit": 4,
        "generation.max_new_tokens": 6,
        "logger": "none",
        "paths.data_dir": data_home,
    }
    before = hydra_state()
    first = api.train(overrides)
    second = api.train({**overrides, "seed": 1})
    runs = tmp_path / "outputs" / "mel__smoke"
    assert [Path(first["run_dir"]), Path(second["run_dir"])] == [
        runs / "slurm-4242",
        runs / "slurm-4242-2",
    ]
    for result in (first, second):
        assert (Path(result["run_dir"]) / "scores.json").is_file()
        assert 0.0 <= result["overall"] <= 1.0
    assert "seed=1" in (runs / "slurm-4242-2" / ".hydra" / "overrides.yaml").read_text()

    # A named run directory that already holds this process's results is refused, as the
    # CLI refuses another run's; finishing a run from its own checkpoint there is not.
    with pytest.raises(RunDirError, match="earlier run in this process"):
        api.train(overrides, run_dir=first["run_dir"])
    more = {**overrides, "trainer.max_steps": 7, "evaluate": False, "ckpt_path": first["run_dir"]}
    assert api.train(more, run_dir=first["run_dir"]) == {"run_dir": first["run_dir"]}
    with pytest.raises(api.OverrideError, match="given twice"):
        api.train({**overrides, "hydra.run.dir": "elsewhere"}, run_dir="here")
    assert same_objects(before, hydra_state())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["outputs"]


def test_a_config_composed_by_hand_without_a_run_directory_is_refused(tmp_path, monkeypatch):
    from xares.run.plan import NoRunDirectoryError
    from xares.run.train import train as train_from_config

    monkeypatch.chdir(tmp_path)
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=["experiment=smoke", "logger=none"])
    GlobalHydra.instance().clear()
    # No HydraConfig either, whatever an earlier test left there: as in a fresh notebook.
    monkeypatch.setattr(HydraConfig.instance(), "cfg", None)
    with pytest.raises(NoRunDirectoryError, match="xares.api.train"):
        train_from_config(cfg)
    assert list(tmp_path.iterdir()) == []  # no ./outputs claim, no ./None, no ./xares_data

"""Mistakes in the run plan stop the run in seconds, before any weight is loaded."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from helpers.config import FAST, ROOT
from omegaconf import open_dict

from xares.data.shards import MissingShardError
from xares.data.task_spec import TaskConfigError, TaskSpec
from xares.run.train import train
from xares.run.validation import ConfigError, check_run


@pytest.fixture
def no_weights(monkeypatch):
    """Fail the test if the run gets as far as building the model."""

    def refuse(*args, **kwargs):
        raise AssertionError("the model was built: the mistake was not caught up front")

    monkeypatch.setattr("xares.run.pipeline.build_model", refuse)


def run_fails(make_cfg, *overrides, error=ConfigError):
    cfg = make_cfg(*FAST, "logger=none", *overrides)
    started = time.perf_counter()
    with pytest.raises(error) as caught:
        train(cfg)
    assert time.perf_counter() - started < 20
    return str(caught.value)


def test_test_set_path_matching_nothing_fails_before_training(make_cfg, no_weights, tmp_path):
    message = run_fails(
        make_cfg,
        f"task.eval.eval_melody.shards=[{tmp_path}/nowhere/*.tar]",
        error=MissingShardError,
    )
    assert f"{tmp_path}/nowhere/*.tar" in message and "match no file" in message


def test_metric_typo_fails_before_training(make_cfg, no_weights):
    message = run_fails(make_cfg, "task.eval.eval_pitch.metric=Acuracy")
    assert "eval.eval_pitch: metric Acuracy" in message and "Accuracy" in message


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        (
            "+task.train.pitch.lable_key=label",
            "unknown key `lable_key` (did you mean `label_key`?)",
        ),
        ("+task.eval.eval_pitch.promt=x", "unknown key `promt` (did you mean `prompt`?)"),
        ("+task.lenght=3", "unknown key `lenght`"),
        ("+data.bach_size=3", "data.bach_size: unknown setting (did you mean `data.batch_size`?)"),
    ],
)
def test_unknown_keys_are_refused_with_the_valid_ones(make_cfg, no_weights, override, expected):
    message = run_fails(make_cfg, override)
    assert expected in message and "valid" in message


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("data.batch_size=-1", "data.batch_size=-1: write 1 or more"),
        ("data.batch_size=0", "data.batch_size=0: write 1 or more"),
        ("trainer.max_steps=-1", "trainer.max_steps=-1: training would never end"),
        ("trainer.max_steps=0", "write train=false to evaluate without training"),
        ("task.train.pitch.prob=-1", "prob -1 must be a number >= 0"),
        ("task.eval.eval_pitch.batch_size=0", "batch_size 0 must be a whole number >= 1"),
        ("data.eval_limit=0", "data.eval_limit=0: write 1 or more"),
        ("task.eval.eval_pitch.weight=-2", "weight -2 must be a number >= 0"),
        ("seed=-1", "seed=-1: write a whole number from 0 to 4294967295"),
        ("seed=4294967296", "seed=4294967296: write a whole number from 0 to 4294967295"),
        ("seed=1.5", "seed=1.5: write a whole number"),
    ],
)
def test_bad_numbers_are_refused_with_what_to_write(make_cfg, no_weights, override, expected):
    assert expected in run_fails(make_cfg, override)


def renamed_test_set(cfg, old: str, new: str):
    with open_dict(cfg):
        cfg.task.eval[new] = cfg.task.eval.pop(old)
    return cfg


@pytest.mark.parametrize(("name", "bad"), [("eval/pitch", "'/'"), ("pitch:v2?", "':', '?'")])
def test_test_set_name_that_cannot_be_a_file_name_fails_before_training(
    make_cfg, no_weights, name, bad
):
    cfg = renamed_test_set(make_cfg(*FAST, "logger=none"), "eval_pitch", name)
    with pytest.raises(ConfigError) as caught:
        train(cfg)
    message = str(caught.value)
    assert f"task.eval.{name!r}" in message and f"cannot be in a file name: {bad}" in message
    assert f"predictions_{name}.csv" in message and "rename the set" in message


def test_test_set_names_are_not_checked_when_not_evaluating(make_cfg):
    cfg = renamed_test_set(make_cfg(*FAST, "evaluate=false"), "eval_pitch", "eval/pitch")
    assert check_run(cfg).name == "smoke"


def test_a_training_batch_beyond_memory_is_refused_before_it_is_formed(
    make_cfg, no_weights, monkeypatch
):
    monkeypatch.setattr("xares.run.validation.memory_bytes", lambda: 16 * 2**30)
    message = run_fails(make_cfg, "data.batch_size=100000")
    assert "data.batch_size=100000" in message and "16.0 GiB of memory" in message
    # 200 000 clips of 30 s at 16 kHz in float32: the sort buffer the batch is drawn from
    # (as large as the batch) and the padded batch itself.
    assert "about 357.6 GiB" in message and "200000 clips" in message
    assert "data.crop_seconds=30" in message


def test_a_batch_no_machine_can_hold_is_refused_whatever_its_memory(make_cfg, no_weights):
    assert "data.batch_size=100000000" in run_fails(make_cfg, "data.batch_size=100000000")


def test_an_eval_batch_beyond_memory_is_refused_when_the_clip_length_is_known(
    make_cfg, monkeypatch
):
    monkeypatch.setattr("xares.run.validation.memory_bytes", lambda: 16 * 2**30)
    cfg = make_cfg(*FAST, "data.eval_batch_size=200000", "data.eval_max_seconds=30")
    with pytest.raises(ConfigError, match="data.eval_batch_size=200000"):
        check_run(cfg)
    # Test clips are encoded whole: without a cut their length is unknown before reading.
    assert check_run(make_cfg(*FAST, "data.eval_batch_size=200000")).name == "smoke"


def test_protocol_batches_pass_the_memory_check_on_a_small_machine(make_cfg, monkeypatch):
    monkeypatch.setattr("xares.run.validation.memory_bytes", lambda: 4 * 2**30)
    # The protocol's batch 4 of 30 s crops, and a GPU-sized test batch of 30 s clips.
    for overrides in (
        ("data.batch_size=4", "data.crop_seconds=30"),
        ("data.eval_batch_size=64", "data.eval_max_seconds=30"),
        ("task.eval.eval_pitch.batch_size=64", "data.eval_max_seconds=30"),
    ):
        assert check_run(make_cfg(*FAST, *overrides)).name == "smoke"


def test_all_problems_are_reported_at_once(make_cfg):
    cfg = make_cfg(
        *FAST, "data.batch_size=0", "task.eval.eval_pitch.metric=Acuracy", "+task.train.pitch.x=1"
    )
    with pytest.raises(ConfigError) as caught:
        check_run(cfg)
    assert len(caught.value.problems) == 3


def test_zero_steps_is_fine_when_not_training(make_cfg):
    cfg = make_cfg(*FAST, "trainer.max_steps=0", "train=false")
    assert check_run(cfg).name == "smoke"


def test_every_shipped_task_file_follows_the_schema(make_cfg):
    for path in sorted((ROOT / "conf" / "task").glob("*.yaml")):
        cfg = make_cfg(f"task={path.stem}", "llm=tiny_random")
        spec = check_run(cfg)
        assert spec.eval and spec.train, path.stem


def test_schema_fills_defaults_in_one_place():
    spec = TaskSpec.parse(
        {"name": "t", "train": {"a": {"shards": "x.tar", "prompt": "P"}, "off": None}, "eval": {}}
    )
    assert spec.train["a"].shards == ["x.tar"] and spec.train["a"].label_key == "label"
    assert spec.train["a"].prob is None and list(spec.train) == ["a"]
    spec = TaskSpec.parse({"eval": {"e": {"shards": ["y"], "prompt": "Q", "metric_args": None}}})
    assert spec.eval_dicts()["e"]["metric_args"] == {} and spec.eval["e"].batch_size == 8
    with pytest.raises(TaskConfigError, match="`shards` must be"):
        TaskSpec.parse({"train": {"a": {"prompt": "P"}}})


def test_cli_reports_a_metric_typo_in_seconds(tmp_path, data_home):
    env = dict(os.environ, XARES_DATA_HOME=str(data_home), WANDB_MODE="offline")
    started = time.perf_counter()
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "train.py"),
            *FAST,
            "logger=none",
            "task.eval.eval_pitch.metric=Acuracy",
            f"paths.log_dir={tmp_path}",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "metric Acuracy" in result.stderr and "nothing was loaded or trained" in result.stderr
    assert time.perf_counter() - started < 60
    assert not list(tmp_path.rglob("*.ckpt"))


def test_the_data_directory_is_passed_not_set_in_the_environment(make_cfg, tmp_path, monkeypatch):
    from xares.data.task_spec import TaskSpec
    from xares.run.pipeline import prepare_task
    from xares.run.validation import check_data

    monkeypatch.setenv("XARES_DATA_HOME", str(tmp_path / "elsewhere"))
    data_dir = tmp_path / "data"
    cached = data_dir / "org/set" / "test" / "x_0.tar"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"")
    task = TaskSpec.parse(
        {
            "name": "t",
            "eval": {"e": {"shards": ["test/x_{0..0}.tar"], "repo_id": "org/set", "prompt": "P"}},
        }
    )
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    check_data(task, train=False, evaluate=True, data_dir=str(data_dir))
    prepare_task(make_cfg(*FAST, f"paths.data_dir={data_dir}"))
    assert os.environ["XARES_DATA_HOME"] == str(tmp_path / "elsewhere")


def test_the_plan_is_typed_frozen_and_built_from_the_config(make_cfg):
    import dataclasses

    from xares.models.audio_llm import GenerationSettings, LoraSettings
    from xares.run.plan import RunPlan, plan_run
    from xares.training.datamodule import DataSettings

    cfg = make_cfg(*FAST, "data.sort_buffer=7", "llm.lora.r=4")
    plan = plan_run(cfg)
    assert isinstance(plan, RunPlan) and isinstance(plan.task, TaskSpec)
    assert isinstance(plan.data, DataSettings) and plan.data.sort_buffer == 7
    assert isinstance(plan.model.lora, LoraSettings) and plan.model.lora.r == 4
    assert isinstance(plan.model.generation, GenerationSettings)
    assert plan.model.generation.max_new_tokens == 6  # FAST's override, not a default
    assert plan.model.sample_rate == plan.data.sample_rate == cfg.data.sample_rate
    out = plan.layout.output_dir
    assert plan.layout.last_checkpoint == out / "checkpoints" / "last.ckpt"
    assert plan.layout.runs_dir.name == cfg.run_name
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.seed = 1  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.data.batch_size = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        (
            "~generation.max_new_tokens",
            "generation: unknown setting(s) [], missing ['max_new_tokens']",
        ),
        ("+generation.temprature=0.5", "generation: unknown setting(s) ['temprature']"),
        ("~llm.lora.alpha", "llm.lora: unknown setting(s) [], missing ['alpha']"),
        (
            "~data.sort_buffer",
            "data.sort_buffer: missing; conf/train.yaml's `data` section sets it",
        ),
        (
            "~speed.feature_cache.memory_gb",
            "speed.feature_cache: unknown setting(s) [], missing ['memory_gb']",
        ),
    ],
)
def test_a_setting_the_config_lacks_or_misspells_is_named(make_cfg, no_weights, override, expected):
    """No value stands in for a missing one: the config is the only source."""
    assert expected in run_fails(make_cfg, override)


def test_a_run_reads_no_setting_back_from_the_config_it_saves(make_cfg, monkeypatch):
    """The config a checkpoint keeps is written, never read, during a run."""
    from collections.abc import Mapping

    from xares.run import pipeline

    class Unreadable(Mapping):
        def __getitem__(self, key):
            raise AssertionError(f"the saved config was read during the run ({key!r})")

        def __iter__(self):
            raise AssertionError("the saved config was read during the run")

        def __len__(self):
            raise AssertionError("the saved config was read during the run")

    build = pipeline.build_module

    def guarded(plan, datamodule):
        module = build(plan, datamodule)
        module.saved_config = Unreadable()
        return module

    monkeypatch.setattr("xares.run.train.build_module", guarded)
    from xares.training.module import AudioLLMModule

    written = []
    original = AudioLLMModule.on_save_checkpoint

    def save(self, checkpoint):
        original(self, checkpoint)
        # Its one use: put into the checkpoint as it is (here swapped for plain data to save).
        assert checkpoint["xares_config"] is self.saved_config
        checkpoint["xares_config"] = {}
        written.append(True)

    monkeypatch.setattr(AudioLLMModule, "on_save_checkpoint", save)
    summary = train(make_cfg(*FAST, "logger=none", "trainer.max_steps=2"))
    assert [t["task"] for t in summary["tasks"]] and written


def test_the_plans_problems_come_all_at_once_and_each_once(make_cfg, no_weights):
    message = run_fails(
        make_cfg,
        "+data.bach_size=3",
        "~generation.num_beams",
        "~llm.lora.bias",
        "task.eval.eval_pitch.metric=Acuracy",
    )
    assert "data.bach_size: unknown setting" in message
    assert "missing ['num_beams']" in message and "missing ['bias']" in message
    assert "metric Acuracy" in message
    assert message.count("bach_size") == 1

"""Loader workers beyond the cores or the training shards are capped, once and with one warning."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
from helpers.config import FAST, data_settings

from xares.run.train import train
from xares.suites.smoke import ensure_smoke_suite
from xares.training.datamodule import TaskDataModule


@pytest.fixture
def smoke_task(data_home):
    root = ensure_smoke_suite(data_home / "smoke")
    return {
        "name": "smoke",
        "train": {
            "pitch": {"shards": [f"{root}/pitch/train/*.tar"], "prompt": "Name the pitch."},
            "melody": {
                "shards": [f"{root}/melody/train/*.tar"],
                "label_key": "text",
                "prompt": "Name the notes.",
            },
        },
        "eval": {
            "eval_pitch": {
                "shards": [f"{root}/pitch/test/*.tar"],
                "prompt": "Name the pitch.",
                "metric": "Accuracy",
            }
        },
    }


def cap_warnings(caplog) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "xares.training.datamodule" and "data.num_workers=" in r.getMessage()
    ]


def test_workers_beyond_the_cores_and_shards_are_capped_with_one_warning(
    smoke_task, monkeypatch, caplog
):
    monkeypatch.setattr("xares.training.datamodule._cpu_count", lambda: 2)
    data = TaskDataModule(smoke_task, data_settings(num_workers=64, batch_size=4), seed=0)
    with caplog.at_level(logging.WARNING, logger="xares.training.datamodule"):
        loaders = [data.train_dataloader(), data.test_dataloader(), data.train_dataloader()]
    assert [loader.num_workers for loader in loaders] == [2, 2, 2]
    (warning,) = cap_warnings(caplog)
    assert "data.num_workers=64" in warning and "starts 2 worker(s)" in warning
    assert "2 CPU core(s)" in warning and "has 2 shard(s)" in warning
    assert "data.num_workers=2" in warning


def test_training_workers_stay_within_the_smallest_set_and_test_workers_within_the_cores(
    smoke_task, monkeypatch, caplog
):
    monkeypatch.setattr("xares.training.datamodule._cpu_count", lambda: 16)
    data = TaskDataModule(smoke_task, data_settings(num_workers=8, batch_size=4), seed=0)
    with caplog.at_level(logging.WARNING, logger="xares.training.datamodule"):
        assert data.train_dataloader().num_workers == 2  # every set has 2 training shards
        assert data.test_dataloader().num_workers == 8  # test sets are split clip by clip
    (warning,) = cap_warnings(caplog)
    assert "training loader starts 2 worker(s)" in warning and "CPU" not in warning


def test_ranks_share_the_shards_and_the_cores_of_a_node(smoke_task, monkeypatch):
    monkeypatch.setattr("xares.training.datamodule._cpu_count", lambda: 16)
    data = TaskDataModule(smoke_task, data_settings(num_workers=12, batch_size=4), seed=0)
    data.setup()
    data.trainer = SimpleNamespace(world_size=4, num_nodes=2)
    # 2 shards for 4 ranks: one worker each (a rank's reader cannot be fewer than one);
    # 16 cores for the 2 ranks of each node: 8 workers each for the test sets.
    assert data._workers(data.train_sources) == 1
    assert data._workers() == 8


@pytest.mark.parametrize("workers", [0, 1, 2])
def test_sane_worker_counts_are_kept_without_a_warning(smoke_task, monkeypatch, caplog, workers):
    monkeypatch.setattr("xares.training.datamodule._cpu_count", lambda: 2)
    data = TaskDataModule(smoke_task, data_settings(num_workers=workers, batch_size=4), seed=0)
    with caplog.at_level(logging.WARNING, logger="xares.training.datamodule"):
        assert data.train_dataloader().num_workers == workers
        assert data.test_dataloader().num_workers == workers
    assert cap_warnings(caplog) == []


@pytest.mark.slow  # a minute of training runs; `make test-full` runs it
def test_many_workers_score_what_a_sane_number_scores(make_cfg, tmp_path, monkeypatch):
    monkeypatch.setattr("xares.training.datamodule._cpu_count", lambda: 2)
    outputs = []
    for workers in (64, 2):
        out = tmp_path / f"w{workers}"
        cfg = make_cfg(
            *FAST,
            "trainer=deterministic",
            "trainer.max_steps=8",
            "logger=none",
            f"data.num_workers={workers}",
            output_dir=out,
        )
        summary = train(cfg)
        outputs.append(
            (
                summary["overall"],
                (out / "scores.tsv").read_text(),
                (out / "predictions_eval_melody.csv").read_text(),
            )
        )
    assert outputs[0] == outputs[1]

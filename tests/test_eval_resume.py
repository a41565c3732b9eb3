"""An interrupted evaluation resumes: finished test sets are kept and reused, nothing stale."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import pytest
from helpers.config import FAST, compose_config

from xares.models.audio_llm import AudioLLM
from xares.run.evaluate import evaluate
from xares.run.train import train
from xares.training.module import AudioLLMModule
from xares.training.scored_sets import FOLDER, ScoredSets

SETS = ["eval_pitch", "eval_melody"]


class Killed(RuntimeError):
    """Stands for a kill in the middle of the evaluation."""


@pytest.fixture(scope="module")
def trained_once(tmp_path_factory, data_home):
    run = tmp_path_factory.mktemp("resume") / "run"
    train(compose_config([*FAST, "logger=none", "evaluate=false"], run, data_home))
    return run


@pytest.fixture
def trained(trained_once):
    """The trained run, with no answers kept from another test."""
    shutil.rmtree(trained_once / FOLDER, ignore_errors=True)
    return trained_once


@pytest.fixture
def generated(monkeypatch):
    """The test sets the model generated answers for, clip by clip."""
    seen: Counter = Counter()
    original = AudioLLM.batch_answers

    def counting(self, batch):
        seen.update(batch["tasks"])
        return original(self, batch)

    monkeypatch.setattr(AudioLLM, "batch_answers", counting)
    return seen


def rescore(make_cfg, run: Path, out: Path, *overrides: str) -> dict:
    cfg = make_cfg(
        f"ckpt_path={run}", "logger=none", *overrides, config_name="eval", output_dir=out
    )
    return evaluate(cfg)


def scores_tsv(out: Path) -> str:
    return (out / "scores.tsv").read_text()


def test_a_killed_evaluation_resumes_with_only_the_unfinished_sets(
    make_cfg, trained, tmp_path, generated, monkeypatch
):
    # The reference result: every set generated, nothing reused.
    whole = rescore(make_cfg, trained, tmp_path / "whole", "reuse_scores=false")
    assert whole["reused"] == [] and set(generated) == set(SETS)
    shutil.rmtree(trained / FOLDER)
    generated.clear()

    # Killed as the second set starts: the first set's answers are already on disk.
    original = AudioLLMModule.test_step

    def dies_on_the_second_set(self, batch, *args):
        if SETS[1] in batch["tasks"]:
            raise Killed("killed")
        return original(self, batch, *args)

    monkeypatch.setattr(AudioLLMModule, "test_step", dies_on_the_second_set)
    with pytest.raises(Killed):
        rescore(make_cfg, trained, tmp_path / "killed", "reuse_scores=false")
    monkeypatch.setattr(AudioLLMModule, "test_step", original)
    kept = sorted(p.name.split("-")[0] for p in (trained / FOLDER).glob("*/*.json"))
    assert kept == [SETS[0]]
    assert not list((trained / FOLDER).glob("*/.*.tmp"))
    generated.clear()

    # The rerun generates the second set only, and its table is the uninterrupted one.
    resumed = rescore(make_cfg, trained, tmp_path / "resumed")
    assert resumed["reused"] == [SETS[0]]
    assert set(generated) == {SETS[1]}
    assert scores_tsv(tmp_path / "resumed") == scores_tsv(tmp_path / "whole")
    assert [t["score"] for t in resumed["tasks"]] == [t["score"] for t in whole["tasks"]]
    for name in SETS:
        assert (tmp_path / "resumed" / f"predictions_{name}.csv").read_text() == (
            tmp_path / "whole" / f"predictions_{name}.csv"
        ).read_text()
    written = json.loads((tmp_path / "resumed" / "scores.json").read_text())
    assert written["reused"] == [SETS[0]]


def test_a_setting_that_changes_answers_reuses_nothing(make_cfg, trained, tmp_path, generated):
    rescore(make_cfg, trained, tmp_path / "first")
    generated.clear()
    again = rescore(make_cfg, trained, tmp_path / "again")
    assert again["reused"] == SETS and not generated  # same weights and settings: all kept
    for change in ("generation.max_new_tokens=3", "data.eval_limit=4"):
        other = rescore(make_cfg, trained, tmp_path / change.split("=")[0], change)
        assert other["reused"] == [], change
        assert set(generated) == set(SETS), change
        generated.clear()
    # The test batch size does not change an answer: the kept ones still serve.
    bigger = rescore(make_cfg, trained, tmp_path / "batch", "data.eval_batch_size=3")
    assert bigger["reused"] == SETS


def test_several_readers_each_mark_the_end_of_a_set(make_cfg, trained, tmp_path, generated):
    """With loader workers, a set is complete once every worker has passed its end."""
    summary = rescore(make_cfg, trained, tmp_path / "workers", "+data.num_workers=2",
                      "reuse_scores=false")  # fmt: skip
    assert [t["clips"] for t in summary["tasks"]] == [16, 16]
    parts = list((trained / FOLDER).glob("*/*.json"))
    rows = {
        json.loads(p.read_text())["task"]: len(json.loads(p.read_text())["rows"]) for p in parts
    }
    assert rows == {name: 16 for name in SETS}


def test_a_set_is_reused_only_when_every_process_wrote_its_part(tmp_path):
    specs = {
        name: {"shards": [f"{name}.tar"], "prompt": "p", "metric": "Accuracy"} for name in SETS
    }
    rank0 = ScoredSets(tmp_path, "k", specs, rank=0, world_size=2)
    rank1 = ScoredSets(tmp_path, "k", specs, rank=1, world_size=2)
    rank0.save(SETS[0], {"rows": [{"key": "a"}], "dropped": {}})
    assert rank0.load(SETS[0]) is None  # rank 1's slice is missing
    rank1.save(SETS[0], {"rows": [{"key": "b"}], "dropped": {"bad audio": 1}})
    assert [p["rows"] for p in rank1.load(SETS[0])] == [[{"key": "a"}], [{"key": "b"}]]
    # Another world size, another prompt, or a broken file: not reused.
    assert ScoredSets(tmp_path, "k", specs, world_size=1).load(SETS[0]) is None
    edited = {**specs, SETS[0]: {**specs[SETS[0]], "prompt": "other"}}
    assert ScoredSets(tmp_path, "k", edited, world_size=2).load(SETS[0]) is None
    next((tmp_path / FOLDER / "k").glob("eval_pitch*.1-of-2.json")).write_text('{"rows": [')
    assert rank0.load(SETS[0]) is None


def test_a_set_name_with_a_slash_is_kept_under_a_safe_file_name(tmp_path):
    specs = {"eval/odd": {"shards": ["x.tar"]}}
    sets = ScoredSets(tmp_path, "k", specs)
    sets.save("eval/odd", {"rows": [], "dropped": {}})
    assert sets.load("eval/odd")[0]["task"] == "eval/odd"
    assert [p.parent.name for p in (tmp_path / FOLDER).rglob("*.json")] == ["k"]

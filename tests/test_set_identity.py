"""A test set's identity does not depend on where the data cache lives."""

from __future__ import annotations

from helpers.config import data_settings

from xares.data.task_spec import test_set_id as set_id
from xares.training.datamodule import TaskDataModule

SET = {
    "shards": ["xares_data/mini/keywords/test/*.tar"],
    "label_key": "label",
    "label_join": ", ",
    "prompt": "Which keyword is spoken?",
    "metric": "Accuracy",
    "metric_args": {},
}


def task(shards: str) -> dict:
    return {
        "name": "mini",
        "train": {},
        "eval": {"eval_keywords": {**SET, "shards": [shards], "batch_size": 4}},
    }


def test_the_same_cache_read_from_two_places_is_the_same_set(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    relative = task("xares_data/mini/keywords/test/*.tar")
    absolute = task(f"{tmp_path}/xares_data/mini/keywords/test/*.tar")
    moved = task("/elsewhere/cache/mini/keywords/test/*.tar")
    ids = [
        TaskDataModule(spec, data_settings(), seed=0, data_dir=home, download=False).eval_specs[
            "eval_keywords"
        ]["set_id"]
        for spec, home in (
            (relative, "xares_data"),
            (absolute, str(tmp_path / "xares_data")),
            (moved, "/elsewhere/cache"),
        )
    ]
    assert len(set(ids)) == 1


def test_other_clips_or_other_questions_are_another_set(tmp_path):
    home = str(tmp_path / "cache")
    same = set_id({**SET, "shards": [f"{home}/mini/keywords/test/*.tar"]}, home)
    assert set_id({**SET, "shards": [f"{home}/mini/voice/test/*.tar"]}, home) != same
    assert (
        set_id({**SET, "shards": [f"{home}/mini/keywords/test/*.tar"], "prompt": "?"}, home) != same
    )
    # Outside the cache a path is the set's name as written: another folder, another set.
    outside = set_id({**SET, "shards": ["/data/a/*.tar"]}, home)
    assert outside != set_id({**SET, "shards": ["/data/b/*.tar"]}, home)
    # Hub-relative shards (the challenge's) are named as written, with or without a cache.
    hub = {**SET, "shards": ["ESC-50/test/esc50_fold_5_*.tar.gz"]}
    assert set_id(hub, home) == set_id(hub)

"""scores.json says what the run was; W&B receives the final table and summary metrics."""

from __future__ import annotations

import json
import re
import sys
from datetime import datetime

from helpers.config import FAST, ROOT
from helpers.encoders import TINY_CONV_ENCODER

import xares.run.train
from xares.results.leaderboard import build
from xares.results.scores import collect
from xares.run import metadata as run_info
from xares.run.evaluate import evaluate
from xares.run.train import train


def test_a_custom_run_records_what_it_was_and_logs_its_table_to_wandb(
    make_cfg, tmp_path, monkeypatch
):
    path = tmp_path / "tiny_encoder.py"
    path.write_text(TINY_CONV_ENCODER)
    monkeypatch.setenv("WANDB_MODE", "offline")
    seen = {}
    finish = xares.run.train.finish_wandb

    def snapshot_then_finish():
        # What the W&B run holds just before it is closed (offline mode keeps no summary file).
        run = sys.modules["wandb"].run
        if run is not None:
            seen.update(summary=dict(run.summary), tags=set(run.tags), group=run.group)
        finish()

    monkeypatch.setattr(xares.run.train, "finish_wandb", snapshot_then_finish)
    cfg = make_cfg(
        *FAST,
        "encoder=custom",
        f"encoder.path={path}",
        "trainer.max_steps=3",
        "logger=wandb",
        "seed=7",
    )
    summary = train(cfg)

    run_dir = tmp_path / "run"
    info = json.loads((run_dir / "scores.json").read_text())["run"]
    assert info == summary["run"]
    # The file it loaded and the class it is, not `custom`.
    assert info["encoder"] == str(path) and info["encoder_config"] == "custom"
    assert info["encoder_class"].endswith(".TinyConvEncoder")
    assert (info["task"], info["llm"], info["projector"], info["seed"]) == (
        "smoke",
        "tiny_random",
        "linear",
        7,
    )
    assert info["kind"] == "train" and info["checkpoint"] is None
    assert len(info["config_hash"]) == 12 and len(info["model_hash"]) == 12
    started, ended = (datetime.fromisoformat(info[k]) for k in ("started", "ended"))
    assert started.utcoffset().total_seconds() == 0 and started <= ended
    assert info["hostname"] and info["xares_version"] == "0.1.0"
    assert set(info["git"]) == {"commit", "dirty"} and len(info["git"]["commit"]) == 40

    # W&B: the table under files/media/table, summary metrics, grouped by task, tagged by encoder.
    offline = next((run_dir / "wandb").glob("offline-run-*"))
    (table_file,) = (offline / "files" / "media" / "table").glob("scores_*.table.json")
    table = json.loads(table_file.read_text())
    assert table["columns"][:3] == ["task", "metric", "score"]
    assert [row[0] for row in table["data"]] == ["eval_pitch", "eval_melody"]
    assert [row[2] for row in table["data"]] == [t["score"] for t in summary["tasks"]]
    assert seen["summary"]["overall"] == summary["overall"]
    assert "test/eval_pitch/Accuracy" in seen["summary"]
    tag = str(path) if len(str(path)) <= 64 else path.name  # W&B's limit on a tag's length
    assert seen["group"] == "smoke" and tag in seen["tags"]
    # The transaction log that `wandb sync` uploads; complete once W&B's service has stopped.
    sys.modules["wandb"].teardown()
    log = next(offline.glob("run-*.wandb")).read_bytes()
    assert b"overall" in log and b"scores" in log and b"xares_run" in log

    # Re-scored from its checkpoint, the run is still the custom encoder on smoke.
    evaluate(
        make_cfg(
            f"ckpt_path={run_dir}",
            "data.eval_limit=4",
            config_name="eval",
            output_dir=tmp_path / "eval",
        )
    )
    again = json.loads((tmp_path / "eval" / "scores.json").read_text())["run"]
    assert (again["encoder"], again["task"], again["llm"]) == (str(path), "smoke", "tiny_random")
    # The model it scored is seed 7's (eval.yaml's own seed, 42, only drives generation), so
    # the leaderboard takes it for that seed's result, not for another seed.
    assert (again["kind"], again["seed"]) == ("evaluate", 7)
    assert again["checkpoint"] == str((run_dir / "checkpoints" / "last.ckpt").resolve())
    # The leaderboard reads the file path from scores.json, never the folder names.
    rows = build(collect([run_dir])).rows
    assert [r.label for r in rows] == [str(path)]
    # Scored on fewer clips than in training, it is another evaluation of that model...
    assert again["config_hash"] != info["config_hash"]
    assert again["model_hash"] == info["model_hash"]
    # ...scored as in training (this command's trainer is only how it ran), the same one: the
    # leaderboard keeps one result for seed 7, not two.
    evaluate(
        make_cfg(
            f"ckpt_path={run_dir}",
            "data.eval_limit=8",
            "generation.max_new_tokens=6",
            config_name="eval",
            output_dir=tmp_path / "same",
        )
    )
    same = json.loads((tmp_path / "same" / "scores.json").read_text())["run"]
    assert same["config_hash"] == info["config_hash"]
    (row,) = build(collect([run_dir, tmp_path / "same"])).rows
    assert row.seeds == 1


def test_config_hash_ignores_seed_and_locations_but_not_settings(make_cfg, tmp_path):
    base = run_info.config_hash(make_cfg(*FAST))
    elsewhere = make_cfg(*FAST, "seed=7", output_dir=tmp_path / "other" / "run")
    assert run_info.config_hash(elsewhere) == base
    assert run_info.config_hash(make_cfg(*FAST, "optimizer.lr=0.5")) != base
    assert run_info.config_hash(make_cfg(*FAST, "encoder=dummy")) != base


def test_git_state_is_absent_outside_a_checkout(tmp_path):
    assert run_info.git_state(tmp_path) is None
    state = run_info.git_state()
    assert state is not None and isinstance(state["dirty"], bool)


def test_the_docs_describe_the_run_block_as_it_is():
    page = (ROOT / "docs" / "leaderboard.md").read_text()
    rows = {
        line.split("|")[1].strip(): line
        for line in page.splitlines()
        if line.startswith("| `") and line.count("|") == 3
    }
    hashed = rows["`config_hash`"]
    listed = hashed[hashed.index("without") : hashed.index("trainer's display switches")]
    assert sorted(re.findall(r"`(\w+)`", listed)) == sorted(run_info.UNHASHED)
    assert "`kind`, `checkpoint`" in rows

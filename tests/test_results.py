"""Results are never lost or silently wrong: empty test sets, unwritable score files, shared
run directories."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import subprocess
import sys
import tarfile

import pytest
from helpers.config import FAST, ROOT

from xares.run.directory import CLAIM, RunDirError
from xares.run.pipeline import IncompleteEvaluationError, ReportWriteError
from xares.run.train import train

# Score the untrained model: these tests are about what happens to results, not their value.
UNTRAINED = [
    *FAST,
    "logger=none",
    "train=false",
    "data.eval_limit=4",
    "generation.max_new_tokens=2",
]


def corrupt_shard(path, count=5) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for i in range(count):
            for name, data in (
                (f"k{i}.flac", b"\x00garbage" * 40),
                (f"k{i}.json", b'{"text": "a"}'),
            ):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return str(path)


def read_tsv(path):
    with open(path) as f:
        return {r["task"]: r for r in csv.DictReader(f, delimiter="\t")}


def test_all_corrupt_test_set_fails_the_run_and_keeps_the_counts(make_cfg, tmp_path):
    shard = corrupt_shard(tmp_path / "bad" / "melody.tar")
    cfg = make_cfg(*UNTRAINED, f"task.eval.eval_melody.shards=[{shard}]")
    with pytest.raises(IncompleteEvaluationError, match="eval_melody: no scorable samples"):
        train(cfg)
    run = tmp_path / "run"
    rows = read_tsv(run / "scores.tsv")
    assert rows["eval_melody"]["clips"] == "0" and rows["eval_melody"]["dropped"] == "4 bad audio"
    assert rows["eval_pitch"]["clips"] == "4" and rows["eval_pitch"]["dropped"] == ""
    # The overall is the mean of one set, and says so.
    assert rows["overall"]["metric"] == "weighted_mean_partial"
    assert float(rows["overall"]["weight"]) == 1.0
    assert rows["overall"]["score"] == rows["eval_pitch"]["score"]
    scores = json.loads((run / "scores.json").read_text())
    assert scores["partial"] is True and scores["unscored"] == ["eval_melody"]
    melody = scores["tasks"][1]
    assert melody["clips"] == 0 and melody["dropped"] == {"bad audio": 4}


def test_allow_partial_marks_the_overall_instead(make_cfg, tmp_path, capsys):
    shard = corrupt_shard(tmp_path / "bad" / "melody.tar")
    # Through a loader worker too: the counts must cross the process boundary.
    cfg = make_cfg(
        *UNTRAINED,
        f"task.eval.eval_melody.shards=[{shard}]",
        "allow_partial=true",
        "data.num_workers=1",
    )
    summary = train(cfg)
    assert summary["partial"] and summary["overall_weight"] == 1.0
    assert summary["tasks"][1]["dropped"] == {"bad audio": 4}
    assert "overall (PARTIAL: without eval_melody)" in capsys.readouterr().out


def test_unwritable_score_files_still_print_the_table(make_cfg, tmp_path, capsys):
    run = tmp_path / "run"
    (run / "scores.tsv").mkdir(parents=True)  # a directory where the file must go
    with pytest.raises(ReportWriteError, match=f"could not be written to {run}"):
        train(make_cfg(*UNTRAINED))
    out = capsys.readouterr().out
    assert "eval_pitch" in out and "overall (weighted)" in out


def test_a_tracker_failure_is_logged_and_the_run_keeps_its_result(
    make_cfg, tmp_path, monkeypatch, caplog
):
    def refuse(loggers, summary):
        raise RuntimeError("tracker service unavailable")

    monkeypatch.setattr("xares.run.pipeline.log_final_scores", refuse)
    summary = train(make_cfg(*UNTRAINED))
    assert math.isfinite(summary["overall"])  # summarise gives NaN, never None, when unscored
    assert json.loads((tmp_path / "run" / "scores.json").read_text())["overall"] is not None
    assert "could not be logged to the experiment tracker (RuntimeError: tracker service" in (
        caplog.text
    )
    # The write error stays the run's error, not the tracker's.
    (tmp_path / "run2" / "scores.tsv").mkdir(parents=True)
    with pytest.raises(ReportWriteError):
        train(make_cfg(*UNTRAINED, output_dir=tmp_path / "run2"))


def test_a_run_page_failure_is_logged_and_the_run_keeps_its_result(
    make_cfg, tmp_path, monkeypatch, caplog
):
    # report.html is a view of the score files: a sweep must not stop because one page could
    # not be drawn after its scores were written.
    def fail(run_dir):
        raise ValueError("no picture")

    monkeypatch.setattr("xares.run.pipeline.write_run_page", fail)
    summary = train(make_cfg(*UNTRAINED))
    run = tmp_path / "run"
    assert math.isfinite(summary["overall"])
    assert json.loads((run / "scores.json").read_text())["overall"] == summary["overall"]
    assert not (run / "report.html").exists()
    assert "report.html could not be written (ValueError: no picture)" in caplog.text
    assert f"python -m xares.report --run-pages {run}" in caplog.text


def test_a_run_refuses_a_directory_holding_another_runs_results(make_cfg, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / CLAIM).write_text(json.dumps({"host": "elsewhere", "pid": 1, "started": "earlier"}))
    (run / "scores.tsv").write_text("theirs\n")
    with pytest.raises(RunDirError, match="belongs to another run .*host elsewhere"):
        train(make_cfg(*UNTRAINED))
    assert (run / "scores.tsv").read_text() == "theirs\n"


def test_two_runs_started_together_keep_both_results(tmp_path, data_home):
    env = dict(os.environ, XARES_DATA_HOME=str(data_home), WANDB_MODE="offline")
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "train.py"),
                *UNTRAINED,
                f"seed={seed}",
                f"paths.log_dir={tmp_path}",
            ],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for seed in (1, 2)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
    runs = sorted((tmp_path / "mel__smoke").iterdir())
    assert len(runs) == 2
    seeds = set()
    for run in runs:
        assert (run / "scores.tsv").is_file()
        overrides = (run / ".hydra" / "overrides.yaml").read_text()
        seeds |= {s for s in ("seed=1", "seed=2") if s in overrides}
    assert seeds == {"seed=1", "seed=2"}


def test_a_requeued_slurm_job_continues_in_its_own_directory(tmp_path, monkeypatch):
    from xares.run.directory import claim_run_dir

    monkeypatch.delenv("SLURM_ARRAY_JOB_ID", raising=False)
    monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    run = tmp_path / "slurm-4242"
    run.mkdir()
    (run / CLAIM).write_text(json.dumps({"host": "node7", "pid": 1, "slurm_job": "4242"}))
    (run / "hpc_ckpt_1.ckpt").write_bytes(b"")
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "last.ckpt").write_bytes(b"")
    # A second run inside the same job (no restart between them) would overwrite the first.
    with pytest.raises(RunDirError, match="run them as a sweep"):
        claim_run_dir(run)
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    claim_run_dir(run)  # the same job after a requeue: its own results, no refusal
    assert json.loads((run / CLAIM).read_text())["pid"] == os.getpid()
    # Another job given the same folder (an explicit hydra.run.dir) is refused.
    (run / CLAIM).write_text(json.dumps({"host": "node7", "pid": 1, "slurm_job": "4242"}))
    monkeypatch.setenv("SLURM_JOB_ID", "5000")
    with pytest.raises(RunDirError, match="checkpoints/last.ckpt"):
        claim_run_dir(run)


def fill(disk):
    """Write until the file system is full."""
    try:
        with open(disk / "filler", "wb") as handle:
            while True:
                handle.write(b"\0" * 65536)
                handle.flush()
    except OSError:
        pass


def test_a_full_disk_leaves_no_half_written_score_file(make_cfg, tmp_path, capsys, monkeypatch):
    from helpers.small_disk import small_disk

    from xares.results import scores

    run = tmp_path / "run"
    with small_disk(run, "1m"):
        original = scores.write_reports

        def full_then_write(*args, **kwargs):
            fill(run)
            return original(*args, **kwargs)

        monkeypatch.setattr(scores, "write_reports", full_then_write)
        with pytest.raises(ReportWriteError, match="could not write .*scores.tsv: No space left"):
            train(make_cfg(*UNTRAINED))
        left = sorted(p.name for p in run.rglob("*") if p.is_file())
    # No 0-byte or cut scores file, no temporary file.
    assert not [n for n in left if n.startswith(("scores", "predictions")) or "tmp" in n], left
    out = capsys.readouterr().out
    assert "eval_pitch" in out and "overall (weighted)" in out  # the result was printed


def test_a_failed_final_checkpoint_still_evaluates_then_fails(
    make_cfg, tmp_path, capsys, monkeypatch
):
    import errno

    from xares.training.checkpoint import VerifiedCheckpointIO

    original = VerifiedCheckpointIO.save_checkpoint

    def no_space_for_last(self, checkpoint, path, *args, **kwargs):
        if os.path.basename(path) == "last.ckpt":
            raise OSError(errno.ENOSPC, f"could not write {path}: No space left on device")
        return original(self, checkpoint, path, *args, **kwargs)

    monkeypatch.setattr(VerifiedCheckpointIO, "save_checkpoint", no_space_for_last)
    with pytest.raises(OSError, match="last.ckpt: No space left on device"):
        train(make_cfg(*FAST, "logger=none", "trainer.max_steps=4"))
    run = tmp_path / "run"
    assert "overall (weighted)" in capsys.readouterr().out
    assert read_tsv(run / "scores.tsv")["overall"]["score"] != "n/a"
    assert not (run / "checkpoints" / "last.ckpt").exists()


def test_an_interrupted_run_is_finished_in_its_own_directory(make_cfg, tmp_path):
    import socket

    run = tmp_path / "run"
    first = train(make_cfg(*FAST, "logger=none", "trainer.max_steps=4"))
    # As if the process that made it had been killed: its claim names a pid that is gone.
    claim = json.loads((run / CLAIM).read_text())
    (run / CLAIM).write_text(json.dumps({**claim, "host": socket.gethostname(), "pid": 2**22 + 7}))
    again = train(make_cfg(*FAST, "logger=none", "trainer.max_steps=4", f"ckpt_path={run}"))
    assert again["overall"] == first["overall"]
    # Its evaluation had finished: the kept answers serve, nothing is generated twice.
    assert again["reused"] == ["eval_pitch", "eval_melody"]
    # Another folder's checkpoint does not open this one to a foreign run.
    other = tmp_path / "other"
    other.mkdir()
    (other / CLAIM).write_text(json.dumps({"host": "elsewhere", "pid": 1}))
    (other / "scores.tsv").write_text("theirs\n")
    with pytest.raises(RunDirError, match="belongs to another run"):
        train(make_cfg(*UNTRAINED, f"ckpt_path={run}", output_dir=other))


def test_a_run_with_nothing_scored_returns_no_overall_to_a_sweeper():
    from xares.results.scores import overall_score, summarise

    nothing = summarise([{"task": "eval_a", "metric": "Accuracy", "score": float("nan"),
                          "weight": 1.0, "clips": 0, "dropped": {}, "note": "no scorable"}])  # fmt: skip
    assert math.isnan(nothing["overall"])  # the summary keeps NaN (written as null) ...
    assert overall_score(nothing) is None  # ... the command returns no number
    assert overall_score({}) is None and overall_score(None) is None
    assert overall_score({"overall": 0.25}) == 0.25


def test_every_skipped_clip_is_listed_by_key_and_reason(make_cfg, tmp_path, data_home, capsys):
    bad_test = corrupt_shard(tmp_path / "bad" / "melody.tar", count=5)
    bad_train = corrupt_shard(tmp_path / "bad" / "train.tar", count=3)
    cfg = make_cfg(
        *FAST,
        "logger=none",
        "trainer.max_steps=4",
        f"task.eval.eval_melody.shards=[{bad_test}]",
        # Broken clips among good ones: a training set with nothing usable is an error.
        f"task.train.melody.shards=['{data_home}/smoke/melody/train/*.tar','{bad_train}']",
        "allow_partial=true",
        "data.num_workers=1",  # the list crosses the loader's process boundary
    )
    train(cfg)
    with open(tmp_path / "run" / "skipped.tsv") as f:
        listed = list(csv.DictReader(f, delimiter="\t"))
    test = [r for r in listed if r["phase"] == "test"]
    assert sorted(r["key"] for r in test) == [f"k{i}" for i in range(5)]
    assert all(r["set"] == "eval_melody" and r["reason"] == "bad audio" for r in test)
    assert all(r["shard"].endswith("melody.tar") and r["detail"] for r in test)
    # Training reads its sets again and again: each skipped clip is listed once.
    trained = [r for r in listed if r["phase"] == "train"]
    assert sorted(r["key"] for r in trained) == ["k0", "k1", "k2"]
    assert {r["set"] for r in trained} == {"melody"}
    assert "each listed in skipped.tsv" in capsys.readouterr().out

"""Sweeps through submitit (local processes, SLURM) and DDP, each as a real `train.py` process.

SLURM is a stand-in (`tests/fake_slurm/`): `sbatch` records the job script and runs it here
with the environment a real (array) task has, `srun` starts one process per task, and
`sacct` reports the states, so submitit and Lightning take their SLURM code paths unchanged.
"""

from __future__ import annotations

import csv
import json
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers.config import CONF, FAST, ROOT
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from xares.run.directory import register_resolvers

FAKE_SLURM = Path(__file__).resolve().parent / "fake_slurm"


def run_train(args: list[str], cwd: Path, data_home: Path, steps: int = 3, **env: str):
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env = dict(clean, XARES_DATA_HOME=str(data_home), WANDB_MODE="offline", **env)
    quick = [*FAST, "logger=none", f"trainer.max_steps={steps}", f"paths.log_dir={cwd}"]
    command = [sys.executable, str(ROOT / "train.py"), *args, *quick]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def run_ok(args: list[str], cwd: Path, data_home: Path):
    result = run_train(args, cwd, data_home)
    succeeded(result)
    return result


def slurm_sweep(tmp_path: Path, data_home: Path, *args: str, steps: int = 3):
    """``train.py -m hydra/launcher=slurm ...`` against the stand-in scheduler.

    Returns the finished process, the sweep folder and the one job script it submitted.
    """
    state = tmp_path / "slurm"
    state.mkdir()
    sweep = tmp_path / "sweep"
    result = run_train(
        ["-m", "hydra/launcher=slurm", *args, f"hydra.sweep.dir={sweep}"],
        tmp_path,
        data_home,
        steps=steps,
        PATH=f"{FAKE_SLURM}{os.pathsep}{os.environ['PATH']}",
        FAKE_SLURM_DIR=str(state),
    )
    scripts = list(state.glob("*.sh"))
    assert len(scripts) == 1, result.stderr[-4000:]  # one submission for the whole sweep
    return result, sweep, scripts[0]


def succeeded(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]


def prediction_rows(run: Path, task: str) -> list[dict[str, str]]:
    with open(run / f"predictions_{task}.csv") as f:
        return list(csv.DictReader(f))


def sbatch_options(script: str) -> dict[str, str]:
    return dict(re.findall(r"^#SBATCH --([\w-]+)=(\S+)$", script, re.M))


def job_result(pickle_path: Path):
    state, value = pickle.loads(pickle_path.read_bytes())
    assert state == "success", value
    return value


def launcher_config(*overrides: str):
    register_resolvers()  # the run-directory pattern's `${xares.run_id:}`
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=list(overrides), return_hydra_config=True).hydra


def test_launcher_configs_compose_with_submitit(tmp_path):
    hydra = launcher_config("hydra/launcher=slurm", "trainer=ddp", "trainer.num_nodes=2")
    launcher = hydra.launcher
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert (launcher.gpus_per_node, launcher.tasks_per_node, launcher.nodes) == (1, 1, 2)
    assert launcher.submitit_folder == f"{hydra.sweep.dir}/.submitit/%j"
    local = launcher_config("hydra/launcher=local", "hydra.launcher.timeout_min=5").launcher
    assert local._target_.endswith("submitit_launcher.LocalLauncher")
    assert local.timeout_min == 5


def test_ddp_on_two_cpu_processes_gathers_one_table(tmp_path, data_home):
    run_ok(
        [
            "trainer=ddp",
            "trainer.accelerator=cpu",
            "trainer.devices=2",
            "trainer.precision=32-true",
            f"hydra.run.dir={tmp_path}/run",
        ],
        tmp_path,
        data_home,
    )
    run = tmp_path / "run"
    assert [p.parent for p in tmp_path.rglob("scores.json")] == [run]
    scores = json.loads((run / "scores.json").read_text())
    assert scores["efficiency"]["world_size"] == 2
    for task in ("eval_pitch", "eval_melody"):
        # Each rank scores every other clip of the first 8: the table holds both halves.
        keys = [r["key"] for r in prediction_rows(run, task)]
        assert len(keys) == len(set(keys)) == 8
        assert next(t for t in scores["tasks"] if t["task"] == task)["clips"] == 8
    assert (run / "train_ddp_process_1.log").is_file()  # the second rank ran


def test_local_launcher_runs_a_two_encoder_sweep(tmp_path, data_home):
    sweep = tmp_path / "sweep"
    run_ok(
        ["-m", "hydra/launcher=local", "encoder=mel,dummy", f"hydra.sweep.dir={sweep}"],
        tmp_path,
        data_home,
    )
    runs = sorted(p.name for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert runs == ["0_mel__smoke", "1_dummy__smoke"]
    jobs = [p for p in (sweep / ".submitit").iterdir() if p.name.isdigit()]
    assert len(jobs) == 2
    overalls = set()
    for job in jobs:
        assert "overall score" in (job / f"{job.name}_0_log.out").read_text()
        assert (job / f"{job.name}_0_log.err").is_file()
        overalls.add(job_result(job / f"{job.name}_0_result.pkl").return_value)
    expected = {json.loads((sweep / r / "scores.json").read_text())["overall"] for r in runs}
    assert overalls == expected


@pytest.mark.slow  # over a minute of subprocesses; `make test-full` runs it
def test_slurm_launcher_submits_one_array_and_collects_every_run(tmp_path, data_home):
    result, sweep, script = slurm_sweep(
        tmp_path,
        data_home,
        "hydra.launcher.timeout_min=7",
        "hydra.launcher.partition=debug",
        "encoder=mel,dummy",
    )
    succeeded(result)
    job = script.stem
    options = sbatch_options(script.read_text())
    # The command line's overrides, then conf/hydra/launcher/slurm.yaml's defaults.
    assert options["time"] == "7" and options["partition"] == "debug"
    assert options["array"] == "0-1%2"
    assert options["gpus-per-node"] == "1" and options["cpus-per-task"] == "8"
    assert options["mem"] == "64GB" and options["nodes"] == "1"
    assert options["ntasks-per-node"] == "1"
    assert options["output"].startswith(f"{sweep}/.submitit/")
    assert "\nsrun " in script.read_text()

    for index, name in enumerate(["0_mel__smoke", "1_dummy__smoke"]):
        run = sweep / name
        claim = json.loads((run / ".xares_run.json").read_text())
        assert claim["slurm_job"] == f"{job}_{index}"  # ran as that array task
        folder = sweep / ".submitit" / f"{job}_{index}"
        result = job_result(folder / f"{job}_{index}_0_result.pkl")
        assert result.return_value == json.loads((run / "scores.json").read_text())["overall"]
        assert result.overrides[0] == f"encoder={name.split('_')[1]}"


@pytest.mark.slow  # over a minute of subprocesses; `make test-full` runs it
def test_ddp_across_two_slurm_nodes_gathers_one_table(tmp_path, data_home):
    result, sweep, script = slurm_sweep(
        tmp_path,
        data_home,
        "hydra.launcher.gpus_per_node=null",
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=1",
        "trainer.num_nodes=2",
        "trainer.precision=32-true",
    )
    succeeded(result)
    options = sbatch_options(script.read_text())
    assert options["nodes"] == "2" and options["ntasks-per-node"] == "1"  # from trainer.num_nodes
    assert "gpus-per-node" not in options
    logs = sorted(p.name for p in (sweep / ".submitit").rglob("*_log.err"))
    assert logs == [f"{script.stem}_0_log.err", f"{script.stem}_1_log.err"]  # one per node

    run = sweep / "0_mel__smoke"
    assert [p.parent for p in sweep.rglob("scores.json")] == [run]
    scores = json.loads((run / "scores.json").read_text())
    assert scores["efficiency"]["world_size"] == 2
    keys = [r["key"] for r in prediction_rows(run, "eval_pitch")]
    assert len(keys) == len(set(keys)) == 8


@pytest.mark.slow
def test_slurm_time_limit_stops_the_run_with_a_checkpoint(tmp_path, data_home):
    result, sweep, script = slurm_sweep(
        tmp_path,
        data_home,
        "hydra.launcher.timeout_min=1",
        "hydra.launcher.signal_delay_s=25",  # SIGTERM 35 s after the start
        steps=1_000_000,
    )
    assert result.returncode != 0  # the sweep reports the run that did not finish
    options = sbatch_options(script.read_text())
    assert options["signal"] == "TERM@25" and options["time"] == "1"
    run = sweep / "0_mel__smoke"
    assert not (run / "scores.json").exists()
    step = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["global_step"]
    assert step > 0
    (log,) = (sweep / ".submitit").rglob("*_0_log.out")
    assert f"stopped by SIGTERM at step {step}" in log.read_text()


def test_ddp_that_lightning_would_restart_is_refused_in_a_sweep(make_cfg):
    from xares.run.pipeline import build_trainer

    ddp = ("trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "logger=none")
    assert build_trainer(make_cfg(*FAST, *ddp)).num_devices == 2  # a single run: fine
    with pytest.raises(ValueError, match="hydra/launcher=slurm"):
        build_trainer(make_cfg(*FAST, *ddp, "hydra.mode=MULTIRUN"))

"""The comparability verdict: every shipped challenge task passes, every departure is named."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf

from xares.models.speed import Speed
from xares.protocol import challenge_tasks, expected_task, is_challenge_task
from xares.protocol.comparability import format_verdict, merge_records, verdict
from xares.results.scores import format_table, summarise
from xares.training.module import UNRECORDED, phase_record


@pytest.fixture(autouse=True)
def gpu_like(monkeypatch):
    """Resolve speed settings for a CUDA device with bf16 on a machine without one."""
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    before = torch.get_float32_matmul_precision()
    yield
    torch.set_float32_matmul_precision(before)


def records(cfg, device: str = "cuda", world_size: int = 1, steps: int | None = None):
    """The training and evaluation records a run of ``cfg`` on ``device`` would write."""
    plain = OmegaConf.to_container(cfg, resolve=True)
    speed = Speed.from_config(plain["speed"], challenge=is_challenge_task(plain["task"]["name"]))
    trainer = SimpleNamespace(
        precision=plain["trainer"]["precision"],
        world_size=world_size,
        accumulate_grad_batches=plain["trainer"].get("accumulate_grad_batches", 1),
    )
    resolved = speed.resolve(device)
    training = phase_record(trainer, resolved)
    training["steps"] = plain["trainer"]["max_steps"] if steps is None else steps
    return plain, training, phase_record(trainer, resolved)


def judge(make_cfg, *overrides, summary=None, **kwargs):
    plain, training, evaluation = records(make_cfg(*overrides, "logger=none"), **kwargs)
    return verdict(plain, training=training, evaluation=evaluation, summary=summary)


def codes(block) -> list[str]:
    return [r["code"] for r in block["reasons"]]


@pytest.mark.parametrize("task", challenge_tasks())
def test_every_challenge_task_as_shipped_is_comparable_on_one_gpu(make_cfg, task):
    block = judge(make_cfg, f"task={task}", "encoder=mel")
    assert block == {"comparable": True, "against": block["against"], "reasons": []}
    assert format_verdict(block).startswith("comparable with the XARES-LLM challenge")


def test_expected_task_reads_the_protocol_table():
    task1 = expected_task("task1")
    assert task1["max_steps"] == 100000 and len(task1["eval"]) == 15
    assert task1["train"]["esc-50"]["prob"] == 0.5
    assert expected_task("esc-50")["max_steps"] == 2000
    assert expected_task("task2")["eval"]["eval_aishell-1"]["metric"] == "iCER"
    with pytest.raises(KeyError, match="not a challenge task"):
        expected_task("mini")


# Each departure from the protocol, with the one reason it must produce.
DEPARTURES = {
    "bf16 decoder weights (speed=turbo)": (["speed=turbo"], {}, ["decoder_dtype", "matmul_precision"]),
    "TF32 matmuls only": (["speed.matmul_precision=high"], {}, ["matmul_precision"]),
    "bf16 autocast": (["trainer.precision=bf16-mixed"], {}, ["autocast"]),
    "two GPUs with DDP": (["trainer=ddp"], {"world_size": 2}, ["batch"]),
    "another batch size": (["data.batch_size=8"], {}, ["batch"]),
    "accumulated batches": (["+trainer.accumulate_grad_batches=2"], {}, ["batch"]),
    "fewer steps": (["trainer.max_steps=1000"], {}, ["scheduler", "steps"]),
    "a run cut short": ([], {"steps": 4000}, ["steps"]),
    "another learning rate": (["optimizer.lr=1e-3"], {}, ["optimizer"]),
    "another warm-up": (["scheduler.num_warmup_steps=10"], {}, ["scheduler"]),
    "another schedule": (["scheduler=cosine"], {}, ["scheduler"]),
    "another LoRA rank": (["llm.lora.r=16"], {}, ["lora"]),
    "another decoder": (["llm=smollm2_360m"], {}, ["decoder"]),
    "another projector": (["projector=mlp"], {}, ["projector"]),
    "no repetition penalty": (["generation.repetition_penalty=1.0"], {}, ["generation"]),
    "shorter answers": (["generation.max_new_tokens=20"], {}, ["generation"]),
    "eval limit": (["data.eval_limit=10"], {}, ["eval_limit"]),
    "eval crop": (["data.eval_max_seconds=10"], {}, ["eval_crop"]),
    "shorter training crop": (["data.crop_seconds=10"], {}, ["data"]),
    "trimmed Whisper window": (["encoder=whisper_tiny", "encoder.full_window=false"], {}, ["whisper_window"]),
    "float16 feature cache": (["speed.feature_cache.dtype=float16"], {}, ["feature_cache_dtype"]),
    "packed batches": (["model.pack=true"], {}, ["packing"]),
    "lenient labels": (["+task.eval.eval_esc-50.metric_args.lenient_labels=true"], {}, ["lenient_labels"]),
    "another prompt in a task file": (["task.eval.eval_esc-50.prompt=Which sound?"], {}, ["task_files"]),
    "another sampling weight": (["task.train.esc-50.prob=0.1"], {}, ["task_files"]),
    "a test set dropped": (["~task.eval.eval_esc-50"], {}, ["task_files"]),
}  # fmt: skip


@pytest.mark.parametrize("name", DEPARTURES)
def test_each_departure_is_named(make_cfg, name):
    overrides, kwargs, expected = DEPARTURES[name]
    task = "task=esc-50" if any("esc-50" in o for o in overrides) else "task=task1"
    block = judge(make_cfg, task, "encoder=mel", *overrides, **kwargs)
    assert block["comparable"] is False
    assert codes(block) == expected, block["reasons"]
    assert all(r["text"] for r in block["reasons"])


def test_the_reason_says_what_differed_and_what_the_protocol_has(make_cfg):
    block = judge(make_cfg, "task=task1", "encoder=mel", "optimizer.lr=1e-3", "trainer=ddp",
                  world_size=2)  # fmt: skip
    texts = [r["text"] for r in block["reasons"]]
    assert "optimizer.lr=0.001 (protocol: 0.0001)" in texts[0]
    assert "effective batch 8 = 2 process(es) x batch 4" in texts[1]
    prompt = judge(make_cfg, "task=esc-50", "encoder=mel", "task.eval.eval_esc-50.prompt=Which?")
    assert "eval.eval_esc-50.prompt" in prompt["reasons"][0]["text"]


def test_a_partial_overall_is_not_comparable(make_cfg):
    summary = {"partial": True, "unscored": ["eval_esc-50"]}
    block = judge(make_cfg, "task=esc-50", "encoder=mel", summary=summary)
    assert codes(block) == ["partial"] and "eval_esc-50" in block["reasons"][0]["text"]


def test_a_mini_suite_run_is_not_a_challenge_task(make_cfg):
    block = judge(make_cfg, "encoder=mel")  # the offline default: mini suite, bundled decoder
    assert codes(block)[:2] == ["task", "decoder"]
    assert "'mini' is not a challenge task" in block["reasons"][0]["text"]


def test_untrained_unrecorded_and_limited_runs_say_so(make_cfg):
    plain, training, evaluation = records(make_cfg("task=task1", "encoder=mel", "logger=none"))
    untrained = verdict(plain, training=None, evaluation=evaluation)
    assert codes(untrained) == ["steps"] and "not trained" in untrained["reasons"][0]["text"]
    old = verdict(plain, training={"unknown": UNRECORDED}, evaluation=evaluation)
    assert codes(old) == ["training_record"]
    cut = verdict(plain, training=training, evaluation=evaluation, limited_test=True)
    assert codes(cut) == ["test_batches"]


def test_bf16_only_at_evaluation_is_still_named(make_cfg):
    _, _, bf16 = records(make_cfg("task=task1", "encoder=mel", "speed=turbo", "logger=none"))
    plain, training, _ = records(make_cfg("task=task1", "encoder=mel", "logger=none"))
    block = verdict(plain, training=training, evaluation=bf16)
    assert codes(block) == ["decoder_dtype", "matmul_precision"]
    assert all(r["text"].startswith("evaluation:") for r in block["reasons"])


def test_a_resume_with_other_settings_records_both():
    first = {"device": "cuda", "decoder_dtype": "float32", "world_size": 1, "steps": 500}
    second = {"device": "cuda", "decoder_dtype": "bfloat16", "world_size": 1}
    merged = merge_records(first, second)
    assert merged == {"device": "cuda", "decoder_dtype": ["float32", "bfloat16"], "world_size": 1}
    assert merge_records(None, second) == second
    assert merge_records({"unknown": UNRECORDED}, second) == {"unknown": UNRECORDED}
    plain = {"task": {"name": "smoke"}, "data": {"batch_size": 4}}
    block = verdict(plain, training={**merged, "steps": 10}, evaluation=None)
    assert "float32 then bfloat16" in next(
        r["text"] for r in block["reasons"] if r["code"] == "decoder_dtype"
    )


def test_the_printed_table_ends_with_the_verdict_in_one_line():
    results = [
        {"task": "eval_a", "metric": "Accuracy", "score": 0.5, "weight": 1.0, "clips": 4,
         "dropped": {}, "note": ""},
    ]  # fmt: skip
    summary = summarise(results)
    summary["comparability"] = {
        "comparable": False,
        "against": "the XARES-LLM challenge's public results",
        "reasons": [{"code": "eval_limit", "text": "only 4 clips"}, {"code": "x", "text": "y"}],
    }
    last = format_table(summary).splitlines()[-1]
    assert last == "NOT comparable with the XARES-LLM challenge's public results: only 4 clips; y"


@pytest.mark.slow  # a minute of training runs; `make test-full` runs it
def test_wandb_gets_the_verdict(tmp_path, monkeypatch):
    import wandb

    from xares.training.loggers import log_final_scores, wandb_logger

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("HOME", str(tmp_path))
    results = [
        {"task": "eval_a", "metric": "Accuracy", "score": 0.5, "weight": 1.0, "clips": 4,
         "dropped": {}, "note": ""},
    ]  # fmt: skip
    summary = summarise(results)
    summary["tasks"][0]["interval"] = [0.25, 0.75]
    summary["overall_interval"] = [0.25, 0.75]
    reason = {"code": "eval_limit", "text": "data.eval_limit=4: only the first 4 clips"}
    summary["comparability"] = {"comparable": False, "against": "x", "reasons": [reason]}
    logger = wandb_logger(save_dir=str(tmp_path), offline=True)
    try:
        log_final_scores([logger], summary)
        run = logger.experiment
        assert run.summary["comparable"] is False
        assert list(run.summary["comparability_reasons"]) == ["eval_limit"]
        assert run.config["xares_comparability"]["reasons"] == [reason]
        assert (run.summary["overall_ci_low"], run.summary["overall_ci_high"]) == (0.25, 0.75)
    finally:
        wandb.finish()

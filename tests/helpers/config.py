"""The repository's paths, the short-run overrides every training test starts from, composing."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf"

# Keep training runs in tests short; every test that trains starts from these.
FAST = [
    "experiment=smoke",
    "trainer.max_steps=20",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "data.eval_limit=8",
    "generation.max_new_tokens=6",
]


def compose_config(
    overrides: list[str], output_dir: Path, data_dir: Path, config_name: str = "train"
) -> DictConfig:
    """Compose ``conf/<config_name>.yaml`` as Hydra would for a run, with the run dir given."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(
            config_name,
            overrides=[
                f"paths.data_dir={data_dir}",
                f"paths.log_dir={output_dir.parent}",
                *overrides,
            ],
            return_hydra_config=True,
        )
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
        del cfg["hydra"]
    return cfg


def _spine() -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.load(CONF / "train.yaml"))  # type: ignore[return-value]


def data_settings(**changes):
    """``conf/train.yaml``'s data settings (the protocol's), with ``changes``."""
    from xares.training.datamodule import DataSettings

    return DataSettings.of({**_spine()["data"], **changes})


def generation_settings(**changes):
    """``conf/train.yaml``'s generation settings (the protocol's), with ``changes``."""
    from xares.models.audio_llm import GenerationSettings

    return GenerationSettings.of({**_spine()["generation"], **changes})


def stream_settings(**changes) -> dict:
    """The keyword arguments a training mixture takes, from the data settings and the seed."""
    data = data_settings()
    return {
        "sample_rate": data.sample_rate,
        "crop_seconds": data.crop_seconds,
        "shuffle_buffer": data.shuffle_buffer,
        "sort_buffer": data.sort_buffer,
        "seed": _spine()["seed"],
        **changes,
    }


def eval_stream_settings(**changes) -> dict:
    """The keyword arguments a test set's stream takes, from the data settings."""
    data = data_settings()
    return {
        "sample_rate": data.sample_rate,
        "max_seconds": data.eval_max_seconds,
        "sort_buffer": data.eval_sort_buffer,
        **changes,
    }


SAMPLE_RATE = int(_spine()["data"]["sample_rate"])


def train_mixture(sources, **settings):
    """A training mixture with the config's data settings, ``settings`` changed."""
    from xares.data.mixing import TrainMixture

    return TrainMixture(sources, **stream_settings(**settings))


def eval_set(source, **settings):
    """A test set's stream with the config's data settings, ``settings`` changed."""
    from xares.data.mixing import EvalSet

    return EvalSet(source, **eval_stream_settings(**settings))

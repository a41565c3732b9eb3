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

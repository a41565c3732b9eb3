"""Shared fixtures: composing the real configs, a session-wide data cache, tiny batches."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "conf"

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(2)


needs_chromium = pytest.mark.skipif(
    shutil.which("chromium") is None, reason="chromium is not installed"
)


def screenshot(page: Path, shot: Path, window: str = "1400,1000") -> np.ndarray:
    """``page`` rendered by headless Chromium into ``shot``; its RGB pixels in [0, 1]."""
    import matplotlib.image

    subprocess.run(
        [
            "chromium",
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={shot.parent / 'chromium-profile'}",
            f"--screenshot={shot}",
            f"--window-size={window}",
            page.as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return matplotlib.image.imread(shot)[..., :3]


@pytest.fixture(scope="session")
def data_home(tmp_path_factory) -> Path:
    """One data cache for the whole session, so generated suites are built once."""
    path = tmp_path_factory.mktemp("xares_data")
    os.environ["XARES_DATA_HOME"] = str(path)
    return path


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


@pytest.fixture
def make_cfg(tmp_path, data_home):
    def make(*overrides: str, config_name: str = "train", output_dir: Path | None = None):
        out = output_dir or tmp_path / "run"
        return compose_config(list(overrides), out, data_home, config_name)

    return make


# A two-layer, 32-wide Whisper: the real architecture and feature extractor, random weights.
TINY_WHISPER = dict(
    d_model=32,
    encoder_layers=2,
    encoder_attention_heads=2,
    encoder_ffn_dim=64,
    decoder_layers=1,
    decoder_attention_heads=2,
    decoder_ffn_dim=64,
    vocab_size=64,
    max_target_positions=16,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
    decoder_start_token_id=1,
)


# Keep training runs in tests short; every test that trains starts from these.
FAST = [
    "experiment=smoke",
    "trainer.max_steps=20",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "data.eval_limit=8",
    "generation.max_new_tokens=6",
]

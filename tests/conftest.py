"""Shared fixtures: composing the real configs, a session-wide data cache.

What test modules import (paths, overrides, small models) lives in ``tests/helpers/``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from helpers.config import compose_config

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(2)


@pytest.fixture(scope="session")
def data_home(tmp_path_factory) -> Path:
    """One data cache for the whole session, so generated suites are built once."""
    path = tmp_path_factory.mktemp("xares_data")
    os.environ["XARES_DATA_HOME"] = str(path)
    return path


@pytest.fixture
def make_cfg(tmp_path, data_home):
    def make(*overrides: str, config_name: str = "train", output_dir: Path | None = None):
        out = output_dir or tmp_path / "run"
        return compose_config(list(overrides), out, data_home, config_name)

    return make

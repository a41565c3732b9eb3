"""What a run prints: steps out of the budget in the progress bar, no tips, no library warnings."""

from __future__ import annotations

import logging
import warnings

import lightning.pytorch as pl
import torch
from helpers.config import FAST
from lightning.pytorch.callbacks import ModelSummary, TQDMProgressBar
from lightning.pytorch.utilities._pytree import _tree_flatten
from lightning.pytorch.utilities.rank_zero import rank_zero_info
from torch.utils.data import DataLoader, IterableDataset

from xares.run.pipeline import build_trainer
from xares.training.console import StepProgressBar, quiet_console


class Endless(IterableDataset):
    def __iter__(self):
        while True:
            yield torch.randn(4)


class Tiny(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        return self.layer(batch).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        return DataLoader(Endless(), batch_size=2)


class Seen(pl.Callback):
    """What the bar shows after each training step."""

    def __init__(self, bar: StepProgressBar):
        self.bar, self.shown = bar, []

    def on_train_batch_end(self, trainer, *args):
        task = self.bar.progress.tasks[self.bar.train_progress_bar_id]
        self.shown.append((task.description.strip(), task.completed, task.total))


def fit(max_steps: int, tmp_path, ckpt_path=None, accumulate: int = 1) -> list:
    bar = StepProgressBar()
    seen = Seen(bar)
    trainer = pl.Trainer(
        max_steps=max_steps,
        max_epochs=-1,
        callbacks=[bar, seen],
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        accelerator="cpu",
        accumulate_grad_batches=accumulate,
    )
    trainer.fit(Tiny(), ckpt_path=ckpt_path)
    if ckpt_path is None:
        trainer.save_checkpoint(tmp_path / "last.ckpt", weights_only=False)
    return seen.shown


def test_the_endless_stream_trains_in_steps_out_of_max_steps(tmp_path):
    shown = fit(3, tmp_path)
    assert shown == [("train", 1, 3), ("train", 2, 3), ("train", 3, 3)]
    # A resumed run counts on from the step it reached, out of the same budget.
    assert fit(5, tmp_path, ckpt_path=tmp_path / "last.ckpt") == [("train", 4, 5), ("train", 5, 5)]


def test_accumulated_batches_count_as_the_steps_they_make(tmp_path):
    shown = fit(2, tmp_path, accumulate=2)
    assert shown == [("train", 0, 2), ("train", 1, 2), ("train", 1, 2), ("train", 2, 2)]


def test_runs_get_the_step_bar_unless_the_bar_is_off_or_their_own(make_cfg):
    def bars(*overrides):
        trainer = build_trainer(make_cfg(*FAST, *overrides))
        return [type(c) for c in trainer.callbacks if isinstance(c, pl.callbacks.ProgressBar)]

    assert bars("trainer.enable_progress_bar=true") == [StepProgressBar]
    assert bars() == []  # FAST switches the bar off
    own = "+callbacks.bar._target_=lightning.pytorch.callbacks.TQDMProgressBar"
    assert bars("trainer.enable_progress_bar=true", own) == [TQDMProgressBar]
    # xares logs the model and its trainable parameters itself: no Lightning table.
    defaults = make_cfg(*[o for o in FAST if "model_summary" not in o])
    assert not [c for c in build_trainer(defaults).callbacks if isinstance(c, ModelSummary)]


def test_tips_and_library_warnings_stay_off_the_console():
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logger.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            _tree_flatten(1)
            assert [w.category for w in caught] == [FutureWarning]  # lightning's, about torch
            quiet_console()
            _tree_flatten(1)
            assert len(caught) == 1
        rank_zero_info("💡 Tip: try installing something")
        rank_zero_info("GPU available: False, used: False")
    finally:
        logger.removeHandler(handler)
    assert [r.getMessage() for r in records] == ["GPU available: False, used: False"]

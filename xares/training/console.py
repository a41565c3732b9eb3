"""What a run prints while it trains and tests: steps out of the budget, and no library chatter.

The training stream is endless (``max_epochs: -1``, stopped by ``max_steps``), so Lightning's
own bar would count "Epoch 0/-2"; this one counts steps out of ``trainer.max_steps``, a
resumed run from the step it reached. Lightning's advertising tips and deprecation warnings
that libraries raise about each other (nothing a user of xares can act on) are kept off the
console; everything else Lightning and xares say is left as it is.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import RichProgressBar


class StepProgressBar(RichProgressBar):
    """Lightning's rich progress bar, with training shown as steps out of ``max_steps``."""

    def _get_train_description(self, current_epoch: int) -> str:
        return f"{'train':{len(self.validation_description)}}"

    def _show_step(self, trainer: pl.Trainer, **fields: Any) -> None:
        if self.progress is not None and self.train_progress_bar_id is not None:
            self.progress.update(
                self.train_progress_bar_id, completed=trainer.global_step, **fields
            )

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_start(trainer, pl_module)
        if trainer.max_steps > 0:
            self._show_step(trainer, total=trainer.max_steps)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx
    ) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        self._show_step(trainer)


class _DropTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip")


_TIPS = _DropTips()

# (category, module that triggers it): warnings about one library's use of another.
_LIBRARY_WARNINGS = [
    # lightning's pytree helper still builds torch's deprecated LeafSpec.
    (FutureWarning, r"lightning\.pytorch\.utilities\._pytree"),
]


def quiet_console() -> None:
    """Keep Lightning's tips and the libraries' warnings about each other off the console."""
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if _TIPS not in logger.filters:
            logger.addFilter(_TIPS)
    for category, module in _LIBRARY_WARNINGS:
        warnings.filterwarnings("ignore", category=category, module=module)

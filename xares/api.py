"""Train and evaluate from Python with the same configs as the CLI: see :mod:`xares.run.api`."""

from xares.run.api import OverrideError, evaluate, to_overrides, train

__all__ = ["OverrideError", "evaluate", "to_overrides", "train"]

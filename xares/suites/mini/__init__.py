"""The offline mini suite: a generated benchmark in the challenge's shard format.

``ensure_mini_suite(root)`` writes (once) WebDataset shards for nine synthetic tasks
under ``root``; ``MINI_TASKS`` describes each task (classes, chance level, metric,
label key, prompt). Speech comes from eSpeak NG (``espeakng-loader``), everything
else from numpy. :mod:`xares.suites.mini.recipes` holds the task table and how each clip
is made; :mod:`xares.suites.mini.writer` writes the shards and the manifest.
"""

from .recipes import GENERATOR_VERSION, MINI_TASKS, estimate_text_chance
from .speech import SAMPLE_RATE, SpeechError, Voice, synthesize
from .speech import is_available as speech_available
from .writer import SIZE_PRESETS, ensure_mini_suite, remove_mini_suite, resolve_sizes

__all__ = [
    "GENERATOR_VERSION",
    "MINI_TASKS",
    "SAMPLE_RATE",
    "SIZE_PRESETS",
    "SpeechError",
    "Voice",
    "ensure_mini_suite",
    "estimate_text_chance",
    "remove_mini_suite",
    "resolve_sizes",
    "speech_available",
    "synthesize",
]

"""The challenge's protocol facts (``xares_llm_protocol.yaml``) and what follows from them.

The same table writes the task files (``experiments/protocol/make_task_files.py``), is checked
against the composed configs (``tests/test_protocol_tasks.py``), chooses the numerics of a
challenge task (:func:`is_challenge_task`) and judges each run's comparability
(:mod:`xares.protocol.comparability`).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import yaml

FACTS_FILE = Path(__file__).resolve().parent / "xares_llm_protocol.yaml"


@functools.cache
def facts() -> dict[str, Any]:
    return yaml.safe_load(FACTS_FILE.read_text(encoding="utf-8"))


def mixtures() -> dict[str, dict[str, Any]]:
    """``task1``, ``task2``, ``all``: budget and sampling weight of each dataset."""
    return {k: v for k, v in facts()["mixtures"].items() if isinstance(v, dict)}


def datasets() -> dict[str, dict[str, Any]]:
    """The 20 datasets by task-file name (``esc-50``): train/test shards, prompts, metric."""
    return facts()["datasets"]


def challenge_tasks() -> tuple[str, ...]:
    """The task names whose scores the challenge publishes: the mixtures and each dataset."""
    return (*mixtures(), *datasets())


def is_challenge_task(name: str | None) -> bool:
    return name in challenge_tasks()


def expected_task(name: str) -> dict[str, Any]:
    """What the protocol says task ``name`` trains on and scores, in the composed config's terms.

    ``max_steps``, ``train`` (dataset → shards, label key, prompt, sampling weight; ``None``
    is the dataset's share of all shards) and ``eval`` (test-set name → shards, label key,
    prompt, metric, its arguments, weight). Batch sizes and repositories are left out: they
    change neither what is trained nor what is scored.
    """
    sets = datasets()
    if name in mixtures():
        by_mixture_name = {spec["mixture_name"]: key for key, spec in sets.items()}
        mixture = mixtures()[name]
        weights = {by_mixture_name[k]: w for k, w in mixture["datasets"].items()}
        steps = mixture["max_steps"]
    elif name in sets:
        weights, steps = {name: None}, sets[name]["single_task_max_steps"]
    else:
        raise KeyError(f"{name!r} is not a challenge task; those are {list(challenge_tasks())}")
    train, test = {}, {}
    for key, prob in weights.items():
        spec = sets[key]
        train[key] = {k: spec["train"][k] for k in ("shards", "label_key", "prompt")}
        train[key]["prob"] = prob
        evaluation = spec["eval"]
        test[evaluation["name"]] = {
            k: evaluation[k]
            for k in ("shards", "label_key", "prompt", "metric", "metric_args", "weight")
        }
    return {"max_steps": steps, "train": train, "eval": test}


def training_defaults() -> dict[str, Any]:
    return facts()["training_defaults"]

"""The challenge task configs (conf/task/) against the protocol's facts.

The protocol copy lives in the repository (experiments/protocol/) so these checks run
from a fresh clone, offline: they only compose configs and expand shard patterns.
"""

from __future__ import annotations

import copy
import functools
from typing import Any

import pytest
import yaml
from helpers.config import CONF, ROOT, data_settings
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf, open_dict

from xares.data.download import hub_url
from xares.data.shards import expand_pattern
from xares.metrics import METRICS, build_metric
from xares.training import datamodule as datamodule_module
from xares.training.datamodule import TaskDataModule

PROTOCOL = yaml.safe_load(
    (ROOT / "xares" / "protocol" / "xares_llm_protocol.yaml").read_text(encoding="utf-8")
)
DATASETS: dict[str, dict[str, Any]] = PROTOCOL["datasets"]
MIXTURES = {k: v for k, v in PROTOCOL["mixtures"].items() if isinstance(v, dict)}
BY_MIXTURE_NAME = {spec["mixture_name"]: key for key, spec in DATASETS.items()}
PROTOCOL_LLM = "smollm2_135m"

# Shard counts worked out by hand from the protocol's patterns (train, test), so a
# pattern typo or an expansion bug (padding, inclusive ends) shows up as a count.
SHARD_COUNTS = {
    "aishell-1": (174, 12),
    "asvspoof2015": (18, 194),
    "clotho": (18, 5),
    "cremad": (6, 2),
    "esc-50": (4, 1),
    "fluentspeechcommands": (24, 4),
    "freemusicarchive": (64, 8),
    "fsd50k": (9, 32),
    "fsdkaggle2018": (21, 3),
    "gtzan": (9, 1),
    "libricount": (4, 1),
    "librispeech": (20, 20),
    "mecat": (10, 10),
    "nsynth": (372, 6),
    "songdescriber": (2, 2),
    "speechcommandsv1": (52, 7),
    "urbansound8k": (9, 1),
    "vocalsound": (21, 5),
    "voxceleb1": (40, 19),
    "voxlingua33": (210, 6),
}


def compose_train(*overrides: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The resolved config and Hydra's group choices for ``python train.py <overrides>``."""
    return copy.deepcopy(_compose(overrides))


@functools.cache  # composing takes most of a second; several tests read the same configs
def _compose(overrides: tuple[str, ...]) -> tuple[dict[str, Any], dict[str, Any]]:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=list(overrides), return_hydra_config=True)
    # `${hydra:...}` (run_name, paths.output_dir) resolves only through the HydraConfig singleton.
    HydraConfig.instance().set_config(cfg)
    choices = OmegaConf.to_container(cfg.hydra.runtime.choices)
    with open_dict(cfg):
        del cfg["hydra"]
    return OmegaConf.to_container(cfg, resolve=True), choices


def mixture_keys(mixture: str) -> list[str]:
    return [BY_MIXTURE_NAME[name] for name in MIXTURES[mixture]["datasets"]]


def expected_train(key: str) -> dict[str, Any]:
    # Nothing but the protocol: no `label_join` (a list label is several references there).
    return dict(DATASETS[key]["train"])


def expected_eval(key: str) -> dict[str, Any]:
    spec = {k: v for k, v in DATASETS[key]["eval"].items() if k != "name"}
    spec["track"] = DATASETS[key]["track"]
    return spec


def test_protocol_copy_covers_the_challenge():
    assert len(DATASETS) == 20
    assert set(MIXTURES) == {"task1", "task2", "all"}
    assert set(SHARD_COUNTS) == set(DATASETS)
    assert sorted(mixture_keys("task1") + mixture_keys("task2")) == sorted(mixture_keys("all"))


@pytest.mark.parametrize("mixture", ["task1", "task2", "all"])
def test_mixture_has_the_protocol_datasets_and_weights(mixture):
    cfg, choices = compose_train(f"task={mixture}")
    task, protocol = cfg["task"], MIXTURES[mixture]
    keys = mixture_keys(mixture)

    assert task["name"] == mixture
    assert task["max_steps"] == protocol["max_steps"]
    assert cfg["trainer"]["max_steps"] == protocol["max_steps"]
    assert cfg["run_name"] == f"{choices['encoder']}__{mixture}"
    assert task["track"] == (None if mixture == "all" else mixture)

    # Same sets in the protocol's order (the test sets are scored in this order).
    assert list(task["train"]) == keys
    assert list(task["eval"]) == [f"eval_{k}" for k in keys]
    # Weights as given: `all` keeps its nulls (share of shards, worked out by the datamodule).
    probs = {BY_MIXTURE_NAME[name]: p for name, p in protocol["datasets"].items()}
    assert {k: v["prob"] for k, v in task["train"].items()} == probs
    if mixture == "all":
        assert sum(p is None for p in probs.values()) == 13

    # A mixture changes nothing of a dataset but its weight.
    for key in keys:
        assert {k: v for k, v in task["train"][key].items() if k != "prob"} == expected_train(key)
        assert task["eval"][f"eval_{key}"] == expected_eval(key)
    tracks = {spec["track"] for spec in task["eval"].values()}
    assert tracks == ({"task1", "task2"} if mixture == "all" else {mixture})


@pytest.mark.parametrize("key", sorted(DATASETS))
def test_single_dataset_task_matches_the_protocol(key):
    cfg, choices = compose_train(f"task={key}")
    task, protocol = cfg["task"], DATASETS[key]

    assert task["name"] == key
    assert task["track"] == protocol["track"]
    assert task["max_steps"] == protocol["single_task_max_steps"]
    assert cfg["trainer"]["max_steps"] == protocol["single_task_max_steps"]
    assert choices["llm"] == PROTOCOL_LLM
    assert cfg["run_name"] == f"{choices['encoder']}__{key}"

    assert list(task["train"]) == [key]
    assert task["train"][key] == {**expected_train(key), "prob": None}
    assert list(task["eval"]) == [protocol["eval"]["name"]] == [f"eval_{key}"]
    assert task["eval"][f"eval_{key}"] == expected_eval(key)


@pytest.mark.parametrize("key", sorted(DATASETS))
def test_metric_is_registered_and_builds(key):
    spec = DATASETS[key]["eval"]
    assert spec["metric"] in METRICS
    metric = build_metric(spec["metric"], spec["metric_args"])
    if spec["metric"] == "mAP":
        assert metric.num_classes == spec["metric_args"]["num_classes"]


@pytest.mark.parametrize("key", sorted(DATASETS))
def test_shard_patterns_expand_to_the_protocol_counts(key, monkeypatch):
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    url_form = PROTOCOL["url_form"].replace(
        "{HF_ENDPOINT or https://huggingface.co}", "https://huggingface.co"
    )
    task = compose_train(f"task={key}")[0]["task"]
    train, test = task["train"][key], task["eval"][f"eval_{key}"]
    for spec, count in zip((train, test), SHARD_COUNTS[key], strict=True):
        files = [f for pattern in spec["shards"] for f in expand_pattern(pattern)]
        assert len(files) == len(set(files)) == count
        assert not any(c in f for f in files for c in "{}*?")
        # Remote shards: the URL the protocol's url_form gives.
        url = url_form.format(repo_id=spec["repo_id"], path=files[0])
        assert hub_url(spec["repo_id"], files[0]) == url


def test_null_prob_becomes_the_share_of_shards(monkeypatch):
    """`all`: a null weight is the set's shard count over the mixture's total shard count."""
    task = compose_train("task=all")[0]["task"]
    monkeypatch.setattr(
        datamodule_module,
        "resolve_shards",
        lambda shards, repo_id, **_: [f for p in shards for f in expand_pattern(p)],
    )
    dm = TaskDataModule(task=task, data=data_settings(), seed=0, download=False)
    dm.setup("fit")
    probs = {s.name: s.prob for s in dm.train_sources}
    total = sum(train for train, _ in SHARD_COUNTS.values())
    for key, given in task["train"].items():
        expected = SHARD_COUNTS[key][0] / total if given["prob"] is None else given["prob"]
        assert probs[key] == pytest.approx(expected)


def test_protocol_decoder_comes_with_a_challenge_task_unless_overridden():
    cfg, choices = compose_train("task=task1")
    assert choices["llm"] == PROTOCOL_LLM
    # The protocol's batching: padded, length-sorted within a 128-clip buffer, not packed.
    assert cfg["model"]["pack"] is False and cfg["data"]["sort_buffer"] == 128
    # The protocol's projector: one linear layer with PyTorch's own initialisation.
    assert cfg["projector"] == {
        "_target_": "xares.models.projector.LinearProjector",
        "init_std": None,
    }
    # The command line wins over the task file's `override /llm`...
    assert compose_train("task=task1", "llm=tiny_random")[1]["llm"] == "tiny_random"
    # ...and so does an experiment (it comes later in the defaults list).
    choices = compose_train("task=task1", "experiment=smoke")[1]
    assert (choices["task"], choices["llm"]) == ("task1", "tiny_random")


def test_dataset_keys_with_hyphens_take_command_line_overrides():
    task = compose_train(
        "task=task1", "task.train.esc-50.prob=7", "task.eval.eval_esc-50.batch_size=2"
    )[0]["task"]
    assert task["train"]["esc-50"]["prob"] == 7
    assert task["eval"]["eval_esc-50"]["batch_size"] == 2


def test_own_dataset_file_from_another_config_dir(tmp_path):
    """A user's dataset is one task file in a `task/` folder of their own config dir
    (`python train.py --config-dir my_conf task=mine`); a mixture may compose it too."""
    (tmp_path / "task").mkdir()
    (tmp_path / "task" / "mine.yaml").write_text(
        "name: mine\ntrack: null\nmax_steps: 500\n"
        "train:\n  mine: {shards: ['data/train_{0..3}.tar'], label_key: label,"
        " prompt: Classify it., prob: null}\n"
        "eval:\n  eval_mine: {shards: [data/test_0.tar], label_key: label, prompt: Classify it.,"
        " metric: Accuracy, metric_args: {}, batch_size: 8, weight: 1}\n"
    )
    (tmp_path / "task" / "task1_and_mine.yaml").write_text(
        "defaults:\n  - task1\n  - mine\n  - _self_\n"
        "name: task1_and_mine\nmax_steps: 100000\ntrain:\n  mine: {prob: 1}\n"
    )
    searchpath = f"hydra.searchpath=[file://{tmp_path}]"

    cfg, choices = compose_train(searchpath, "task=mine")
    assert cfg["run_name"] == f"{choices['encoder']}__mine"
    assert list(cfg["task"]["eval"]) == ["eval_mine"]

    task = compose_train(searchpath, "task=task1_and_mine")[0]["task"]
    assert list(task["train"]) == [*mixture_keys("task1"), "mine"]
    assert task["train"]["mine"]["prob"] == 1
    assert task["max_steps"] == 100000

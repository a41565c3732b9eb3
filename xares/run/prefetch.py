"""Download every shard a task needs before training, so training can run offline.

    python -m xares.data.prefetch conf/task/esc50.yaml
    python -m xares.data.prefetch task=task1
    python -m xares.data.prefetch "ESC-50/test/esc50_fold_5_0000000.tar.gz" --repo-id mispeech/xares_llm_data
    python -m xares.data.prefetch task=task1 --check     # report what is missing, fetch nothing

A task file holds ``train`` and ``eval`` mappings of datasets, each with
``shards`` and an optional ``repo_id``; every mapping with a ``shards`` key
anywhere in the file is collected, so whole-protocol files work too.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from xares.data.download import data_home
from xares.data.shards import MissingShardError, resolve_shards

log = logging.getLogger(__name__)

_YAML_SUFFIXES = (".yaml", ".yml")


def prefetch(
    datasets: Iterable[Mapping[str, Any]],
    *,
    root: str | Path | None = None,
    download: bool = True,
    offline: bool | None = None,
    progress: bool = True,
    task: str | None = None,
) -> list[str]:
    """Resolve (and download) the shards of every dataset; return the local paths.

    Each mapping needs ``shards`` (a pattern or list of patterns) and may have
    ``repo_id`` and ``root``. All datasets are attempted before failing, so one
    ``MissingShardError`` reports everything that is still missing.
    """
    paths: list[str] = []
    seen: set[str] = set()
    errors: list[MissingShardError] = []
    for dataset in datasets:
        shards = dataset["shards"]
        if isinstance(shards, str):
            shards = [shards]
        try:
            found = resolve_shards(
                [str(s) for s in shards],
                dataset.get("repo_id"),
                root=dataset.get("root", root),
                download=download,
                offline=offline,
                progress=progress,
                task=task,
            )
        except MissingShardError as err:
            errors.append(err)
            continue
        for path in found:
            if path not in seen:
                seen.add(path)
                paths.append(path)
    if errors:
        raise MissingShardError.merge(errors, download=download, task=task)
    return paths


def collect_datasets(config: Any) -> list[dict[str, Any]]:
    """Every mapping with a ``shards`` key in a task config, in document order.

    Each result carries a ``name`` (its key path) for reporting. Accepts plain
    containers or OmegaConf nodes; interpolations are resolved when possible.
    """
    container = _to_container(config)
    return list(_walk(container, ()))


def _to_container(config: Any) -> Any:
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf
    except ImportError:  # plain dicts need no conversion
        return config
    if not isinstance(config, (DictConfig, ListConfig)):
        return config
    try:
        return OmegaConf.to_container(config, resolve=True)
    except Exception as err:  # e.g. ${hydra:...} outside a Hydra run
        log.warning("could not resolve interpolations (%s); using them verbatim", err)
        return OmegaConf.to_container(config, resolve=False)


def _walk(node: Any, where: tuple[str, ...]) -> Iterator[dict[str, Any]]:
    if isinstance(node, Mapping):
        if "shards" in node:
            yield {"name": ".".join(where) or "dataset", **node}
            return
        for key, value in node.items():
            yield from _walk(value, (*where, str(key)))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _walk(value, (*where, str(i)))


def load_task_file(path: str | Path) -> Any:
    """Load a task YAML, following a plain ``defaults`` list of sibling files."""
    from omegaconf import OmegaConf

    path = Path(path)
    config = OmegaConf.load(path)
    defaults = config.get("defaults") if isinstance(config, Mapping) else None
    if not defaults:
        return config
    # Without Hydra, approximate its composition: merge sibling files named in
    # the defaults list, then the file itself (``_self_`` last by default).
    parts = []
    for entry in defaults:
        name = entry if isinstance(entry, str) else None
        if name is None or name == "_self_":
            continue
        sibling = path.parent / f"{name.lstrip('/')}.yaml"
        if sibling.is_file():
            parts.append(load_task_file(sibling))
        else:
            log.warning("%s: defaults entry %r not found next to it; skipped", path, name)
    own = OmegaConf.masked_copy(config, [str(k) for k in config if k != "defaults"])  # type: ignore[arg-type]
    return OmegaConf.merge(*parts, own)


def load_named_task(name: str, conf_dir: str | Path | None = None) -> Any:
    """The ``task`` config group option ``name``, composed with Hydra when it can be."""
    conf = Path(conf_dir) if conf_dir else _find_conf_dir()
    try:
        from hydra import compose, initialize_config_dir

        with initialize_config_dir(config_dir=str(conf.resolve()), version_base="1.3"):
            composed = compose(config_name="train", overrides=[f"task={name}"])
        return composed.get("task", composed)
    except Exception as err:
        log.debug("Hydra composition of task=%s failed (%s); reading the file", name, err)
    candidate = conf / "task" / f"{name}.yaml"
    if not candidate.is_file():
        raise FileNotFoundError(f"no task named {name!r}: {candidate} does not exist")
    return load_task_file(candidate)


def _find_conf_dir() -> Path:
    for candidate in (Path.cwd() / "conf", Path(__file__).resolve().parents[2] / "conf"):
        if (candidate / "task").is_dir():
            return candidate
    return Path.cwd() / "conf"


def _datasets_from_args(items: Sequence[str], repo_id: str | None) -> list[dict[str, Any]]:
    datasets: list[dict[str, Any]] = []
    loose: list[str] = []
    for item in items:
        if item.startswith("task="):
            datasets += collect_datasets(load_named_task(item.split("=", 1)[1]))
        elif item.lower().endswith(_YAML_SUFFIXES) and Path(item).is_file():
            datasets += collect_datasets(load_task_file(item))
        else:
            loose.append(item)
    if loose:
        datasets.append({"name": "command line", "shards": loose, "repo_id": repo_id})
    elif repo_id:
        # An explicit --repo-id applies to task datasets that do not name one.
        datasets = [{**d, "repo_id": d.get("repo_id") or repo_id} for d in datasets]
    return datasets


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m xares.data.prefetch",
        description="Download the shards of a task (or of given patterns) into the cache.",
    )
    parser.add_argument(
        "items",
        nargs="+",
        help="task YAML files, task=<name> (a conf/task option), or shard patterns/URLs",
    )
    parser.add_argument("--repo-id", help="dataset repository for relative shard patterns")
    parser.add_argument("--root", help="directory holding shards already (searched first)")
    parser.add_argument("--check", action="store_true", help="report missing shards only")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    task = next((i.split("=", 1)[1] for i in args.items if i.startswith("task=")), None)
    try:
        datasets = _datasets_from_args(args.items, args.repo_id)
        if not datasets:
            parser.error("no datasets with 'shards' found in the given items")
        paths = prefetch(
            datasets,
            root=args.root,
            download=not args.check,
            progress=not args.no_progress,
            task=task,
        )
    except (MissingShardError, OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1

    total = sum(os.path.getsize(p) for p in paths)
    home = data_home()
    outside = [p for p in paths if not Path(p).is_relative_to(home)]
    size = tqdm.format_sizeof(total, "B", 1024)
    print(f"{len(paths)} shard(s) from {len(datasets)} dataset(s), {size} in total")
    print(f"cache: {home}")
    if outside:
        print(f"{len(outside)} shard(s) are read in place outside the cache")
    return 0


if __name__ == "__main__":
    sys.exit(main())

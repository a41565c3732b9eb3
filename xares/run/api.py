"""Train and evaluate from Python (a notebook, a script) with the same configs as the CLI.

```python
import xares.api

result = xares.api.train({"encoder": "mel", "task": "mini", "trainer.max_steps": 200})
result["overall"], result["run_dir"]
again = xares.api.evaluate(result["run_dir"], ["data.eval_limit=32"])
```

``python train.py`` gets its config, its run directory and Hydra's process-wide state from
``@hydra.main``. Here the same pieces are made without it: ``conf/`` is composed with the
overrides, the run directory is named by the pattern in ``conf/hydra/default.yaml``, and the
HydraConfig that the run reads (``${hydra:runtime.choices.encoder}``, the run directory
behind ``${paths.output_dir}``) is set for the call only. Whatever Hydra state the caller
had (its own ``initialize``/``compose``, a HydraConfig) is set aside and put back, also when
the call fails.

Differences from the CLI: there is no sweep (``-m``: loop over calls instead), no working
directory change, and logging is left as the caller configured it (the score table is
printed either way). Like the CLI, a run writes into its run directory, and into the data
cache (``paths.data_dir``, ``$XARES_DATA_HOME``, default ``./xares_data``); an evaluation
also keeps its finished test sets beside the checkpoint it scored, so an interrupted one
resumes.
"""

from __future__ import annotations

import copy
import json
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, OverrideType
from hydra.core.singleton import Singleton
from hydra.core.utils import JobRuntime, env_override
from hydra.errors import HydraException
from hydra.types import RunMode
from hydra.version import VersionBase
from omegaconf import DictConfig, OmegaConf, open_dict, read_write
from omegaconf.errors import OmegaConfBaseException

from xares.layout import HYDRA_CONFIG, HYDRA_OVERRIDES, HYDRA_SETTINGS
from xares.run.directory import CLAIM, RESULT_PATTERNS, RunDirError, claim_run_dir
from xares.run.pipeline import CONFIG_DIR

__all__ = ["OverrideError", "evaluate", "to_overrides", "train"]

Overrides = Mapping[str, Any] | Sequence[str]

# Where a run's results go; naming them in the overrides is choosing the run directory.
RUN_DIR_KEYS = ("hydra.run.dir", "paths.output_dir")
# Hydra keeps its state in these process-wide singletons.
HYDRA_SINGLETONS = (GlobalHydra, HydraConfig, JobRuntime, VersionBase)
# Unquoted keys in Hydra's dict syntax: `{name:value}`.
PLAIN_KEY = re.compile(r"[A-Za-z_][\w\-]*")


class OverrideError(ValueError):
    """An override is malformed, or names a key or config option that does not exist."""


def train(
    overrides: Overrides = (),
    run_dir: str | os.PathLike[str] | None = None,
    *,
    config_dir: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Train and evaluate one encoder on one task, as ``python train.py <overrides>`` does.

    ``overrides``: a list of Hydra override strings (``["encoder=mel", "task=mini"]``) or a
    dict (``{"encoder": "mel", "trainer.max_steps": 20}``, see :func:`to_overrides`).
    ``run_dir``: where the run writes its checkpoints, logs and score files; by default a
    fresh folder named as the CLI names it, ``outputs/<encoder>__<task>/<date>_<time>_<pid>``
    (``-2``, ``-3``, ... appended when this process already made one in the same second).
    ``config_dir``: a folder of extra config files (your own ``task/birds.yaml``), searched
    after ``conf/`` as with ``python train.py --config-dir``.

    Returns the score summary (``tasks``, ``tracks``, ``overall``, ``comparability``,
    ``efficiency``, ``run``, ...; ``scores.json`` holds the same) with ``run_dir``, the run
    directory's absolute path, added. With ``evaluate=false`` only ``run_dir`` is there.
    Raises :class:`OverrideError` for an override that cannot be applied, before anything runs.
    """
    from xares.run.train import train as run_training

    return _run("train", "train", to_overrides(overrides), run_dir, config_dir, run_training)


def evaluate(
    ckpt_path: str | os.PathLike[str],
    overrides: Overrides = (),
    run_dir: str | os.PathLike[str] | None = None,
    *,
    config_dir: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Score a trained model, as ``python -m xares.evaluate ckpt_path=<ckpt_path>`` does.

    ``ckpt_path``: a ``.ckpt`` file, a run directory (its newest readable checkpoint, such as
    ``train(...)["run_dir"]``) or ``last``. The model comes from the checkpoint; the task
    defaults to the one it was trained on, and ``overrides`` (``task=...``,
    ``data.eval_limit=...``, ``generation.max_new_tokens=...``) change what is scored and how.
    ``run_dir`` defaults to a fresh ``outputs/eval/<date>_<time>_<pid>``. Returns the score
    summary with ``run_dir``, as :func:`train` does.
    """
    from xares.run.evaluate import evaluate as run_evaluation

    given = to_overrides(overrides)
    if any(_key(o) == "ckpt_path" for o in given):
        raise OverrideError(
            "ckpt_path is evaluate()'s first argument: remove it from the overrides"
        )
    checkpoint = f"ckpt_path={_format_value(os.fspath(ckpt_path), 'ckpt_path')}"
    return _run("eval", "evaluate", [checkpoint, *given], run_dir, config_dir, run_evaluation)


def to_overrides(overrides: Overrides) -> list[str]:
    """Hydra override strings from a list of them, or from a dict of keys and Python values.

    A dict key is written as it would be on the command line (``trainer.max_steps``,
    ``+encoder.name_or_path``, ``~callbacks.lr_monitor``, ``encoder``); its value becomes
    the Hydra literal that reads back as the same Python value: ``None`` → ``null``,
    ``True`` → ``true``, lists → ``[a,b]``, dicts → ``{k:v}``, and strings are quoted when
    they would otherwise read as something else (``"42"``, ``"true"``, ``"a,b"``, a path
    with ``=``). A ``~key`` whose value is ``None`` deletes the key, whatever its value.
    """
    if isinstance(overrides, str):
        raise TypeError(
            f"overrides must be a list of strings or a dict, not the string {overrides!r}: "
            f"write [{overrides!r}]"
        )
    if isinstance(overrides, Mapping):
        out = []
        for key, value in overrides.items():
            if not isinstance(key, str) or not key:
                raise OverrideError(f"override keys must be non-empty strings, got {key!r}")
            if key.startswith("~") and value is None:
                out.append(key)
            else:
                out.append(f"{key}={_format_value(value, key)}")
    else:
        out = list(overrides)
        for item in out:
            if not isinstance(item, str):
                raise TypeError(
                    f"overrides must be strings such as 'encoder=mel', got {item!r}; "
                    "pass a dict to give Python values"
                )
    for item in out:
        _parse(item)
    return out


def _format_value(value: Any, key: str) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        # repr gives the shortest text that reads back as the same float (inf, nan included).
        return repr(value)
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if isinstance(value, str):
        return _format_string(value)
    if isinstance(value, Mapping):
        items = []
        for name, item in value.items():
            if not isinstance(name, str) or not PLAIN_KEY.fullmatch(name):
                raise OverrideError(
                    f"{key}: the dict key {name!r} cannot be written as a Hydra override "
                    "(letters, digits, '_' and '-' only); set it as its own key instead: "
                    f"{{'{key}.<name>': value}}"
                )
            items.append(f"{name}:{_format_value(item, f'{key}.{name}')}")
        return "{" + ",".join(items) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_format_value(item, key) for item in value) + "]"
    raise OverrideError(
        f"{key}: a {type(value).__name__} cannot be written as a Hydra override; give a "
        "string, number, bool, None, list or dict"
    )


def _format_string(text: str) -> str:
    try:
        if _parse(f"k={text}", quiet=True).value() == text:
            return text  # reads back as itself: keep it readable (`encoder=mel`)
    except HydraException:
        pass
    # Inside quotes only a quote, and backslashes before a quote or at the end, are escaped.
    escaped = re.sub(r"(\\+)(?='|$)", lambda m: m.group(1) * 2, text).replace("'", "\\'")
    return f"'{escaped}'"


def _parse(override: str, quiet: bool = False) -> Override:
    try:
        return OverridesParser.create().parse_override(override)
    except HydraException as error:
        if quiet:
            raise
        raise OverrideError(f"override {override!r} is not valid Hydra syntax: {error}") from None


def _key(override: str) -> str:
    return _parse(override).key_or_group


@contextmanager
def _own_hydra_state() -> Iterator[None]:
    """Run with Hydra's singletons fresh, and give the caller back exactly the ones it had.

    The objects themselves are set aside (not copies), so a caller's initialised GlobalHydra
    or HydraConfig is the same object afterwards, and a caller that had none has none.
    """
    saved = {c: Singleton._instances.pop(c) for c in HYDRA_SINGLETONS if c in Singleton._instances}
    try:
        yield
    finally:
        for cls in HYDRA_SINGLETONS:
            Singleton._instances.pop(cls, None)
        Singleton._instances.update(saved)  # type: ignore[arg-type]


def _run(
    config_name: str,
    job_name: str,
    overrides: list[str],
    run_dir: str | os.PathLike[str] | None,
    config_dir: str | os.PathLike[str] | None,
    job: Callable[[DictConfig], dict[str, Any]],
) -> dict[str, Any]:
    named = [o for o in overrides if _key(o) in RUN_DIR_KEYS]
    if run_dir is not None and named:
        raise OverrideError(
            f"the run directory is given twice: run_dir={os.fspath(run_dir)!r} and "
            f"{', '.join(named)}; keep one"
        )
    if config_dir is not None:
        if any(_key(o) == "hydra.searchpath" for o in overrides):
            raise OverrideError("give extra configs either as config_dir or hydra.searchpath")
        folder = Path(config_dir).expanduser().absolute()
        if not folder.is_dir():
            raise FileNotFoundError(f"config_dir {folder} is not a directory")
        # First, so that every prefix of the overrides (see _explain) searches it too.
        overrides = [f"hydra.searchpath={_format_value([f'file://{folder}'], '')}", *overrides]

    with _own_hydra_state():
        cfg = _compose(config_name, job_name, overrides)
        with read_write(cfg.hydra), open_dict(cfg.hydra):
            cfg.hydra.mode = RunMode.RUN
        # The run-directory pattern reads the chosen options through ${hydra:...}.
        HydraConfig.instance().set_config(cfg)
        explicit = run_dir is not None or bool(named)
        chosen = _absolute(run_dir if run_dir is not None else cfg.hydra.run.dir)
        if not explicit:
            chosen = _unused(chosen)
        with read_write(cfg.hydra), open_dict(cfg.hydra):
            cfg.hydra.run.dir = str(chosen)
            # What @hydra.main sets before the job starts; compose leaves it empty, and
            # ${paths.output_dir} would then become the folder `None`.
            cfg.hydra.runtime.output_dir = str(chosen)
        HydraConfig.instance().set_config(cfg)

        # The job gets the config without its hydra node, as under @hydra.main.
        job_cfg = copy.deepcopy(cfg)
        with read_write(job_cfg), open_dict(job_cfg):
            del job_cfg["hydra"]
        out = _absolute(job_cfg.paths.output_dir)
        # Claimed here, as the job will claim it, so that `.hydra/` never lands in another
        # run's folder.
        continuing = config_name == "train" and _inside(job_cfg.get("ckpt_path"), out)
        if not continuing:
            _refuse_reuse_in_this_process(out)
        claim_run_dir(out, continuing=continuing)
        _save_hydra_files(cfg, job_cfg, out)
        with env_override(dict(cfg.hydra.job.env_set or {})):
            summary = job(job_cfg)
    return {**(summary or {}), "run_dir": str(out)}


def _compose(config_name: str, job_name: str, overrides: list[str]) -> DictConfig:
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3", job_name=job_name):
        try:
            return compose(config_name, overrides=overrides, return_hydra_config=True)
        except (HydraException, OmegaConfBaseException, ValueError) as error:
            raise _explain(config_name, overrides, error) from error


def _explain(config_name: str, overrides: list[str], error: Exception) -> Exception:
    """Name the first override the config refuses, with what it offers instead.

    Hydra's messages do not always name the override (``debug=null``), and one that names a
    missing key says nothing of the keys that exist. Composing with ever longer prefixes of
    the overrides finds the first one that fails, and the config just before it has the keys.
    """
    previous: DictConfig | None = None
    for i, override in enumerate([None, *overrides]):
        try:
            current = compose(config_name, overrides=overrides[:i], return_hydra_config=True)
        except (HydraException, OmegaConfBaseException, ValueError) as failure:
            if override is None or previous is None:
                return error  # the config itself fails, whatever the overrides
            return OverrideError(
                f"override {override!r} cannot be applied to {config_name}.yaml: "
                f"{failure}{_hint(override, previous)}"
            )
        previous = current
    return error


def _hint(override: str, cfg: DictConfig) -> str:
    parsed = _parse(override)
    key = parsed.key_or_group
    options = GlobalHydra.instance().config_loader().get_group_options(key)
    if options:
        if parsed.type == OverrideType.CHANGE and parsed.value() is None:
            return f"\nTo drop the default of the config group '{key}', write '~{key}'"
        return ""  # Hydra's message lists the group's options already
    parent, _, leaf = key.rpartition(".")
    node = OmegaConf.select(cfg, parent) if parent else cfg
    if not isinstance(node, DictConfig) or leaf in node:
        return ""
    where = f"'{parent}'" if parent else "the top level"
    keys = "".join(f"\n\t{k!s}" for k in node if k != "hydra")
    return f"\nAvailable keys in {where}:{keys}"


def _absolute(path: Any) -> Path:
    return Path(os.path.abspath(os.path.expanduser(str(path))))


def _inside(ckpt_path: Any, run_dir: Path) -> bool:
    """Whether a training resumes from a checkpoint in its own folder (finishing that run)."""
    if not ckpt_path or str(ckpt_path) == "last":
        return False
    path, folder = Path(str(ckpt_path)).expanduser().resolve(), run_dir.resolve()
    return path == folder or folder in path.parents


def _unused(path: Path) -> Path:
    """``path``, or ``path-2``, ``path-3``, ...: a second call in the same second (or in the
    same SLURM job, whose id names the folder) would otherwise reuse the first one's folder."""
    candidate, n = path, 1
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.name}-{n}")
    return candidate


def _refuse_reuse_in_this_process(path: Path) -> None:
    """Keep a second call out of a folder whose results an earlier call of this process left.

    ``claim_run_dir`` tells runs apart by process, which a notebook's runs share; the CLI
    refuses such a folder because its next run is another process. Finishing an interrupted
    run in its own folder (``ckpt_path`` inside it) is not refused, as with the CLI.
    """
    try:
        owner = json.loads((path / CLAIM).read_text())
    except (OSError, ValueError):
        return
    if not isinstance(owner, dict) or owner.get("pid") != os.getpid():
        return
    results = sorted(str(p.relative_to(path)) for pat in RESULT_PATTERNS for p in path.glob(pat))
    if results:
        raise RunDirError(
            f"run directory {path} holds the results of an earlier run in this process "
            f"({', '.join(results[:4])}). Writing here would overwrite them: pass another "
            "run_dir, or run_dir=None for a fresh folder."
        )


def _save_hydra_files(cfg: DictConfig, job_cfg: DictConfig, out: Path) -> None:
    """``.hydra/`` as the CLI writes it: the config, Hydra's config and the overrides."""
    subdir = cfg.hydra.output_subdir
    if subdir is None:
        return
    folder = out / str(subdir)
    folder.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(job_cfg, folder / HYDRA_CONFIG)
    OmegaConf.save(HydraConfig.instance().cfg, folder / HYDRA_SETTINGS)
    OmegaConf.save(cfg.hydra.overrides.task, folder / HYDRA_OVERRIDES)

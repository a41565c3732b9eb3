"""Load a user's encoder from a ``.py`` file or a dotted ``pkg.module.Class`` path."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn


class EncoderLoadError(ImportError):
    """The encoder named by ``encoder.path`` cannot be found or built."""


def _pick_class(module: Any, origin: str, class_name: str | None) -> type:
    if class_name:
        cls = getattr(module, class_name, None)
        if cls is None:
            raise EncoderLoadError(f"{origin} defines no `{class_name}`")
        return cls
    # The challenge convention: the file's encoder is the one class whose name ends in "Encoder".
    candidates = [
        obj
        for name, obj in vars(module).items()
        if inspect.isclass(obj)
        and name.endswith("Encoder")
        and obj.__module__ == module.__name__
        and issubclass(obj, nn.Module)
    ]
    if len(candidates) == 1:
        return candidates[0]
    found = ", ".join(c.__name__ for c in candidates) or "none"
    raise EncoderLoadError(
        f"{origin} must define exactly one nn.Module class whose name ends in 'Encoder' "
        f"(found: {found}). Name the class explicitly: encoder.path={origin}:ClassName"
    )


def import_encoder_class(path: str) -> type:
    """Resolve ``path`` (``file.py``, ``file.py:Class``, ``pkg.mod.Class`` or ``pkg.mod:Class``)."""
    if not path:
        raise EncoderLoadError(
            "encoder=custom needs encoder.path=<file.py or pkg.module.Class>, e.g. "
            "`python train.py encoder=custom encoder.path=my_encoder.py`"
        )
    target, _, class_name = path.partition(":")
    if target.endswith(".py"):
        file = Path(target).expanduser()
        if not file.is_absolute():
            from hydra.utils import get_original_cwd

            try:
                file = Path(get_original_cwd()) / file
            except ValueError:  # not under a Hydra run: relative to the process cwd
                file = file.resolve()
        if not file.is_file():
            raise EncoderLoadError(f"encoder file not found: {file}")
        module_name = f"xares_user_encoder_{file.stem}"
        spec = importlib.util.spec_from_file_location(module_name, file)
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        # The file's own folder must be importable for its sibling imports, as when run directly.
        sys.path.insert(0, str(file.parent))
        try:
            spec.loader.exec_module(module)
        except Exception as error:
            raise EncoderLoadError(f"importing {file} failed: {error}") from error
        finally:
            sys.path.remove(str(file.parent))
        return _pick_class(module, str(file), class_name or None)
    if class_name:
        module = importlib.import_module(target)
        return _pick_class(module, target, class_name)
    module_path, _, attr = target.rpartition(".")
    if module_path:
        try:
            module = importlib.import_module(module_path)
            if hasattr(module, attr) and inspect.isclass(getattr(module, attr)):
                return getattr(module, attr)
        except ImportError:
            pass
    try:
        module = importlib.import_module(target)
    except ImportError as error:
        raise EncoderLoadError(
            f"cannot import encoder '{path}': {error}. Give a .py file or an importable "
            "pkg.module.Class"
        ) from error
    return _pick_class(module, target, None)


def load_encoder(path: str, kwargs: Mapping[str, Any] | None = None) -> nn.Module:
    """Build the user's encoder class with ``kwargs`` (Hydra target of ``encoder=custom``)."""
    cls = import_encoder_class(path)
    kwargs = dict(kwargs or {})
    try:
        return cls(**kwargs)
    except TypeError as error:
        raise EncoderLoadError(
            f"{cls.__name__}(**{kwargs}) failed: {error}. Pass constructor arguments with "
            "+encoder.kwargs.<name>=<value> (`+`: encoder.kwargs starts empty)"
        ) from error

"""Checkpoints: find them (``ckpt_path``), read them, check them against the run, load them.

An xares checkpoint holds only the trainable tensors (projector + LoRA) and the resolved
config of the run that wrote it. Those tensors fit only the encoder and decoder they were
trained with, so a run compares its model config with the saved one before loading.

Every checkpoint is plain data (tensors, numbers, strings, lists, dicts) and is opened with
``torch.load(weights_only=True)``, Lightning's resume included, so opening one never runs code
from the file. It carries a SHA-256 of everything in it (``xares_digest``: every tensor's bytes,
the config, the loop, optimizer and scheduler states), checked on every load: a flipped bit
still unpickles, and would silently change the weights a run scores or continues from.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import enum
import errno
import hashlib
import logging
import os
import pickle
import re
import shutil
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path, PurePath
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from xares.layout import CHECKPOINT_GLOB, CHECKPOINTS, LAST_CHECKPOINT
from xares.training.module import AudioLLMModule

log = logging.getLogger(__name__)

# The config sections that decide which tensors a checkpoint holds and what they mean.
MODEL_SECTIONS = ("encoder", "projector", "llm")
# Where weights live, not what they are: compared by file or repository name only, so a
# model moved to a local copy (`encoder.name_or_path=/models/dasheng-base`) still matches.
LOCATION_KEYS = frozenset({"name_or_path", "checkpoint", "path", "filename"})
IGNORED_KEYS = frozenset({"cache_dir"})
# The checksum of a checkpoint's other entries, stored beside them.
DIGEST_KEY = "xares_digest"


_RETRY = (
    "Delete it, or pass another file, or the run directory: a directory (and "
    "ckpt_path=last) gives its newest readable checkpoint."
)
_CONVERT = "python -m xares.training.checkpoint --convert"


class CheckpointError(RuntimeError):
    """A checkpoint cannot be used: unreadable, not an xares checkpoint, or for another model."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint that only loads by running code from the file: refused, never skipped.

    Unlike a damaged file, it is not passed over for an older checkpoint: someone has to
    decide whether to trust it (and convert it) or delete it.
    """


class CheckpointWriteError(OSError, CheckpointError):
    """A checkpoint could not be written; the message names the file, the cause and the fix.

    An ``OSError`` (``errno`` is ``ENOSPC``, ``EACCES``, ... or ``None`` when the cause is not a
    system error), so a caller can catch it as one and still keep what the run computed.
    Constructed like ``OSError``: ``CheckpointWriteError(errno, message, path)``.
    """

    def __str__(self) -> str:
        return str(self.strerror)


# What ``torch.load(weights_only=True)`` rebuilds without help (exact types: a subclass of
# dict or tuple is a class the loader refuses), and so what a checkpoint may hold.
_LEAVES = (str, bytes, bytearray, int, float, complex, bool, type(None), torch.dtype, torch.device)
_MAPPINGS = (dict, collections.OrderedDict, collections.Counter)
_SEQUENCES = (list, tuple, torch.Size)
_TENSORS = (torch.Tensor, torch.nn.Parameter)


class _Digest:
    """SHA-256 of a checkpoint's plain data, independent of how it was pickled.

    Mapping keys are sorted, so the digest does not depend on insertion order; every value is
    tagged with its kind and length, so no two different structures feed the same bytes.
    Entries that are not plain data are collected in ``problems`` (``where: type``).
    """

    def __init__(self) -> None:
        self.sha = hashlib.sha256()
        self.tensor_bytes = 0
        self.problems: list[str] = []
        self._allowed = {g[0] if isinstance(g, tuple) else g for g in _safe_globals()}

    def _tag(self, kind: bytes, text: str) -> None:
        data = text.encode()
        self.sha.update(kind + str(len(data)).encode() + b":" + data)

    def feed(self, value: Any, where: str) -> None:
        kind = type(value)
        if kind in _TENSORS:
            self._tensor(value, where)
        elif kind in _MAPPINGS:
            self._tag(b"{", str(len(value)))
            for key in sorted(value, key=_key_order):
                inner = f"{where}[{key!r}]"
                self.feed(key, inner)
                self.feed(value[key], inner)
        elif kind in _SEQUENCES:
            self._tag(b"[", str(len(value)))
            for index, item in enumerate(value):
                self.feed(item, f"{where}[{index}]")
        elif kind is set:
            self._tag(b"<", str(len(value)))
            for item in sorted(value, key=_key_order):
                self.feed(item, f"{where}{{...}}")
        elif kind in _LEAVES or kind in self._allowed:
            self._tag(b"=", f"{kind.__name__}:{value!r}")
        else:
            self.problems.append(f"{where or '(the checkpoint)'}: {_type_name(kind)}")

    def _tensor(self, tensor: torch.Tensor, where: str) -> None:
        if tensor.is_meta:
            self.problems.append(f"{where}: a tensor on the meta device (no data)")
            return
        flat = tensor.detach()
        if flat.layout != torch.strided:
            flat = flat.to_dense()
        flat = flat.to("cpu").contiguous().reshape(-1)
        self._tag(b"T", f"{tensor.dtype}:{tuple(tensor.shape)}")
        self.sha.update(memoryview(flat.view(torch.uint8).numpy()))  # type: ignore[arg-type]
        self.tensor_bytes += flat.numel() * flat.element_size()

    def hexdigest(self) -> str:
        return f"sha256:{self.sha.hexdigest()}"


def _safe_globals() -> list:
    # Whatever a project has allow-listed with torch.serialization.add_safe_globals loads too.
    return list(torch.serialization.get_safe_globals())


def _key_order(key: Any) -> tuple[str, str]:
    return type(key).__name__, repr(key)


def _type_name(kind: type) -> str:
    return (
        kind.__qualname__
        if kind.__module__ == "builtins"
        else f"{kind.__module__}.{kind.__qualname__}"
    )


def _digest(checkpoint: Mapping[str, Any]) -> _Digest:
    digest = _Digest()
    digest.feed({k: v for k, v in checkpoint.items() if k != DIGEST_KEY}, "")
    return digest


def checkpoint_digest(checkpoint: Mapping[str, Any]) -> str:
    """``sha256:<hex>`` of every entry of ``checkpoint`` but the stored digest itself."""
    return _digest(checkpoint).hexdigest()


def _refused(path: Any, error: Exception) -> UnsafeCheckpointError | None:
    """The refusal of a file that needs a global (code) to unpickle; ``None`` for other errors."""
    if not isinstance(error, pickle.UnpicklingError):
        return None
    needed = re.search(r"GLOBAL ([\w.]+)", str(error))
    if needed is None:  # a damaged pickle, not one that asks for code
        return None
    return UnsafeCheckpointError(
        f"checkpoint {path} was refused: opening it would run code from the file (unpickling "
        f"it calls {needed.group(1)}), and xares opens checkpoints only as plain data "
        "(tensors, numbers, strings, lists, dicts). A checkpoint xares writes never needs "
        "more; this one was written by other software, or altered. If you trust where it came "
        f"from, convert it once ({_CONVERT} {path}: that opens it with full unpickling, "
        "keeps the plain data and rewrites it with a checksum); otherwise delete it."
    )


def _load_plain(path: Path, map_location: Any = "cpu") -> Any:
    """``torch.load`` of a local file as plain data, with errors that name the file."""
    try:
        size = path.stat().st_size
    except OSError as error:
        raise CheckpointError(f"checkpoint {path} cannot be read: {error}") from error
    if size == 0:
        raise CheckpointError(
            f"checkpoint {path} is empty (0 bytes): a save was interrupted or the disk was "
            f"full. {_RETRY}"
        )
    try:
        # weights_only: the file is data, whoever wrote it; the explicit True also overrides
        # TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD, which would otherwise turn full unpickling back on.
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:
        refused = _refused(path, error)
        if refused is not None:
            # torch's own message recommends weights_only=False, the one thing not to do here.
            raise refused from None
        raise CheckpointError(
            f"checkpoint {path} ({size} bytes) is unreadable, probably truncated: "
            f"{type(error).__name__}: {str(error).rstrip('. ')}. {_RETRY}"
        ) from error


_UNSEALED_NOTED: set[str] = set()


def verify_digest(checkpoint: Mapping[str, Any], path: Any) -> None:
    """Check the stored checksum; ``CheckpointError`` naming the file when it does not match.

    A checkpoint written before xares stored checksums has none: it is used, with a note.
    """
    stored = checkpoint.get(DIGEST_KEY)
    if stored is None:
        if str(path) not in _UNSEALED_NOTED:
            _UNSEALED_NOTED.add(str(path))
            log.info(
                "checkpoint %s has no checksum (%s; written by an older xares), so damage to "
                "it cannot be detected; `%s %s` adds one",
                path,
                DIGEST_KEY,
                _CONVERT,
                path,
            )
        return
    actual = checkpoint_digest(checkpoint)
    if stored != actual:
        raise CheckpointError(
            f"checkpoint {path} is corrupt: its contents do not match the checksum written "
            f"with it ({DIGEST_KEY} {str(stored)[:23]}..., contents {actual[:23]}...), so it "
            f"was damaged or altered after it was written. {_RETRY}"
        )


def _read_verified(path: Path, map_location: Any = "cpu") -> dict[str, Any]:
    checkpoint = _load_plain(path, map_location)
    if not isinstance(checkpoint, dict):
        raise CheckpointError(
            f"{path} is not a checkpoint: it holds a {type(checkpoint).__name__}, not a dict"
        )
    verify_digest(checkpoint, path)
    return checkpoint


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint at ``path``, loaded as plain data and checked against its checksum.

    ``CheckpointError`` naming the file when it is unusable; ``UnsafeCheckpointError`` when it
    needs code to open.
    """
    path = Path(path)
    checkpoint = _read_verified(path)
    if "xares_config" not in checkpoint:
        raise CheckpointError(f"{path} is not an xares checkpoint (no saved config)")
    return checkpoint


def _newest_first(paths: Iterable[Path]) -> list[Path]:
    # At equal times last.ckpt wins: ModelCheckpoint writes it next to the step file.
    return sorted(
        set(paths), key=lambda p: (p.stat().st_mtime, p.name == LAST_CHECKPOINT), reverse=True
    )


def _first_readable(candidates: list[Path], what: str) -> tuple[str, dict[str, Any]]:
    errors = []
    for candidate in candidates:
        try:
            checkpoint = read_checkpoint(candidate)
        except UnsafeCheckpointError:
            raise
        except CheckpointError as error:
            log.warning("skipping %s", error)
            errors.append(str(error))
            continue
        if errors:
            log.warning("%s: using %s, the newest readable checkpoint", what, candidate)
        return str(candidate), checkpoint
    if not candidates:
        raise FileNotFoundError(f"{what}: no checkpoint found")
    raise CheckpointError(
        f"{what}: none of the {len(candidates)} checkpoint(s) is readable:\n  "
        + "\n  ".join(errors)
    )


def resolve_checkpoint(
    value: str | None, runs: Path | None, here: Path | None = None
) -> tuple[str, dict[str, Any]] | None:
    """Find and read the checkpoint ``value`` names: a file, a run directory, or ``last``.

    A run directory gives its newest readable checkpoint (``last.ckpt`` first); ``last``
    the newest readable one of every run under ``runs`` (``<paths.log_dir>/<run_name>``: the
    runs of this name) other than this run (``here``).
    Returns the path and the checkpoint, or ``None`` when ``value`` is empty.
    """
    if not value:
        return None
    if value == "last":
        if runs is None:
            raise FileNotFoundError("ckpt_path=last: this run has no runs folder to look in")
        found = [
            *runs.glob(f"*/{CHECKPOINTS}/{CHECKPOINT_GLOB}"),
            *runs.glob(f"*/{CHECKPOINT_GLOB}"),
        ]
        if here is not None:
            found = [p for p in found if Path(here).resolve() not in p.resolve().parents]
        if not found:
            raise FileNotFoundError(
                f"ckpt_path=last: no checkpoint under {runs}/*/checkpoints/; give a "
                "checkpoint file or run directory instead"
            )
        return _first_readable(_newest_first(found), "ckpt_path=last")
    path = Path(value).expanduser()
    if path.is_dir():
        found = [*path.glob(f"{CHECKPOINTS}/{CHECKPOINT_GLOB}"), *path.glob(CHECKPOINT_GLOB)]
        if not found:
            raise FileNotFoundError(f"no checkpoint ({CHECKPOINT_GLOB}) in run directory {path}")
        return _first_readable(_newest_first(found), f"run directory {path}")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    return str(path), read_checkpoint(path)


def _comparable(node: Any, key: str = "") -> Any:
    if isinstance(node, Mapping):
        return {k: _comparable(v, str(k)) for k, v in sorted(node.items()) if k not in IGNORED_KEYS}
    if isinstance(node, (list, tuple)):
        return [_comparable(v) for v in node]
    if key in LOCATION_KEYS and isinstance(node, str):
        return Path(node.rstrip("/")).name
    return node


def _differences(saved: Any, now: Any, where: str) -> list[str]:
    if isinstance(saved, dict) and isinstance(now, dict):
        out = []
        for key in sorted(set(saved) | set(now), key=str):
            out += _differences(saved.get(key), now.get(key), f"{where}.{key}")
        return out
    return [] if saved == now else [f"{where}: checkpoint {saved!r}, this run {now!r}"]


def model_differences(saved: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    """How the model sections of two resolved configs differ (locations compared by name)."""
    out = []
    for section in MODEL_SECTIONS:
        out += _differences(
            _comparable(saved.get(section) or {}), _comparable(now.get(section) or {}), section
        )
    return out


def check_compatible(
    ckpt_path: str, checkpoint: Mapping[str, Any], now: Mapping[str, Any], allow: bool = False
) -> None:
    """Refuse a checkpoint trained with another encoder, projector or decoder (unless ``allow``).

    ``now`` is this run's resolved config, as plain data.
    """
    saved = checkpoint["xares_config"]
    differences = model_differences(saved, now)
    if not differences:
        return
    listed = "\n  ".join(differences[:12])
    message = (
        f"checkpoint {ckpt_path} (run {saved.get('run_name', '?')}) was trained with another "
        f"model than this run builds:\n  {listed}\n"
        "Its projector and LoRA weights only mean something for the encoder and decoder they "
        "were trained with. Use the checkpoint's own settings (drop the encoder/llm/projector "
        "overrides), or pass allow_ckpt_mismatch=true to load it anyway."
    )
    if allow:
        log.warning("%s\n(loading anyway: allow_ckpt_mismatch=true)", message)
        return
    raise CheckpointError(message)


def load_trainable(module: AudioLLMModule, ckpt_path: str, checkpoint: dict | None = None) -> None:
    """Load projector + LoRA weights; every trainable tensor must be in the checkpoint."""
    checkpoint = checkpoint or read_checkpoint(ckpt_path)
    state = checkpoint["state_dict"]
    own = module.state_dict()  # already only the trainable tensors (see AudioLLMModule)
    expected = set(own)
    saved_encoder = (checkpoint.get("xares_config") or {}).get("encoder", {}).get("_target_")
    now_encoder = type(module.model.encoder).__name__
    missing = sorted(expected - set(state))
    if missing:
        raise CheckpointError(
            f"{ckpt_path} lacks {len(missing)} trainable tensors (e.g. {missing[:3]}): it was "
            f"trained with encoder {saved_encoder} and this run builds {now_encoder}, or with "
            "another projector or LoRA setting"
        )
    wrong = [k for k in sorted(expected) if tuple(state[k].shape) != tuple(own[k].shape)]
    if wrong:
        shapes = ", ".join(
            f"{k}: checkpoint {tuple(state[k].shape)}, model {tuple(own[k].shape)}"
            for k in wrong[:3]
        )
        raise CheckpointError(
            f"{ckpt_path}: tensor shapes do not match ({shapes}); the checkpoint was trained "
            f"with encoder {saved_encoder} and this run builds {now_encoder}"
        )
    module.load_state_dict({k: state[k] for k in expected}, strict=False)
    module.load_training_record(checkpoint)
    log.info(
        "loaded %d trainable tensors from %s (step %s)",
        len(expected),
        ckpt_path,
        checkpoint.get("global_step"),
    )


class VerifiedCheckpointIO(TorchCheckpointIO):
    """Writes checkpoints as checksummed plain data, whole or not at all; reads them as data.

    A write goes to a temporary file beside the checkpoint, is synced and renamed into place;
    any failure (an ``OSError``, or the ``RuntimeError`` that ``torch.save`` raises when the
    disk fills up) removes the temporary file and raises one ``CheckpointWriteError`` that
    names the file, the cause and the fix. Lightning's default write goes through an fsspec
    transaction whose ``PermissionError`` it drops: with an unwritable ``checkpoints/`` a run
    went on, exited 0, and left an old ``last.ckpt`` behind.

    Lightning's resume (``trainer.fit(ckpt_path=...)``) reads through :meth:`load_checkpoint`,
    so a resumed run is held to the same rules as ``read_checkpoint``.
    """

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        sealed, size = seal(checkpoint, path)
        if "://" in str(path):  # remote storage: Lightning's own handling
            return super().save_checkpoint(sealed, path, storage_options)
        path = Path(path)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # Through a Python file, not a path: then a failed write chains the OSError (and its
            # errno) to torch's RuntimeError instead of losing it inside the C++ writer.
            with open(tmp, "wb") as file:
                torch.save(sealed, file)
                file.flush()
                _sync(file)
            os.replace(tmp, path)
        except (OSError, RuntimeError) as error:
            failure = _write_failure(path, error, size)
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise failure from error
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict[str, Any]:
        # weights_only is not the caller's choice here: a checkpoint is opened as data, always.
        if "://" in str(path):
            try:
                checkpoint = super().load_checkpoint(path, map_location, weights_only=True)
            except pickle.UnpicklingError as error:
                raise (_refused(path, error) or error) from None
            verify_digest(checkpoint, path)
            return checkpoint
        return _read_verified(Path(path), map_location or "cpu")


def _sync(file) -> None:
    # A rename that reaches the disk before the data would leave a torn checkpoint under the
    # final name after a power loss; fsync also surfaces late write errors (NFS, quotas). A
    # file system that cannot sync at all (some FUSE mounts) is no reason to fail the write.
    try:
        os.fsync(file.fileno())
    except OSError as error:
        if error.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise


def seal(checkpoint: Mapping[str, Any], path: Any = "") -> tuple[dict[str, Any], int]:
    """``checkpoint`` with its checksum under ``DIGEST_KEY``, and the bytes of its tensors.

    ``CheckpointWriteError`` when it holds something that is not plain data: written anyway,
    it would be a checkpoint that xares (rightly) refuses to open.
    """
    digest = _digest(checkpoint)
    if digest.problems:
        listed = "\n  ".join(digest.problems[:12])
        raise CheckpointWriteError(
            None,
            f"checkpoint {path} was not written: it would hold data that only loads by running "
            f"code, which xares refuses to open:\n  {listed}\nStore tensors, numbers, strings, "
            "lists and dicts only (OmegaConf.to_container(cfg, resolve=True) for a config, "
            "str(path) for a path) in on_save_checkpoint and in callbacks' state_dict.",
            str(path),
        )
    return {**checkpoint, DIGEST_KEY: digest.hexdigest()}, digest.tensor_bytes


# What to do about a failed write, by cause.
_NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
_NOT_ALLOWED = frozenset({errno.EACCES, errno.EPERM, errno.EROFS})


def _os_error(error: BaseException | None) -> OSError | None:
    """The first ``OSError`` with an errno in ``error``'s chain (torch wraps it in its own)."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno is not None:
            return error
        error = error.__cause__ or error.__context__
    return None


def _write_failure(path: Path, error: BaseException, size: int) -> CheckpointWriteError:
    found = _os_error(error)
    code = found.errno if found is not None else None
    detail = ""
    if code is None:
        # torch.save through a path reports a full disk only as "unexpected pos"; the free
        # space, read before the temporary file is removed, tells that case apart.
        with contextlib.suppress(OSError):
            free = shutil.disk_usage(path.parent).free
            if free < size:
                code = errno.ENOSPC
                detail = f" ({free} bytes free there, the checkpoint needs at least {size})"
    if code is not None:
        name = errno.errorcode.get(code, str(code))
        cause = f"{os.strerror(code).lower()} ({name}){detail}"
    else:
        cause = f"{type(error).__name__}: {str(error).strip()}"
    if code in _NO_SPACE:
        fix = f"Free space on the disk that holds {path.parent}, or point the run elsewhere"
    elif code in _NOT_ALLOWED:
        fix = f"Make {path.parent} writable, or point the run elsewhere"
    else:
        fix = f"Check that {path.parent} is writable and has room, or point the run elsewhere"
    return CheckpointWriteError(
        code,
        f"could not write checkpoint {path}: {cause}. {fix} (hydra.run.dir=... or "
        "paths.log_dir=...); this run's progress past its last saved checkpoint cannot be kept.",
        str(path),
    )


def check_writable(directory: str | Path) -> None:
    """Fail now, not at the first save, when checkpoints cannot be written to ``directory``."""
    directory = Path(directory)
    probe = directory / f".write-test-{os.getpid()}"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"xares")
        probe.unlink()
    except OSError as error:
        raise CheckpointError(
            f"checkpoints cannot be written to {directory}: {error}. Make it writable, or "
            "point the run elsewhere (hydra.run.dir=... or paths.log_dir=...)."
        ) from error


def _to_plain(value: Any, where: str = "") -> Any:
    """A copy of a trusted checkpoint's contents in the types a weights-only load rebuilds."""
    if isinstance(value, torch.Tensor):
        plain = value.detach()
        return plain if type(plain) is torch.Tensor else plain.as_subclass(torch.Tensor)
    if isinstance(value, enum.Enum):
        return _to_plain(value.value, where)
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, argparse.Namespace):
        value = vars(value)
    if isinstance(value, Mapping):
        return {k: _to_plain(v, f"{where}[{k!r}]") for k, v in value.items()}
    # Config nodes pickled by older versions are mappings and sequences too (their items are
    # resolved on reading), so they become plain dicts and lists here.
    if isinstance(value, (list, tuple, set, frozenset)) or (
        isinstance(value, Sequence) and not isinstance(value, (str, bytes))
    ):
        items = [_to_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if isinstance(value, tuple) else items
    if type(value) in _LEAVES:
        return value
    if isinstance(value, _LEAVES):  # a subclass of str, int, float: its plain value
        for base in _LEAVES:
            if isinstance(value, base):
                return base(value)  # type: ignore[call-arg, arg-type]
    raise CheckpointError(
        f"{where or 'the checkpoint'} holds a {_type_name(type(value))}, which has no plain-data "
        "form; remove that entry from the checkpoint (torch.load it, delete the key, torch.save "
        f"it) and run {_CONVERT} again"
    )


def convert(source: str | Path, target: str | Path | None = None) -> Path:
    """Rewrite a trusted checkpoint as checksummed plain data (in place unless ``target``).

    Opens ``source`` with full unpickling, which runs whatever code the file asks for: only for
    a file whose origin you trust. The result opens with ``torch.load(weights_only=True)``.
    """
    source = Path(source)
    target = Path(target) if target is not None else source
    checkpoint = torch.load(source, map_location="cpu", weights_only=False)
    if not isinstance(checkpoint, Mapping):
        raise CheckpointError(f"{source} holds a {type(checkpoint).__name__}, not a checkpoint")
    plain = _to_plain({k: v for k, v in checkpoint.items() if k != DIGEST_KEY})
    VerifiedCheckpointIO().save_checkpoint(plain, target)
    _read_verified(target)  # it opens the way xares opens it
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m xares.training.checkpoint",
        description="Rewrite a checkpoint you trust as plain data with a checksum, so xares "
        "opens it without running code from it (and detects later damage).",
    )
    parser.add_argument(
        "--convert",
        metavar="CKPT",
        required=True,
        help="the checkpoint to convert; opening it runs any code it holds, so only a file "
        "whose origin you trust",
    )
    parser.add_argument(
        "--output", metavar="PATH", help="where to write the result (default: rewrite CKPT)"
    )
    args = parser.parse_args(argv)
    try:
        target = convert(args.convert, args.output)
    except (CheckpointError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"wrote {target}: plain data with a checksum; xares opens it without running code")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

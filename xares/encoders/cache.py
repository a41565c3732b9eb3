"""A cache of frozen-encoder features, keyed by clip content and encoder identity.

The encoder is frozen and (for the encoders xares ships) batch-invariant: a clip's features do
not depend on the step, the seed, the LoRA weights or the other clips of its batch. Computing
them once and reusing them across steps, epochs, runs that change only the decoder, and
evaluation removes the encoder from the cost of every step after the first epoch.

Keys:

* :func:`clip_id` digests a clip's valid samples (computed in the data-loader workers, on CPU).
  Randomly cropped clips must pass ``None``: their samples change every epoch.
* :func:`encoder_fingerprint` digests the encoder's class, config, sample rate and weights.
* :class:`FeatureCache` adds the numerics the features were computed under (device type and
  name, autocast dtype, float32 matmul precision, torch version, storage dtype), so features
  computed on a GPU under bf16 autocast are never served to a float32 CPU run, and vice versa.

Storage: an LRU in CPU memory bounded by ``memory_gb``, and optionally files on disk,
``<directory>/<context[:16]>/<id[:2]>/<id>.pt``. One folder per encoder-and-numerics context
means one ``rm -r`` drops an encoder's features (a ``context.json`` inside says what it holds);
the two-character fan-out keeps folders small (256 of them) for suites with many clips. Files
are written to a temporary name in the same folder and renamed into place, so a killed writer
never leaves a file that looks complete and processes sharing the folder (DDP ranks, concurrent
runs) each read either nothing or a whole file. Each file also records its clip id, full context
and the SHA-256 of its features, and is checked on load: an unreadable file, one for another
clip or context, or one whose features no longer match their checksum (a flipped bit on disk
still unpickles, and would feed wrong features to every later run) is reported, re-encoded and
rewritten.

Exactness: a hit returns exactly what the clip's miss returned. For an encoder whose features
do not depend on the batch (:func:`batch_variation` returns 0.0: ``mel``, ``dummy``) that is
also exactly what the uncached path returns in any batch; for the transformer encoders the
uncached path itself varies with the batch's padding at float rounding level (about 1e-6 for
whisper-base and dasheng-base in float32), and the cache fixes each clip at its first batch.

The cache is not thread-safe; it belongs to the process that runs the encoder.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)

# Bump when the meaning of a key or the file format changes: old entries then simply miss.
# 2: each file carries the SHA-256 of its features.
FORMAT = "xares-feature-cache/2"
_GIB = 1 << 30
# Ids that are already safe, fixed-size file names (what clip_id returns); anything else is
# hashed into one, and the original id is checked against the one stored in the file.
_SAFE_ID = re.compile(r"[0-9a-f]{16,128}")

EncodeFn = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def clip_id(samples: torch.Tensor) -> str:
    """Content digest of one clip's valid samples (a 1-D tensor on CPU), as 40 hex characters.

    Length and dtype are part of the digest, so a clip and its zero-extended copy, or the same
    values in another precision, get different ids. Costs about a millisecond for 10 s of
    16 kHz float32 audio, which is why it runs in the data-loader workers.
    """
    if not isinstance(samples, torch.Tensor):
        raise TypeError(f"clip_id takes a torch.Tensor, got {type(samples).__name__}")
    if samples.device.type != "cpu":
        # Reading a device tensor here would copy and synchronise on every clip.
        raise ValueError(
            f"clip_id takes a CPU tensor, got one on {samples.device}; compute it in the "
            "collate function, before the batch is moved to the accelerator"
        )
    if samples.dim() != 1:
        raise ValueError(
            f"clip_id takes one clip's samples as a 1-D tensor, got shape {tuple(samples.shape)}"
        )
    data = samples.detach().contiguous()
    digest = hashlib.blake2b(digest_size=20)
    digest.update(f"{data.dtype}:{data.numel()}:".encode())
    digest.update(memoryview(data.view(torch.uint8).numpy()))  # type: ignore[arg-type]
    return digest.hexdigest()


def _canonical(value: Any) -> Any:
    """A JSON-serialisable copy of a config value with a stable key order (config nodes included: any mapping or sequence)."""
    if isinstance(value, Mapping):
        return {str(key): _canonical(value[key]) for key in sorted(value, key=str)}
    if isinstance(value, (list, tuple)) or (
        isinstance(value, Sequence) and not isinstance(value, (str, bytes))
    ):
        return [_canonical(item) for item in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)


def _tensor_bytes(tensor: torch.Tensor) -> memoryview:
    if tensor.is_meta:
        raise ValueError("cannot fingerprint an encoder whose weights are on the meta device")
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy())  # type: ignore[arg-type]


def features_checksum(features: torch.Tensor) -> str:
    """SHA-256 of a feature tensor's dtype, shape and bytes, as 64 hex characters."""
    digest = hashlib.sha256(f"{features.dtype}:{tuple(features.shape)}:".encode())
    digest.update(_tensor_bytes(features))
    return digest.hexdigest()


def encoder_fingerprint(
    encoder: nn.Module, config: Mapping | None = None, *, sample_rate: int
) -> str:
    """Identity of an encoder's computation, as 64 hex characters.

    Digests the class (module and qualname), ``config`` (sorted, as JSON), the sample rate, and
    every parameter and buffer, non-persistent buffers included (name, shape, dtype, bytes).
    Two encoders with the same weights and config share cached features; change one weight
    and they don't. Anything else that changes the computation (an option stored as a plain
    attribute) must be in ``config``. Hashes every weight once: about 0.3 s for a base-sized
    model on one core.
    """
    if not isinstance(encoder, nn.Module):
        raise TypeError(f"encoder_fingerprint takes an nn.Module, got {type(encoder).__name__}")
    cls = type(encoder)
    digest = hashlib.blake2b(digest_size=32)
    header = {
        "format": FORMAT,
        "class": f"{cls.__module__}.{cls.__qualname__}",
        "config": _canonical(dict(config) if config is not None else {}),
        "sample_rate": int(sample_rate),
    }
    digest.update(json.dumps(header, sort_keys=True).encode())
    tensors: list[tuple[str, str, torch.Tensor]]
    tensors = [("parameter", name, t) for name, t in encoder.named_parameters()]
    tensors += [("buffer", name, t) for name, t in encoder.named_buffers()]
    for kind, name, tensor in sorted(tensors, key=lambda item: (item[0], item[1])):
        digest.update(f"\n{kind}:{name}:{tuple(tensor.shape)}:{tensor.dtype}\n".encode())
        digest.update(_tensor_bytes(tensor))
    return digest.hexdigest()


def batch_variation(
    encode_fn: EncodeFn,
    *,
    sample_rate: int,
    seconds: Sequence[float] = (1.0, 2.3, 0.6),
    device: torch.device | str = "cpu",
) -> float:
    """Largest difference between clips' features encoded alone and together in a padded batch.

    ``0.0`` means the encoder is bitwise batch-invariant, so cached features equal uncached
    ones whatever the batch; ``inf`` means a clip's frame count changed with the batch.
    """
    generator = torch.Generator().manual_seed(0)
    clips = [torch.randn(int(s * sample_rate), generator=generator) * 0.1 for s in seconds]
    lengths = torch.tensor([len(clip) for clip in clips])
    audio = torch.zeros(len(clips), int(lengths.max()) + sample_rate // 10)  # extra padding too
    for row, clip in enumerate(clips):
        audio[row, : len(clip)] = clip
    mask = (torch.arange(audio.shape[1])[None, :] < lengths[:, None]).long()
    with torch.no_grad():
        batched, batched_mask = encode_fn(audio.to(device), mask.to(device))
        worst = 0.0
        for row, clip in enumerate(clips):
            alone, alone_mask = encode_fn(
                clip[None].to(device), torch.ones(1, len(clip), dtype=torch.long, device=device)
            )
            frames = int(alone_mask.sum())
            if int(batched_mask[row].sum()) != frames:
                return float("inf")
            difference = batched[row, :frames].float() - alone[0, :frames].float()
            worst = max(worst, float(difference.abs().max()) if frames else 0.0)
    return worst


class FeatureCache:
    """Encoder features per clip, in a byte-bounded CPU LRU and optionally on disk.

    ``memory_gb`` bounds the bytes of the stored tensors in GiB (0 keeps nothing in memory);
    ``directory`` enables the disk level; ``dtype=None`` stores exactly what the encoder
    returned, ``torch.float16`` halves memory and disk at the cost of rounding (then a batch with
    any clip id comes back wholly in that dtype, bypassed rows included, so hits equal misses).
    """

    def __init__(
        self,
        fingerprint: str,
        *,
        memory_gb: float = 4.0,
        directory: str | Path | None = None,
        dtype: torch.dtype | None = None,
    ):
        if not isinstance(fingerprint, str) or not fingerprint:
            raise ValueError("FeatureCache needs the encoder's fingerprint (encoder_fingerprint)")
        if memory_gb < 0:
            raise ValueError(f"memory_gb must be >= 0, got {memory_gb}")
        if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise ValueError(f"dtype must be None or a floating torch.dtype, got {dtype!r}")
        self.fingerprint = fingerprint
        self.memory_limit = int(memory_gb * _GIB)
        self.directory = Path(directory).expanduser() if directory is not None else None
        self.dtype = dtype
        self._memory: OrderedDict[tuple[str, str], torch.Tensor] = OrderedDict()
        self._memory_bytes = 0
        self._contexts: dict[tuple, str] = {}
        self._device_names: dict[torch.device, str] = {}
        self._written_context: set[str] = set()
        self._reported: set[str] = set()  # paths already logged as unreadable or unwritable
        self._counts = dict.fromkeys(
            ("hits", "misses", "bypassed", "evictions", "disk_reads", "disk_writes", "disk_errors"),
            0,
        )
        log.info(
            "feature cache: encoder %s, memory %.2f GiB, disk %s, stored as %s",
            fingerprint[:16],
            memory_gb,
            self.directory or "off",
            str(dtype).replace("torch.", "") if dtype else "the encoder's dtype",
        )

    # ------------------------------------------------------------------ public
    @property
    def stats(self) -> dict[str, int]:
        """Counters since creation (rows, not batches) and the memory level's current size."""
        return {
            **self._counts,
            "memory_entries": len(self._memory),
            "memory_bytes": self._memory_bytes,
            "memory_limit_bytes": self.memory_limit,
        }

    def clear_memory(self) -> None:
        """Drop the in-memory level (files on disk stay)."""
        self._memory.clear()
        self._memory_bytes = 0

    def encode(
        self,
        encode_fn: EncodeFn,
        audio: torch.Tensor,
        audio_mask: torch.Tensor | None,
        clip_ids: Sequence[str | None] | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Features ``[B, N_max, D]`` on ``audio``'s device and their frame mask ``[B, N_max]``.

        ``encode_fn(audio [b, T'], mask [b, T'])`` must return contract-normalised
        ``(features [b, N, D], frame_mask [b, N] long)`` with prefix masks. Rows whose id is
        ``None`` bypass the cache; the rows to encode (misses and bypassed rows, each distinct
        clip once) go to ``encode_fn`` in one call, trimmed to the longest of them. ``N_max``
        is the longest valid row; padding is zero. Without ids this is ``encode_fn`` itself.
        """
        if clip_ids is None or all(cid is None for cid in clip_ids):
            return encode_fn(audio, audio_mask)
        batch = audio.shape[0]
        if len(clip_ids) != batch:
            raise ValueError(f"{len(clip_ids)} clip ids for a batch of {batch} clips")
        context = self._context(audio.device)
        rows: list[torch.Tensor | None] = [None] * batch
        to_encode: list[int] = []
        first_row: dict[str, int] = {}  # a clip that appears twice in the batch is encoded once
        for index, cid in enumerate(clip_ids):
            if cid is None:
                to_encode.append(index)
                self._counts["bypassed"] += 1
            elif cid in first_row:
                self._counts["hits"] += 1
            else:
                first_row[cid] = index
                rows[index] = self._lookup(context, cid)
                if rows[index] is None:
                    to_encode.append(index)
                    self._counts["misses"] += 1
                else:
                    self._counts["hits"] += 1
        if to_encode:
            encoded = self._encode_rows(encode_fn, audio, audio_mask, to_encode)
            for index, row in zip(to_encode, encoded):
                rows[index] = row
                cid = clip_ids[index]
                if cid is not None:
                    self._store(context, cid, row)
        for index, cid in enumerate(clip_ids):
            if rows[index] is None:  # a repeat of a clip looked up or encoded above
                rows[index] = rows[first_row[cid]]
        return self._assemble(rows, audio.device)

    # ------------------------------------------------------------------ internals
    def _context(self, device: torch.device) -> str:
        """The fingerprint plus the numerics features are computed under on ``device``.

        Kept as a digest per distinct setting so the per-batch cost is a dict lookup.
        """
        kind = device.type
        try:
            autocast = torch.is_autocast_enabled(kind)
        except RuntimeError:  # a device type autocast does not know: it cannot be enabled
            autocast = False
        setting = (
            device,
            autocast,
            torch.get_autocast_dtype(kind) if autocast else None,
            torch.get_float32_matmul_precision(),
            torch.backends.cudnn.allow_tf32 if kind == "cuda" else None,
        )
        context = self._contexts.get(setting)
        if context is None:
            description = {
                "format": FORMAT,
                "fingerprint": self.fingerprint,
                "device": kind,
                "device_name": self._device_name(device),
                "autocast": str(setting[2]) if autocast else None,
                "float32_matmul_precision": setting[3],
                "cudnn_allow_tf32": setting[4],
                "torch": torch.__version__,
                "stored_dtype": str(self.dtype) if self.dtype else None,
            }
            text = json.dumps(description, sort_keys=True)
            context = hashlib.blake2b(text.encode(), digest_size=32).hexdigest()
            self._contexts[setting] = context
            self._describe_folder(context, description)
        return context

    def _device_name(self, device: torch.device) -> str:
        name = self._device_names.get(device)
        if name is None:
            if device.type == "cuda":
                name = torch.cuda.get_device_name(device)
            else:
                name = device.type
            self._device_names[device] = name
        return name

    def _describe_folder(self, context: str, description: dict) -> None:
        """Write ``context.json`` once per folder so a person can tell the folders apart."""
        if self.directory is None:
            return
        folder = self.directory / context[:16]
        if (folder / "context.json").is_file():
            return
        try:
            folder.mkdir(parents=True, exist_ok=True)
            text = json.dumps(description, indent=2).encode()
            self._write_atomic(folder / "context.json", lambda file: file.write(text))
        except OSError as error:
            self._report(folder, f"could not write context.json ({error})")

    def _path(self, context: str, cid: str) -> Path:
        stem = cid if _SAFE_ID.fullmatch(cid) else hashlib.blake2b(cid.encode()).hexdigest()
        assert self.directory is not None
        return self.directory / context[:16] / stem[:2] / f"{stem}.pt"

    def _lookup(self, context: str, cid: str) -> torch.Tensor | None:
        key = (context, cid)
        row = self._memory.get(key)
        if row is not None:
            self._memory.move_to_end(key)
            return row
        if self.directory is None:
            return None
        path = self._path(context, cid)
        try:
            record = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            return None
        except Exception as error:  # any unreadable file is a miss; it is rewritten below
            self._counts["disk_errors"] += 1
            self._report(path, f"unreadable ({type(error).__name__}: {error}); re-encoding")
            return None
        row = self._check_record(record, context, cid)
        if row is None:
            self._counts["disk_errors"] += 1
            self._report(path, "does not hold the expected features; re-encoding")
            return None
        if record.get("sha256") != features_checksum(row):
            self._counts["disk_errors"] += 1
            self._report(
                path,
                "is corrupt: its features do not match the checksum stored with them (the file "
                "was damaged or altered after it was written); re-encoding and rewriting it",
            )
            return None
        self._counts["disk_reads"] += 1
        self._remember(key, row)
        return row

    def _check_record(self, record: Any, context: str, cid: str) -> torch.Tensor | None:
        if not isinstance(record, dict) or record.get("clip") != cid:
            return None
        if record.get("context") != context:
            return None
        row = record.get("features")
        if not isinstance(row, torch.Tensor) or row.dim() != 2:
            return None
        if self.dtype is not None and row.dtype != self.dtype:
            return None
        return row

    def _encode_rows(
        self,
        encode_fn: EncodeFn,
        audio: torch.Tensor,
        audio_mask: torch.Tensor | None,
        indices: list[int],
    ) -> list[torch.Tensor]:
        """Encode the given rows in one call; each row's valid frames, on CPU, in storage dtype."""
        if audio_mask is None:
            audio_mask = torch.ones(audio.shape, dtype=torch.long, device=audio.device)
        if len(indices) < audio.shape[0]:
            select = torch.tensor(indices, device=audio.device)
            audio, audio_mask = audio.index_select(0, select), audio_mask.index_select(0, select)
        # Masks are prefixes (zero-padded clips), so the longest row's count is the width needed.
        width = max(int(audio_mask.long().sum(-1).max()), 1)
        if width < audio.shape[1]:
            audio, audio_mask = audio[:, :width], audio_mask[:, :width]
        with torch.no_grad():
            features, frame_mask = encode_fn(audio, audio_mask)
        if features.dim() != 3 or features.shape[0] != len(indices):
            raise ValueError(
                f"encode_fn returned features of shape {tuple(features.shape)} for "
                f"{len(indices)} clips; expected [clips, frames, dim]"
            )
        if frame_mask.shape != features.shape[:2]:
            raise ValueError(
                f"encode_fn returned a frame mask of shape {tuple(frame_mask.shape)} for "
                f"features of shape {tuple(features.shape)}; normalise the encoder output first"
            )
        frames = frame_mask.long().sum(-1).tolist()
        features = features.detach().to("cpu", dtype=self.dtype or features.dtype)
        # clone: a stored row must own compact storage, not pin the whole batch's tensor.
        return [features[row, :count].clone() for row, count in enumerate(frames)]

    def _remember(self, key: tuple[str, str], row: torch.Tensor) -> None:
        size = row.numel() * row.element_size()
        if size > self.memory_limit:
            return
        old = self._memory.pop(key, None)
        if old is not None:
            self._memory_bytes -= old.numel() * old.element_size()
        while self._memory and self._memory_bytes + size > self.memory_limit:
            _, evicted = self._memory.popitem(last=False)
            self._memory_bytes -= evicted.numel() * evicted.element_size()
            self._counts["evictions"] += 1
        self._memory[key] = row
        self._memory_bytes += size

    def _store(self, context: str, cid: str, row: torch.Tensor) -> None:
        self._remember((context, cid), row)
        if self.directory is None:
            return
        path = self._path(context, cid)
        record = {
            "clip": cid,
            "context": context,
            "features": row,
            "sha256": features_checksum(row),
        }
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._write_atomic(path, lambda f: torch.save(record, f))
        except (OSError, RuntimeError) as error:
            # A full or read-only disk costs speed, not the run: the entry stays in memory.
            self._counts["disk_errors"] += 1
            self._report(path, f"could not be written ({error}); kept in memory only")
            return
        self._counts["disk_writes"] += 1

    @staticmethod
    def _write_atomic(path: Path, write: Callable[[Any], Any]) -> None:
        """Write through ``write(file)`` to a temporary file beside ``path``, then rename it.

        No fsync: the rename protects against a killed process, which is the common failure;
        after a power loss a file may be torn, and loading then reports it and re-encodes.
        """
        handle, temporary = tempfile.mkstemp(
            dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"
        )
        try:
            with os.fdopen(handle, "wb") as file:
                write(file)
            os.replace(temporary, path)
        except BaseException:
            try:
                os.unlink(temporary)
            except OSError:
                pass
            raise

    def _report(self, path: Path, problem: str) -> None:
        if str(path) not in self._reported:
            self._reported.add(str(path))
            log.warning("feature cache: %s %s", path, problem)

    def _assemble(
        self, rows: Sequence[torch.Tensor], device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Pad the rows into one CPU batch and copy it to ``device`` in one go.

        Pinned staging memory lets the copy to a GPU run asynchronously, so an all-hit batch
        costs no host-device synchronisation.
        """
        lengths = [row.shape[0] for row in rows]
        width = max(lengths)
        dim, dtype = rows[0].shape[1], rows[0].dtype
        pin = device.type == "cuda"
        features = torch.zeros(len(rows), width, dim, dtype=dtype, pin_memory=pin)
        for index, row in enumerate(rows):
            if row.shape[1] != dim:
                raise ValueError(
                    f"cached features of width {row.shape[1]} and {dim} in one batch; "
                    "the fingerprint does not identify the encoder's output"
                )
            features[index, : row.shape[0]] = row
        mask = (torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]).long()
        if pin:
            mask = mask.pin_memory()
        return (
            features.to(device, non_blocking=True),
            mask.to(device, non_blocking=True),
        )

    def __getstate__(self) -> dict:
        # Pickling (spawned workers, deepcopy of a model) carries the settings, not the gigabytes.
        state = self.__dict__.copy()
        state["_memory"] = OrderedDict()
        state["_memory_bytes"] = 0
        return state

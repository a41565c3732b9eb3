"""Turn raw WebDataset samples (audio member + json labels) into training/eval examples."""

from __future__ import annotations

import io
import json
import logging
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Literal

import numpy as np
import torch

log = logging.getLogger(__name__)

AUDIO_EXTENSIONS = ("flac", "wav", "mp3", "ogg", "opus", "m4a", "aac", "sph", "aiff", "webm")
# Tried after the dataset's own `a;b;c` keys, in this order.
FALLBACK_LABEL_KEYS = ("captions", "caption", "text")


class AudioDecodeError(ValueError):
    """A sample's audio member is corrupt, empty or in an unreadable format."""


class TruncatedAudioError(AudioDecodeError):
    """A sample's audio ends before the length its own header gives (a cut copy or download)."""


class LabelError(KeyError):
    """None of a dataset's label keys is present in a sample's json."""


@dataclass
class Example:
    key: str
    audio: torch.Tensor  # [T] float32, 16 kHz mono
    prompt: str
    targets: list[str]  # several references for captions; one training example each
    task: str
    cropped: bool = False  # a random crop of a longer clip: its encoder output is not reusable


@dataclass
class SkipCounter:
    """Counts samples dropped for a reason, logging the first few and every hundredth."""

    dataset: str
    counts: Counter = field(default_factory=Counter)
    # Each skipped clip once (a training set is read again every pass): the run lists them all
    # in skipped.tsv, beyond the few the log names.
    entries: list[dict[str, str]] = field(default_factory=list)
    _listed: set[tuple[str, str, str]] = field(default_factory=set, repr=False)

    def skip(self, reason: str, key: str, detail: str, shard: str | None = None) -> None:
        self.counts[reason] += 1
        mark = (reason, key, shard or "")
        if mark not in self._listed:
            self._listed.add(mark)
            self.entries.append(
                {"key": key, "shard": shard or "", "reason": reason, "detail": detail}
            )
        count = self.counts[reason]
        if count <= 3 or count % 100 == 0:
            log.warning(
                "%s: skipped sample %s%s (%s, %d so far): %s",
                self.dataset,
                key,
                f" in {shard}" if shard else "",
                reason,
                count,
                detail,
            )

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> str:
        return ", ".join(f"{n} {reason}" for reason, n in sorted(self.counts.items()))


@lru_cache(maxsize=16)
def _resampler(orig: int, new: int):
    import torchaudio

    return torchaudio.transforms.Resample(orig, new)


def _decode_with_av(data: bytes) -> tuple[torch.Tensor, int]:
    """Decode with PyAV, whose wheels carry their own FFmpeg (torchaudio now needs TorchCodec)."""
    import av

    with av.open(io.BytesIO(data)) as container:
        stream = next((s for s in container.streams if s.type == "audio"), None)
        if stream is None:
            raise AudioDecodeError("the container has no audio stream")
        # Planar float keeps channels apart whatever the codec's own sample format.
        resampler = av.AudioResampler(format="fltp")
        chunks = [
            out.to_ndarray()
            for frame in container.decode(stream)
            for out in resampler.resample(frame)
        ]
        chunks += [out.to_ndarray() for out in resampler.resample(None)]
        rate = stream.codec_context.sample_rate
    if not chunks:
        raise AudioDecodeError("audio has no samples")
    return torch.from_numpy(np.concatenate(chunks, axis=1)), int(rate)


def undecodable_formats() -> list[str]:
    """Audio member types this installation cannot decode (they become counted skips)."""
    import importlib.util

    if importlib.util.find_spec("av") is not None:
        return []
    import soundfile

    known = {name.lower() for name in soundfile.available_formats()}
    container = {"opus": "ogg", "sph": "nist"}  # libsndfile's name for each member type
    return [ext for ext in AUDIO_EXTENSIONS if container.get(ext, ext) not in known]


# WAV writers that cannot seek back (a pipe) leave the data size at one of these.
_UNKNOWN_WAV_SIZES = (0, 0xFFFFFFFF)


def wav_shortfall(data: bytes) -> tuple[int, int] | None:
    """(bytes present, bytes declared) of a WAV whose sample data ends early, else ``None``.

    libsndfile reads a cut WAV up to where it ends without a word, so the clip would be
    scored as a shorter one; the header's own size of the data chunk tells the two apart.
    """
    if len(data) < 12 or data[8:12] != b"WAVE" or data[:4] not in (b"RIFF", b"RIFX", b"RF64"):
        return None
    order: Literal["big", "little"] = "big" if data[:4] == b"RIFX" else "little"
    wide = None  # RF64 keeps the real data size in its ds64 chunk
    pos = 12
    while pos + 8 <= len(data):
        chunk, size = data[pos : pos + 4], int.from_bytes(data[pos + 4 : pos + 8], order)
        body = pos + 8
        if chunk == b"ds64" and size >= 16:
            wide = int.from_bytes(data[body + 8 : body + 16], "little")
        if chunk == b"data":
            if size == 0xFFFFFFFF and wide is not None:
                size = wide
            if size in _UNKNOWN_WAV_SIZES:
                return None
            present = len(data) - body
            return (present, size) if present < size else None
        pos = body + size + (size & 1)  # chunks are padded to an even length
    return None


def decode_audio(data: bytes, sample_rate: int, extension: str = "") -> torch.Tensor:
    """Decode audio bytes in memory to a mono float tensor at ``sample_rate``."""
    if not data:
        raise AudioDecodeError("empty audio member")
    short = wav_shortfall(data)
    if short is not None:
        raise TruncatedAudioError(
            f"truncated WAV: its data chunk holds {short[0]} of the {short[1]} bytes its header "
            "gives (the file was cut short, e.g. by an interrupted copy); re-create the shard "
            "from an intact copy of the file"
        )
    try:
        import soundfile

        wave, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
        wave = torch.from_numpy(np.ascontiguousarray(wave.T))
    except Exception as sf_error:  # formats libsndfile lacks (m4a, aac, webm, ...): FFmpeg
        try:
            wave, rate = _decode_with_av(data)
        except Exception as error:
            raise AudioDecodeError(
                f"cannot decode {extension or 'audio'} ({len(data)} bytes): soundfile: {sf_error}; "
                f"PyAV: {error}"
            ) from error
    if wave.numel() == 0:
        raise AudioDecodeError("audio has no samples")
    wave = peak_normalise(wave.float().mean(0))
    if rate != sample_rate:
        wave = _resampler(int(rate), sample_rate)(wave)
    if not torch.isfinite(wave).all():
        raise AudioDecodeError("audio contains NaN or Inf")
    return wave


def peak_normalise(wave: torch.Tensor) -> torch.Tensor:
    """Scale a clip whose samples exceed ±1 down to a peak of 1, as the challenge's loader does.

    Integer PCM decodes into [-1, 1), so only float files can be clipped; those are
    normalised before resampling, like the reference, so the resampled clip matches it.
    """
    peak = wave.abs().max()
    return wave / peak if peak > 1.0 else wave


def extract_labels(meta: Mapping[str, Any], label_key: str, join: str | None = None) -> list[str]:
    """The sample's answer(s), read as the challenge's loader reads them.

    Keys are tried in order: the dataset's ``a;b;c``, then captions/caption/text. A string
    value is the answer even when empty (an empty label is kept, not skipped); a number
    becomes its ``str()``. A non-empty list means several answers: one training example
    each, and each one a reference at evaluation (a ``;``-joined string is one multi-label
    answer). ``join`` instead makes a list one answer (``"dog;rain"``), which the challenge
    does not do. Missing keys, ``null``, empty lists and objects fall through to the next key.
    """
    keys = [k.strip() for k in label_key.split(";") if k.strip()]
    for key in [*keys, *(k for k in FALLBACK_LABEL_KEYS if k not in keys)]:
        value = meta.get(key)
        if isinstance(value, str):
            return [value]
        if isinstance(value, (bool, int, float)):
            return [str(value)]
        if isinstance(value, (list, tuple)) and value:
            values = [v if isinstance(v, str) else str(v) for v in value if v is not None]
            if not values:
                continue
            return [join.join(values)] if join is not None else values
    raise LabelError(
        f"none of the label keys {keys + list(FALLBACK_LABEL_KEYS)} is in the sample's json "
        f"(it has: {sorted(meta)}); set label_key in the task file to one of those"
    )


def looks_corrupt(text: str) -> bool:
    """The challenge's test for a garbled label, which its loader drops.

    Corrupt: more than 3 combining diacritics (U+0301..U+036F), more than half the
    characters not letters or digits (spaces count against), or over 10 characters made of
    fewer than 4 distinct ones. Empty text is not corrupt.
    """
    if not text:
        return False
    combining = sum(0x0300 < ord(c) < 0x0370 for c in text)
    alphanumeric = sum(c.isalnum() for c in text)
    if combining > 3 or (len(text) - alphanumeric) / len(text) > 0.5:
        return True
    return len(text) > 10 and len(set(text)) < 4


def audio_member(sample: Mapping[str, Any]) -> tuple[str, bytes] | None:
    for ext in AUDIO_EXTENSIONS:
        if ext in sample:
            return ext, sample[ext]
    for name, value in sample.items():  # compound extensions such as "audio.flac"
        if not name.startswith("__") and name.rsplit(".", 1)[-1] in AUDIO_EXTENSIONS:
            return name, value
    return None


def read_tar_samples(paths: Sequence[str], skips: SkipCounter) -> Iterator[dict[str, Any]]:
    """Raw samples grouped by key from tar shards; a truncated or corrupt tar is a counted skip."""
    import webdataset as wds

    for path in paths:
        # webdataset reports one truncation twice (the member read, then the tar stream): count
        # a broken shard once per read.
        errors: list[Exception] = []

        def handler(error: Exception, path: str = path, errors: list = errors) -> bool:
            if not errors:
                skips.skip("corrupt shard", path, f"{type(error).__name__}: {error}")
            errors.append(error)
            return True

        stream = wds.tarfile_to_samples(handler=handler)([{"url": path}])
        yield from stream


def to_example(
    sample: Mapping[str, Any],
    *,
    task: str,
    label_key: str,
    prompt: str,
    sample_rate: int,
    skips: SkipCounter,
    label_join: str | None = None,
) -> Example | None:
    """Decode one raw sample; ``None`` (and a counted skip) when it cannot be used."""
    key = str(sample.get("__key__", "?"))
    shard = sample.get("__url__")
    member = audio_member(sample)
    if member is None:
        members = sorted(k for k in sample if not k.startswith("__"))
        skips.skip("no audio", key, f"members: {members}", shard)
        return None
    raw_meta = sample.get("json")
    if raw_meta is None:
        skips.skip("no json", key, "the sample has no .json member with labels", shard)
        return None
    try:
        meta = json.loads(raw_meta) if isinstance(raw_meta, (bytes, str)) else raw_meta
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        skips.skip("bad json", key, f"the .json member is not UTF-8 JSON: {error}", shard)
        return None
    if not isinstance(meta, Mapping):
        detail = f"the .json member holds a {type(meta).__name__}, not an object of label fields"
        skips.skip("bad json", key, detail, shard)
        return None
    try:
        targets = extract_labels(meta, label_key, label_join)
    except LabelError as error:
        skips.skip("missing label", key, str(error), shard)
        return None
    usable = []
    for target in targets:
        if looks_corrupt(target):
            skips.skip("corrupt label", key, f"label text {target[:60]!r} looks garbled", shard)
        else:
            usable.append(target)
    if not usable:
        return None
    targets = usable
    try:
        audio = decode_audio(member[1], sample_rate, member[0])
    except TruncatedAudioError as error:
        skips.skip("truncated audio", key, str(error), shard)
        return None
    except AudioDecodeError as error:
        skips.skip("bad audio", key, str(error), shard)
        return None
    return Example(key=key, audio=audio, prompt=prompt, targets=targets, task=task)

"""A tiny generated task for tests and smoke runs: the answer is a function of the audio.

``pitch``: a tone at one of four pitches, answered with the pitch's name (Accuracy).
``melody``: two or three tones in a row, answered with their names in order (iWER).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import soundfile

from xares.data.tar_shards import shard_writer

PITCHES = {"low": 220.0, "mid": 440.0, "high": 880.0, "top": 1760.0}
VERSION = 1
SAMPLE_RATE = 16000


def _tone(freq: float, seconds: float, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    wave = np.sin(2 * np.pi * freq * (1 + rng.uniform(-0.02, 0.02)) * t)
    fade = np.minimum(1.0, np.minimum(t, t[-1] - t) / 0.01)
    return (0.5 * wave * fade).astype(np.float32)


def _clip(names: list[str], rng: np.random.Generator) -> np.ndarray:
    parts = [_tone(PITCHES[n], rng.uniform(0.25, 0.4), rng) for n in names]
    gap = np.zeros(int(0.05 * SAMPLE_RATE), dtype=np.float32)
    wave = np.concatenate([p for part in parts for p in (part, gap)])
    wave += rng.normal(0, 0.01, wave.shape).astype(np.float32)
    return wave


def _write_shard(path: Path, samples: list[tuple[str, np.ndarray, dict]]) -> None:
    with shard_writer(path) as shard:
        for key, wave, meta in samples:
            buffer = io.BytesIO()
            soundfile.write(buffer, wave, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
            shard.write(
                {"__key__": key, "flac": buffer.getvalue(), "json": json.dumps(meta).encode()}
            )


def ensure_smoke_suite(root: str | Path, seed: int = 0, train: int = 64, test: int = 16) -> Path:
    """Write ``pitch`` and ``melody`` train/test shards under ``root`` unless already there."""
    root = Path(root)
    stamp = root / "manifest.json"
    manifest = {"version": VERSION, "seed": seed, "train": train, "test": test}
    if stamp.is_file() and json.loads(stamp.read_text()) == manifest:
        return root
    names = list(PITCHES)
    for split, count, offset in (("train", train, 0), ("test", test, 1)):
        rng = np.random.default_rng([seed, offset])
        for task in ("pitch", "melody"):
            samples = []
            for index in range(count):
                if task == "pitch":
                    notes = [names[index % len(names)]]
                    meta = {"label": notes[0]}
                else:
                    notes = list(rng.choice(names, size=int(rng.integers(2, 4))))
                    meta = {"text": " ".join(notes)}
                samples.append((f"{task}_{split}_{index:05d}", _clip(notes, rng), meta))
            folder = root / task / split
            folder.mkdir(parents=True, exist_ok=True)
            half = (len(samples) + 1) // 2  # two shards per split exercise multi-shard reading
            _write_shard(folder / f"{task}_{split}_000000.tar", samples[:half])
            _write_shard(folder / f"{task}_{split}_000001.tar", samples[half:])
    stamp.write_text(json.dumps(manifest))
    return root

"""Data: decoding, labels, shard reading with counted skips, the training mixture, eval sets."""

from __future__ import annotations

import io
import json
import logging
import random
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from helpers.config import eval_set, train_mixture

import xares.data.mixing as mixing
from xares.data.collate import collate, length_buckets
from xares.data.mixing import DatasetSource
from xares.data.samples import (
    AudioDecodeError,
    Example,
    LabelError,
    SkipCounter,
    decode_audio,
    extract_labels,
    read_tar_samples,
    to_example,
)
from xares.training.datamodule import _sources

SR = 16000


def encode(wave: np.ndarray, rate: int = SR, fmt: str = "FLAC", subtype: str | None = None):
    buffer = io.BytesIO()
    soundfile.write(buffer, wave, rate, format=fmt, subtype=subtype)
    return buffer.getvalue()


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return str(path)


def sample(key: str, wave: np.ndarray, meta: dict) -> list[tuple[str, bytes]]:
    return [(f"{key}.flac", encode(wave)), (f"{key}.json", json.dumps(meta).encode())]


def noise(seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.uniform(-0.3, 0.3, int(seconds * SR))).astype(np.float32)


def make_dataset(
    folder: Path, name: str, shards: int, per_shard: int, meta, seconds=(0.1, 0.4), seed=0
) -> list[str]:
    """``shards`` tar files of ``per_shard`` clips; ``meta(index)`` gives each clip's json."""
    rng = np.random.default_rng(seed)
    paths = []
    for shard in range(shards):
        members = []
        for item in range(per_shard):
            index = shard * per_shard + item
            length = float(rng.uniform(*seconds))
            members += sample(f"{name}_{index:04d}", noise(length, seed + index), meta(index))
        paths.append(write_tar(folder / name / f"{name}_{shard:03d}.tar", members))
    return paths


# ---------------------------------------------------------------------------- decoding
def test_decode_flac_and_wav_bytes():
    t = np.arange(SR // 2) / SR
    wave = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    flac = decode_audio(encode(wave, fmt="FLAC"), sample_rate=SR)
    assert flac.dtype == torch.float32 and flac.shape == (SR // 2,)
    assert torch.allclose(flac, torch.from_numpy(wave), atol=1 / 2**14)  # 16-bit PCM
    wav = decode_audio(encode(wave, fmt="WAV", subtype="FLOAT"), extension="wav", sample_rate=SR)
    assert torch.equal(wav, torch.from_numpy(wave))


def test_stereo_becomes_the_channel_mean():
    stereo = np.stack([noise(0.2, 1), noise(0.2, 2)], axis=1)
    mono = decode_audio(encode(stereo, fmt="WAV", subtype="FLOAT"), sample_rate=SR)
    assert mono.shape == (stereo.shape[0],)
    assert torch.allclose(mono, torch.from_numpy(stereo.mean(1)), atol=1e-6)


def test_8khz_is_resampled_to_16khz():
    n = 4000
    t = np.arange(n) / 8000
    wave = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    out = decode_audio(encode(wave, rate=8000, fmt="WAV", subtype="FLOAT"), sample_rate=SR)
    assert abs(out.shape[0] - 2 * n) <= 1
    spectrum = torch.fft.rfft(out).abs()
    assert abs(int(spectrum.argmax()) * SR / out.shape[0] - 440) < 5  # still a 440 Hz tone


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "empty audio member"),
        (b"definitely not audio" * 10, "cannot decode flac (200 bytes)"),
    ],
)
def test_undecodable_audio_is_an_audio_decode_error(data, message):
    with pytest.raises(AudioDecodeError, match=message.replace("(", r"\(").replace(")", r"\)")):
        decode_audio(data, extension="flac", sample_rate=SR)


def test_non_finite_audio_is_an_audio_decode_error():
    wave = noise(0.1, 0)
    wave[10] = np.nan
    with pytest.raises(AudioDecodeError, match="NaN or Inf"):
        decode_audio(encode(wave, fmt="WAV", subtype="FLOAT"), sample_rate=SR)


# ---------------------------------------------------------------------------- labels
def test_label_keys_first_present_wins():
    meta = {"a": "first", "b": "second", "text": "fallback"}
    assert extract_labels(meta, "a;b") == ["first"]
    # An empty string is an (empty) answer, as the challenge's loader reads it; null, an
    # empty list and an object are absent.
    assert extract_labels({"b": "second", "a": ""}, "a;b") == [""]
    assert extract_labels({"b": "second", "a": None}, " a ; b ") == ["second"]
    assert extract_labels({"b": "second", "a": []}, "a;b") == ["second"]
    assert extract_labels({"b": "second", "a": {"x": 1}}, "a;b") == ["second"]


def test_label_fallback_keys_in_order():
    assert extract_labels({"captions": ["c1"], "caption": "c", "text": "t"}, "label") == ["c1"]
    assert extract_labels({"caption": "c", "text": "t"}, "label") == ["c"]
    assert extract_labels({"text": "t", "other": 1}, "label") == ["t"]


def test_list_labels_are_several_targets_unless_joined():
    meta = {"labels": ["Dog", "Rain", "", None, 3], "captions": ["x"]}
    assert extract_labels(meta, "labels") == ["Dog", "Rain", "", "3"]
    assert extract_labels(meta, "labels", join=";") == ["Dog;Rain;;3"]


def test_scalar_labels_become_text():
    assert extract_labels({"num_speakers": 3}, "num_speakers") == ["3"]
    assert extract_labels({"flag": False}, "flag") == ["False"]


def test_missing_label_lists_available_keys():
    with pytest.raises(LabelError) as info:
        extract_labels({"id": 7, "duration": 1.5, "text": None}, "label;labels")
    message = str(info.value)
    assert "['label', 'labels', 'captions', 'caption', 'text']" in message
    assert "(it has: ['duration', 'id', 'text'])" in message


# ---------------------------------------------------------------------------- shards and skips
def examples_from(paths: list[str], skips: SkipCounter, label_key="label") -> list[Example]:
    out = []
    for raw in read_tar_samples(paths, skips):
        example = to_example(
            raw, task="t", label_key=label_key, prompt="P", sample_rate=SR, skips=skips
        )
        if example is not None:
            out.append(example)
    return out


def test_unusable_samples_are_counted_skips(tmp_path, caplog):
    wave = noise(0.2, 0)
    members = [
        *sample("good_a", wave, {"label": "dog"}),
        ("no_audio.json", b'{"label": "cat"}'),
        ("no_json.flac", encode(wave)),
        *sample("no_label", wave, {"speaker": "x"}),
        ("bad_json.flac", encode(wave)),
        ("bad_json.json", b"{not json"),
        ("latin1.flac", encode(wave)),
        ("latin1.json", '{"label": "caf\u00e9"}'.encode("latin-1")),
        ("a_list.flac", encode(wave)),
        ("a_list.json", b'["dog", "cat"]'),
        ("corrupt.flac", b"\x00\x01garbage" * 50),
        ("corrupt.json", b'{"label": "rain"}'),
        ("compound.audio.wav", encode(wave, fmt="WAV")),
        ("compound.json", b'{"label": "bird"}'),
        *sample("good_b", wave, {"label": "cow"}),
    ]
    skips = SkipCounter("unit")
    shard = write_tar(tmp_path / "s.tar", members)
    with caplog.at_level(logging.WARNING, logger="xares.data.samples"):
        examples = examples_from([shard], skips)
    assert [(e.key, e.targets) for e in examples] == [
        ("good_a", ["dog"]),
        ("compound", ["bird"]),
        ("good_b", ["cow"]),
    ]
    assert examples[0].audio.shape == (wave.shape[0],) and examples[0].prompt == "P"
    assert skips.counts == Counter(
        {"no audio": 1, "no json": 1, "missing label": 1, "bad json": 3, "bad audio": 1}
    )
    assert skips.total == 7
    assert skips.summary() == "1 bad audio, 3 bad json, 1 missing label, 1 no audio, 1 no json"
    # Each skip names the shard and the sample, so it can be found and fixed.
    logged = {r.getMessage() for r in caplog.records}
    assert any(f"latin1 in {shard} (bad json" in m and "not UTF-8" in m for m in logged)
    assert any(f"a_list in {shard} (bad json" in m and "holds a list" in m for m in logged)


def test_truncated_tar_is_a_counted_skip(tmp_path):
    members = [m for i in range(8) for m in sample(f"k{i}", noise(0.2, i), {"label": str(i)})]
    full = Path(write_tar(tmp_path / "full.tar", members))
    data = full.read_bytes()
    cut = tmp_path / "cut.tar"
    cut.write_bytes(data[: len(data) // 2])

    skips = SkipCounter("unit")
    examples = examples_from([str(cut), str(full)], skips)
    keys = [e.key for e in examples]
    complete = keys[: keys.index("k0", 1)]  # what the cut shard delivered
    assert 1 <= len(complete) < 8
    assert complete == [f"k{i}" for i in range(len(complete))]
    assert keys[len(complete) :] == [f"k{i}" for i in range(8)]  # the next shard is read whole
    assert skips.counts == Counter({"corrupt shard": 1})  # one broken shard, counted once


def wav_data_offset(data: bytes) -> int:
    """Where the samples of a WAV written by soundfile start (after the 'data' chunk header)."""
    return data.index(b"data") + 8


@pytest.mark.parametrize("keep", ["half", "all but one byte"])
def test_truncated_wav_is_a_counted_skip(tmp_path, caplog, keep):
    wave = noise(1.0, 3)
    whole = encode(wave, fmt="WAV", subtype="PCM_16")
    # The header still says one second of samples; the file ends early (a cut copy).
    cut = whole[: len(whole) // 2] if keep == "half" else whole[:-1]
    members = [
        ("cut.wav", cut),
        ("cut.json", b'{"label": "dog"}'),
        ("whole.wav", whole),
        ("whole.json", b'{"label": "cow"}'),
    ]
    shard = write_tar(tmp_path / "s.tar", members)
    skips = SkipCounter("unit")
    with caplog.at_level(logging.WARNING, logger="xares.data.samples"):
        examples = examples_from([shard], skips)
    assert [e.key for e in examples] == ["whole"]
    assert examples[0].audio.shape == (SR,)
    assert skips.counts == Counter({"truncated audio": 1})
    declared = len(whole) - wav_data_offset(whole)
    present = len(cut) - wav_data_offset(whole)
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert f"cut in {shard} (truncated audio" in logged
    assert f"{present} of the {declared} bytes" in logged
    with pytest.raises(AudioDecodeError, match="truncated"):
        decode_audio(cut, extension="wav", sample_rate=SR)


def test_complete_wavs_of_unusual_layouts_are_not_truncated():
    # An odd number of 8-bit samples: the data chunk is followed by a pad byte.
    odd = encode(noise(0.2, 4)[:1601], fmt="WAV", subtype="PCM_U8")
    assert decode_audio(odd, extension="wav", sample_rate=SR).shape == (1601,)
    # A WAV written to a pipe cannot go back to fill in its sizes: "unknown" (0xFFFFFFFF).
    whole = encode(noise(0.1, 5), fmt="WAV", subtype="PCM_16")
    at = wav_data_offset(whole) - 4
    streamed = whole[:4] + b"\xff\xff\xff\xff" + whole[8:at] + b"\xff\xff\xff\xff" + whole[at + 4 :]
    assert decode_audio(streamed, extension="wav", sample_rate=SR).shape == (1600,)
    # A chunk after the samples (metadata) is no truncation either.
    tagged = whole + b"LIST" + (4).to_bytes(4, "little") + b"INFO"
    assert decode_audio(tagged, extension="wav", sample_rate=SR).shape == (1600,)


# ---------------------------------------------------------------------------- training mixture
@pytest.fixture(scope="module")
def two_datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("mix")
    dogs = make_dataset(root, "dogs", 3, 8, lambda i: {"label": f"dog{i % 4}"}, seed=0)
    cats = make_dataset(root, "cats", 1, 8, lambda i: {"label": f"cat{i % 4}"}, seed=100)
    return dogs, cats


@pytest.fixture(scope="module")
def short_and_long(tmp_path_factory):
    root = tmp_path_factory.mktemp("lengths")
    short = make_dataset(root, "short", 1, 16, lambda i: {"label": "s"}, seconds=(0.05, 0.1))
    long = make_dataset(root, "long", 1, 16, lambda i: {"label": "l"}, seconds=(0.5, 0.6), seed=50)
    return short, long


@pytest.mark.parametrize(("batch_size", "sort_buffer"), [(4, 128), (6, 128), (3, 8), (5, 8)])
def test_mixture_shares_follow_prob_whatever_the_batch_and_sort_buffer(
    short_and_long, batch_size, sort_buffer
):
    """The clips left over when a sorted buffer is cut into batches are the longest ones:
    dropping them under-trained long-clip datasets (a long share of 0.23 at 5 / 8)."""
    short, long = short_and_long
    mixture = train_mixture(
        [
            DatasetSource("short", short, "label", "P", prob=1.0),
            DatasetSource("long", long, "label", "P", prob=1.0),
        ],
        batch_size=batch_size,
        sort_buffer=sort_buffer,
        shuffle_buffer=8,
        seed=3,
    )
    stream = iter(mixture)
    tasks = Counter()
    for _ in range(3000 // batch_size):
        batch = next(stream)
        assert len(batch["tasks"]) == batch_size
        tasks.update(batch["tasks"])
    share = tasks["long"] / sum(tasks.values())
    # About 3 000 draws at p = 0.5: one standard error is 0.009.
    assert abs(share - 0.5) < 0.04, (share, tasks)


def test_mixture_follows_probabilities_in_full_length_sorted_batches(two_datasets):
    dogs, cats = two_datasets
    mixture = train_mixture(
        [
            DatasetSource("dogs", dogs, "label", "Which dog?", prob=3.0),
            DatasetSource("cats", cats, "label", "Which cat?", prob=1.0),
        ],
        batch_size=8,
        sort_buffer=32,
        shuffle_buffer=16,
        seed=0,
    )
    assert mixture.weights == [0.75, 0.25]
    stream = iter(mixture)
    batches = [next(stream) for _ in range(52)]  # 416 examples, 13 sort buffers of 4 batches
    tasks = Counter()
    for batch in batches:
        assert batch["audio"].shape[0] == 8 and len(batch["targets"]) == 8
        assert torch.equal(
            batch["audio_mask"].sum(-1).amax(), torch.tensor(batch["audio"].shape[1])
        )
        tasks.update(batch["tasks"])
        for task, prompt, target, key in zip(
            batch["tasks"], batch["prompts"], batch["targets"], batch["keys"]
        ):
            assert key.startswith(task) and target.startswith(task[:3])
            assert prompt == ("Which dog?" if task == "dogs" else "Which cat?")
    share = tasks["dogs"] / sum(tasks.values())
    assert abs(share - 0.75) < 0.07, tasks

    # Length bucketing: the 4 batches cut from one sort buffer are each sorted and do not
    # overlap in length (their order is shuffled).
    for start in range(0, len(batches), 4):
        group = [b["audio_mask"].sum(-1).tolist() for b in batches[start : start + 4]]
        for lengths in group:
            assert lengths == sorted(lengths)
        group.sort(key=lambda lengths: lengths[0])
        for low, high in zip(group, group[1:]):
            assert low[-1] <= high[0]


def test_mixture_splits_training_sets_across_readers(two_datasets, monkeypatch):
    """Two readers (DDP ranks or loader workers) never train on the same clip.

    dogs has 3 shards for 2 readers (two dealt out whole, the third split by sample), cats 1
    (split by sample in the shard).
    """
    dogs, cats = two_datasets
    seen = []
    for ranks in ((0, 2), (1, 2)):
        mixture = train_mixture(
            [
                DatasetSource("dogs", dogs, "label", "Which dog?"),
                DatasetSource("cats", cats, "label", "Which cat?"),
            ],
            batch_size=4,
            sort_buffer=8,
            shuffle_buffer=4,
            seed=0,
        )
        # DDP ranks as the datamodule records them in the main process: a loader worker
        # started by spawn has no process group to ask.
        mixture.ranks = ranks
        stream = iter(mixture)
        seen.append({key for _ in range(40) for key in next(stream)["keys"]})
    assert not seen[0] & seen[1]
    everything = {f"dogs_{i:04d}" for i in range(24)} | {f"cats_{i:04d}" for i in range(8)}
    assert seen[0] | seen[1] == everything
    assert {k for k in seen[1] if k.startswith("dogs")} == {
        f"dogs_{i:04d}" for i in [*range(8, 16), *range(17, 24, 2)]
    }
    assert {k for k in seen[0] if k.startswith("cats")} == {f"cats_{i:04d}" for i in range(0, 8, 2)}


@pytest.mark.parametrize(("shards", "readers"), [(4, 3), (6, 4), (2, 3), (8, 4)])
def test_readers_parts_are_disjoint_complete_and_equal(tmp_path, shards, readers):
    """Every sample is in exactly one reader's part, and the parts are the same size.

    Readers draw at the same rate, so unequal parts would over-sample some shards (4 shards
    on 3 readers dealt out whole would be parts of 2, 1 and 1 shard).
    """
    per_shard = 12
    paths = [
        write_tar(
            tmp_path / f"s_{shard}.tar",
            [(f"s{shard}_{i:02d}.json", b"{}") for i in range(per_shard)],
        )
        for shard in range(shards)
    ]
    parts = []
    for slot in range(readers):
        own, share = mixing.own_slice(paths, slot, readers)
        random.Random(slot).shuffle(own)  # a reader walks its shards in its own order
        parts.append([s["__key__"] for s in share(read_tar_samples(own, SkipCounter("s")))])
    everything = [key for part in parts for key in part]
    assert sorted(everything) == sorted(f"s{s}_{i:02d}" for s in range(shards) for i in range(12))
    assert len(set(everything)) == len(everything)
    sizes = [len(part) for part in parts]
    assert max(sizes) - min(sizes) <= shards % readers, sizes


def test_reader_with_an_empty_part_reads_the_whole_set(tmp_path, monkeypatch, caplog):
    """1 shard of 3 usable clips on 4 readers: the 4th reader's part is empty.

    Raising there would stop one DDP rank while the others wait for it; it trains on the
    whole set instead, and says so once.
    """
    members = []
    for i in range(3):
        members += sample(f"few_{i}", noise(0.1, i), {"label": f"l{i}"})
    shard = write_tar(tmp_path / "few.tar", members)
    keys = {}
    for slot in range(4):
        monkeypatch.setattr(mixing, "_process_slot", lambda ranks=None, slot=slot: (slot, 4))
        mixture = train_mixture(
            [DatasetSource("few", [shard], "label", "P")],
            batch_size=1,
            sort_buffer=1,
            shuffle_buffer=1,
        )
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="xares.data.mixing"):
            stream = iter(mixture)
            keys[slot] = {key for _ in range(9) for key in next(stream)["keys"]}
        warnings = [r.getMessage() for r in caplog.records if "whole set" in r.getMessage()]
        assert len(warnings) == (1 if slot == 3 else 0), warnings
    assert [keys[slot] for slot in range(3)] == [{"few_0"}, {"few_1"}, {"few_2"}]
    assert keys[3] == {"few_0", "few_1", "few_2"}
    assert "training set few: reader 4 of 4" in warnings[0]
    assert "0 sample(s) in 1 of the set's 1 shard(s)" in warnings[0]


def test_set_without_usable_samples_fails_on_every_reader(tmp_path, monkeypatch):
    shard = write_tar(tmp_path / "bad.tar", sample("x", noise(0.1, 0), {"other": 1}))
    for slot in range(2):
        monkeypatch.setattr(mixing, "_process_slot", lambda ranks=None, slot=slot: (slot, 2))
        stream = iter(train_mixture([DatasetSource("broken", [shard], "label", "P")], batch_size=1))
        match = rf"training set broken .* 1 shard\(s\), read whole by reader {slot + 1} of 2"
        with pytest.raises(RuntimeError, match=match):
            next(stream)


def test_mixture_random_crop(tmp_path):
    ramp = (np.arange(SR // 2, dtype=np.float32) / SR).astype(np.float32)  # 0.5 s, unique values
    members = []
    for i in range(4):
        members += [(f"r{i}.wav", encode(ramp, fmt="WAV", subtype="FLOAT"))]
        members += [(f"r{i}.json", json.dumps({"label": "ramp"}).encode())]
    shard = write_tar(tmp_path / "ramp.tar", members)
    mixture = train_mixture(
        [DatasetSource("ramp", [shard], "label", "P")],
        batch_size=4,
        crop_seconds=0.1,
        sort_buffer=4,
        shuffle_buffer=2,
    )
    stream = iter(mixture)
    starts = set()
    expected = torch.from_numpy(ramp)
    for _ in range(6):
        batch = next(stream)
        assert batch["audio"].shape == (4, 1600) and batch["audio_mask"].all()
        for row in batch["audio"]:
            start = int(round(float(row[0]) * SR))
            assert torch.equal(row, expected[start : start + 1600])  # a contiguous window
            starts.add(start)
    assert len(starts) > 5  # a random window each time, not the clip's start


def test_caption_lists_become_one_example_per_caption(tmp_path):
    shards = make_dataset(
        tmp_path, "caps", 1, 4, lambda i: {"captions": [f"c{i} one", f"c{i} two", f"c{i} three"]}
    )
    mixture = train_mixture(
        [DatasetSource("caps", shards, "caption;captions", "Caption it.")],
        batch_size=4,
        sort_buffer=12,
        shuffle_buffer=1,
    )
    stream = iter(mixture)
    pairs = []
    for _ in range(3):  # exactly one pass: 4 clips x 3 captions
        batch = next(stream)
        pairs += list(zip(batch["keys"], batch["targets"]))
    expected = [(f"caps_{i:04d}", f"c{i} {n}") for i in range(4) for n in ("one", "two", "three")]
    assert sorted(pairs) == sorted(expected)


def test_mixture_without_usable_samples_names_the_dataset(tmp_path):
    shard = write_tar(tmp_path / "bad.tar", sample("x", noise(0.1, 0), {"other": 1}))
    stream = iter(train_mixture([DatasetSource("broken", [shard], "label", "P")], batch_size=2))
    with pytest.raises(RuntimeError, match=r"training set broken .*1 missing label.*label_key"):
        next(stream)


def test_mixture_rejects_zero_probabilities(tmp_path):
    with pytest.raises(ValueError, match="sum to zero"):
        train_mixture([DatasetSource("a", ["x.tar"], "label", "P", prob=0.0)], batch_size=2)


# ---------------------------------------------------------------------------- eval sets
@pytest.fixture(scope="module")
def eval_shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")

    def meta(i):
        return {"captions": [f"e{i} a", f"e{i} b"]} if i % 3 == 0 else {"label": f"e{i}"}

    return make_dataset(root, "ev", 2, 7, meta)


def read_eval(shards, **kwargs) -> dict[str, list[str]]:
    seen: dict[str, list[str]] = {}
    dataset = eval_set(DatasetSource("ev", shards, "label", "P"), **kwargs)
    for batch in dataset:
        assert "targets" not in batch
        assert batch["audio"].shape[0] <= kwargs["batch_size"]
        for key, refs in zip(batch["keys"], batch["references"]):
            assert key not in seen
            seen[key] = refs
    return seen


def test_eval_set_yields_every_sample_once_with_all_references(eval_shards):
    seen = read_eval(eval_shards, batch_size=3, sort_buffer=4)
    assert sorted(seen) == [f"ev_{i:04d}" for i in range(14)]
    for i in range(14):
        expected = [f"e{i} a", f"e{i} b"] if i % 3 == 0 else [f"e{i}"]
        assert seen[f"ev_{i:04d}"] == expected
    assert sorted(read_eval(eval_shards, batch_size=4, limit=5)) == [
        f"ev_{i:04d}" for i in range(5)
    ]


def test_eval_set_splits_across_slots(eval_shards, monkeypatch):
    halves = []
    for slot in ((0, 2), (1, 2)):
        monkeypatch.setattr(mixing, "_process_slot", lambda ranks=None, slot=slot: slot)
        halves.append(set(read_eval(eval_shards, batch_size=3, sort_buffer=4)))
    assert halves[0] and halves[1]
    assert not halves[0] & halves[1]
    assert halves[0] | halves[1] == {f"ev_{i:04d}" for i in range(14)}


def test_ranks_recorded_in_the_main_process_reach_spawned_workers(eval_shards):
    """A worker started by spawn (forkserver is Python 3.14's default) has no process group:
    the rank the datamodule records before the workers start is what splits the data."""
    from torch.utils.data import DataLoader

    halves = []
    for ranks in ((0, 2), (1, 2)):
        dataset = eval_set(DatasetSource("ev", eval_shards, "label", "P"), batch_size=3)
        dataset.ranks = ranks
        loader = DataLoader(
            dataset, batch_size=None, num_workers=1, multiprocessing_context="spawn"
        )
        halves.append({key for batch in loader for key in batch["keys"]})
    assert halves[0] and halves[1] and not halves[0] & halves[1]
    assert halves[0] | halves[1] == {f"ev_{i:04d}" for i in range(14)}


# ---------------------------------------------------------------------------- batching
def example(key: str, length: int, targets=("t",)) -> Example:
    return Example(key, torch.arange(1, length + 1, dtype=torch.float32), "P", list(targets), "x")


def test_length_buckets_sort_inside_the_buffer():
    rng = random.Random(0)
    items = [example(f"k{i}", rng.randint(1, 100)) for i in range(23)]
    ordered = list(length_buckets(items, 5, None))
    assert [len(b) for b in ordered] == [5, 5, 5, 5, 3]
    flat = [e.audio.shape[0] for batch in ordered for e in batch]
    assert flat == sorted(e.audio.shape[0] for e in items)

    shuffled = list(length_buckets(items, 5, random.Random(1)))
    assert sorted(map(id, (e for b in shuffled for e in b))) == sorted(map(id, items))
    assert [[e.key for e in b] for b in shuffled] != [[e.key for e in b] for b in ordered]
    for batch in shuffled:  # the same batches, in another order
        assert [e.key for e in batch] in [[e.key for e in b] for b in ordered]


def test_collate_pads_with_zeros_and_masks_lengths():
    items = [example("a", 3, ["x", "y"]), example("b", 5), example("c", 2)]
    batch = collate(items)
    assert batch["audio"].shape == (3, 5) and batch["audio_mask"].dtype == torch.long
    assert batch["audio_mask"].sum(-1).tolist() == [3, 5, 2]
    assert batch["audio"][0].tolist() == [1, 2, 3, 0, 0]
    assert batch["audio"][2].tolist() == [1, 2, 0, 0, 0]
    assert (batch["audio"][batch["audio_mask"] == 0] == 0).all()
    assert batch["targets"] == ["x", "t", "t"] and batch["keys"] == ["a", "b", "c"]
    assert "references" not in batch
    refs = collate(items, references=True)
    assert refs["references"] == [["x", "y"], ["t"], ["t"]] and "targets" not in refs


# ---------------------------------------------------------------------------- sources
def test_dataset_source_without_shards_is_an_error():
    with pytest.raises(ValueError, match="dataset empty has no shards"):
        DatasetSource("empty", [], "label", "P")


def test_null_prob_is_the_share_of_shards(tmp_path):
    def shards(name, count):
        return [write_tar(tmp_path / name / f"{i}.tar", []) for i in range(count)]

    spec = {
        "big": {"shards": shards("big", 3), "prompt": "P", "prob": None},
        "small": {"shards": shards("small", 1), "prompt": "Q", "prob": None},
        "off": None,  # a mixture switches a dataset off with `name: null`
    }
    sources = _sources(spec, root=None, task="t", download=False)
    assert [(s.name, s.prob) for s in sources] == [("big", 0.75), ("small", 0.25)]
    assert all(s.label_key == "label" for s in sources)

    spec["fixed"] = {"shards": shards("fixed", 4), "prompt": "R", "prob": 2}
    probs = {s.name: s.prob for s in _sources(spec, root=None, task="t", download=False)}
    assert probs == {"big": 3 / 8, "small": 1 / 8, "fixed": 2.0}

    with pytest.raises(ValueError, match="train.noprompt: `prompt` must be a non-empty string"):
        _sources({"noprompt": {"shards": shards("np", 1)}}, root=None, task="t", download=False)


# ---------------------------------------------------------------------------- formats
def encode_with_ffmpeg(wave: np.ndarray, rate: int, container: str, codec: str) -> bytes:
    import av

    buffer = io.BytesIO()
    with av.open(buffer, "w", format=container) as out:
        stream = out.add_stream(codec, rate=rate)
        stream.layout = "stereo"
        frame = av.AudioFrame.from_ndarray(
            np.stack([wave, wave]).astype(np.float32), format="fltp", layout="stereo"
        )
        frame.sample_rate = rate
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            out.mux(packet)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("extension", "container", "codec", "rate"),
    [
        ("m4a", "mp4", "aac", 16000),
        ("aac", "adts", "aac", 16000),
        ("webm", "webm", "libopus", 48000),
    ],
)
def test_formats_soundfile_lacks_decode_through_ffmpeg(extension, container, codec, rate):
    tone = 0.5 * np.sin(2 * np.pi * 440 * np.arange(rate) / rate)
    data = encode_with_ffmpeg(tone, rate, container, codec)
    audio = decode_audio(data, SR, extension)
    # One second at 16 kHz, give or take the codec's priming and padding.
    assert abs(audio.shape[0] - SR) < 0.1 * SR
    assert 0.2 < float(audio.abs().max()) <= 1.0
    spectrum = torch.fft.rfft(audio[2000:14000]).abs()
    assert abs(int(spectrum.argmax()) * SR / 12000 - 440) < 10


def test_start_up_names_the_formats_that_would_be_skipped(monkeypatch):
    import importlib.util

    from xares.data.samples import undecodable_formats

    assert undecodable_formats() == []
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "av" else real(name, *a)
    )
    assert {"m4a", "aac", "webm"} <= set(undecodable_formats())
    assert not {"flac", "wav", "ogg", "opus"} & set(undecodable_formats())

"""The generated offline suite: speech synthesis, shard layout, determinism, learnability."""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from xares.suites.mini import (
    GENERATOR_VERSION,
    MINI_TASKS,
    SpeechError,
    Voice,
    ensure_mini_suite,
    estimate_text_chance,
    recipes,
    resolve_sizes,
    speech,
    synthesize,
    writer,
)

REPO = Path(__file__).resolve().parents[1]
TINY = writer.SIZE_PRESETS["tiny"]
# Only the speech tasks need eSpeak NG; the sound tasks and metadata are tested without it.
requires_espeak = pytest.mark.skipif(
    importlib.util.find_spec("espeakng_loader") is None,
    reason="speech synthesis needs `pip install espeakng-loader`",
)


def read_shard(path: Path) -> dict[str, dict[str, bytes]]:
    samples: dict[str, dict[str, bytes]] = {}
    with tarfile.open(path) as tar:
        for member in tar.getmembers():
            key, ext = member.name.split(".", 1)
            samples.setdefault(key, {})[ext] = tar.extractfile(member).read()
    return samples


def read_split(root: Path, task: str, split: str) -> dict[str, dict[str, bytes]]:
    out: dict[str, dict[str, bytes]] = {}
    for shard in sorted((root / task / split).glob("*.tar")):
        out.update(read_shard(shard))
    return out


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory) -> Path:
    return ensure_mini_suite(tmp_path_factory.mktemp("mini") / "a", size="tiny", progress=False)


# --------------------------------------------------------------------------- speech


@requires_espeak
def test_speech_is_audible_16k_float():
    audio = synthesize("the quick brown fox", Voice("en-us", "m3"))
    assert audio.dtype == np.float32 and audio.ndim == 1
    seconds = audio.size / speech.SAMPLE_RATE
    assert 0.4 < seconds < 3.0
    assert np.sqrt(np.mean(audio**2)) > 0.01
    assert np.abs(audio).max() <= 1.0


@requires_espeak
def test_speech_is_deterministic_whatever_came_before():
    voice = Voice("en-us", "f2", rate=160, pitch=70)
    first = synthesize("hello there my friend", voice)
    synthesize("bonjour mes amis", Voice("fr", "m1", pitch=20))
    synthesize("guten tag", Voice("de", "klatt"))
    again = synthesize("hello there my friend", voice)
    assert np.array_equal(first, again)


@requires_espeak
def test_speech_languages_and_voices_differ():
    text = "one two three"
    base = synthesize(text, Voice("en-us", "m3"))
    for other in (Voice("en-us", "f3"), Voice("en-us", "m3", pitch=90), Voice("de", "m3")):
        audio = synthesize(text, other)
        assert audio.size != base.size or not np.allclose(audio, base)
    assert synthesize("das ist gut", Voice("de")).size != synthesize("c'est bon", Voice("fr")).size


@requires_espeak
@pytest.mark.parametrize("language", list(recipes.LANGUAGES))
def test_each_language_reads_its_own_script(language):
    code, words = recipes.LANGUAGES[language]
    phrase = " ".join(words[:5])
    audio = synthesize(phrase, Voice(code, "m3"))
    # Text a voice cannot read comes out as silence or as a few spelled-out symbols.
    assert audio.size / speech.SAMPLE_RATE > 0.12 * len(phrase.split())
    assert np.sqrt(np.mean(audio**2)) > 0.01
    if language != "english":
        english = synthesize(phrase, Voice("en-us", "m3"))
        assert english.size != audio.size or not np.allclose(english, audio)


@requires_espeak
def test_unknown_voice_is_a_clear_error():
    with pytest.raises(SpeechError, match="no voice"):
        synthesize("hello", Voice("xx-notalanguage"))


def test_missing_loader_names_the_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "espeakng_loader", None)
    with pytest.raises(SpeechError, match="pip install espeakng-loader"):
        speech._Engine()


def test_resample_keeps_a_tone_and_removes_aliases():
    t = np.arange(22050) / 22050
    tone = speech.resample(np.sin(2 * np.pi * 440 * t), 22050, 16000)
    assert tone.size == 16000
    ref = np.sin(2 * np.pi * 440 * np.arange(16000) / 16000)
    assert np.abs(tone - ref)[200:-200].max() < 1e-3
    alias = speech.resample(np.sin(2 * np.pi * 10000 * t), 22050, 16000)
    assert np.abs(alias[200:-200]).max() < 1e-3


# --------------------------------------------------------------------------- layout


@requires_espeak
def test_tiny_suite_layout_and_labels(tiny_root):
    manifest = json.loads((tiny_root / "manifest.json").read_text())
    assert manifest["generator_version"] == GENERATOR_VERSION
    assert manifest["seed"] == 0
    assert set(manifest["tasks"]) == set(MINI_TASKS)
    for task, info in MINI_TASKS.items():
        assert manifest["tasks"][task]["counts"] == TINY
        for split in recipes.SPLITS:
            shard = tiny_root / task / split / f"{task}_{split}_000000.tar"
            assert shard.is_file()
            samples = read_split(tiny_root, task, split)
            assert len(samples) == TINY[split]
            for key, parts in samples.items():
                assert key.startswith(f"{task}_{split}_")
                assert set(parts) == {"flac", "json"}
                meta = json.loads(parts["json"])
                check_label(task, info, meta[info["label_key"]])
                audio, sr = sf.read(io.BytesIO(parts["flac"]), dtype="float32")
                assert sr == 16000 and audio.ndim == 1
                assert 0.5 <= audio.size / sr <= recipes.MAX_SECONDS + 1e-3
                assert np.abs(audio).max() > 0.05


def check_label(task: str, info: dict, value) -> None:
    classes = info["classes"]
    if task == "multilabel":
        parts = value.split(";")
        assert 1 <= len(parts) <= 3 and parts == sorted(parts)
        assert set(parts) <= set(classes)
    elif task == "transcription":
        vocab = {"the", *recipes.ADJECTIVES, *recipes.NOUNS, *recipes.VERBS, *recipes.ADVERBS}
        assert 5 <= len(value.split()) <= 7 and set(value.split()) <= vocab
    elif task == "captioning":
        assert isinstance(value, list) and 2 <= len(value) <= 3
        assert all(isinstance(c, str) and len(c.split()) >= 4 for c in value)
    else:
        assert value in classes


@requires_espeak
def test_classification_labels_are_balanced(tiny_root):
    samples = read_split(tiny_root, "keywords", "train")
    labels = [json.loads(s["json"])["label"] for s in samples.values()]
    counts = {c: labels.count(c) for c in MINI_TASKS["keywords"]["classes"]}
    assert max(counts.values()) - min(counts.values()) <= 1


@requires_espeak
def test_second_call_is_a_no_op(tiny_root):
    files = sorted(p for p in tiny_root.rglob("*") if p.is_file())
    before = {p: p.stat().st_mtime_ns for p in files}
    manifest = (tiny_root / "manifest.json").read_bytes()
    assert ensure_mini_suite(tiny_root, size="tiny", progress=False) == tiny_root
    assert {p: p.stat().st_mtime_ns for p in files} == before
    assert (tiny_root / "manifest.json").read_bytes() == manifest
    assert sorted(p for p in tiny_root.rglob("*") if p.is_file()) == files


@requires_espeak
def test_same_seed_gives_identical_bytes(tiny_root, tmp_path):
    # A smaller suite is a prefix of a larger one, so a few tasks suffice here.
    sizes = {
        "keywords": {"train": 5, "test": 3},
        "soundevents": {"train": 3, "test": 2},
        "captioning": {"train": 2, "test": 2},
    }
    other = ensure_mini_suite(tmp_path / "b", size=sizes, progress=False)
    for task, counts in sizes.items():
        for split in recipes.SPLITS:
            mine = read_split(other, task, split)
            theirs = read_split(tiny_root, task, split)
            assert len(mine) == counts[split]
            for key, parts in mine.items():
                assert parts == theirs[key], key


def test_seed_or_size_change_regenerates(tmp_path):
    sizes = {"soundevents": {"train": 3, "test": 2}}
    root = ensure_mini_suite(tmp_path, seed=0, size=sizes, progress=False)
    first = read_split(root, "soundevents", "train")
    ensure_mini_suite(root, seed=1, size=sizes, progress=False)
    assert json.loads((root / "manifest.json").read_text())["seed"] == 1
    second = read_split(root, "soundevents", "train")
    assert first.keys() == second.keys()
    assert all(first[k]["flac"] != second[k]["flac"] for k in first)

    smaller = {"instrument": {"train": 2, "test": 1}}
    ensure_mini_suite(root, seed=1, size=smaller, progress=False)
    assert not (root / "soundevents").exists()  # stale shards would leak into a glob
    assert len(read_split(root, "instrument", "train")) == 2


def test_deleted_shard_is_regenerated(tmp_path):
    sizes = {"instrument": {"train": 2, "test": 1}}
    root = ensure_mini_suite(tmp_path, size=sizes, progress=False)
    shard = root / "instrument" / "test" / "instrument_test_000000.tar"
    shard.unlink()
    ensure_mini_suite(root, size=sizes, progress=False)
    assert shard.is_file()


def test_interrupted_generation_leaves_no_complete_looking_shard(tmp_path, monkeypatch):
    calls = {"n": 0}
    real = recipes.render_sample

    def flaky(*args):
        calls["n"] += 1
        if calls["n"] > 3:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(recipes, "render_sample", flaky)
    with pytest.raises(KeyboardInterrupt):
        ensure_mini_suite(tmp_path, size={"soundevents": {"train": 5, "test": 2}}, progress=False)
    assert not (tmp_path / "manifest.json").exists()
    leftovers = [p.name for p in tmp_path.rglob("*") if p.is_file() and p.name != ".lock"]
    assert leftovers == []


@requires_espeak
def test_train_and_test_differ(tiny_root):
    for task in MINI_TASKS:
        digests = {}
        for split in recipes.SPLITS:
            samples = read_split(tiny_root, task, split)
            digests[split] = {hashlib.sha1(s["flac"]).hexdigest() for s in samples.values()}
        assert not digests["train"] & digests["test"], task
    for split in recipes.SPLITS:
        texts = read_split(tiny_root, "transcription", split).values()
        assert all(recipes.sentence_split(json.loads(s["json"])["text"]) == split for s in texts)


def test_sizes():
    assert resolve_sizes("tiny")["keywords"] == TINY
    assert set(resolve_sizes("default")) == set(MINI_TASKS)
    assert resolve_sizes({"voice": {"train": 3}}) == {"voice": {"train": 3, "test": 0}}
    with pytest.raises(ValueError, match="Unknown mini-suite size"):
        resolve_sizes("huge")
    with pytest.raises(ValueError, match="Unknown mini-suite task"):
        resolve_sizes({"nope": {"train": 1, "test": 1}})


# --------------------------------------------------------------------------- task metadata


def test_task_table():
    assert len(MINI_TASKS) == 9
    for info in MINI_TASKS.values():
        assert {"classes", "chance", "metric", "label_key", "prompt"} <= set(info)
        if info["metric"] == "Accuracy":
            assert info["chance"] == pytest.approx(1 / len(info["classes"]))
    assert len(MINI_TASKS["keywords"]["classes"]) >= 10
    assert len(MINI_TASKS["language"]["classes"]) >= 6
    assert len(MINI_TASKS["soundevents"]["classes"]) >= 8
    assert len(MINI_TASKS["instrument"]["classes"]) >= 6


@pytest.mark.parametrize("task", ["transcription", "captioning"])
def test_open_task_chance_matches_estimate(task):
    assert MINI_TASKS[task]["chance"] == pytest.approx(
        estimate_text_chance(task, trials=800), abs=0.03
    )


def test_task_config_matches_suite():
    from omegaconf import OmegaConf

    task_cfg = OmegaConf.load(REPO / "conf" / "task" / "mini.yaml")
    cfg = OmegaConf.create({"paths": {"data_dir": "/data"}, "task": task_cfg})
    OmegaConf.resolve(cfg)
    task = OmegaConf.to_container(cfg.task)
    assert task["name"] == "mini" and task["max_steps"] > 0
    assert task["prepare"]["_target_"] == "xares.suites.mini.ensure_mini_suite"
    assert task["prepare"]["root"] == "/data/mini"
    assert set(task["train"]) == set(MINI_TASKS)
    assert set(task["eval"]) == {f"eval_{name}" for name in MINI_TASKS}
    for name, info in MINI_TASKS.items():
        train, ev = task["train"][name], task["eval"][f"eval_{name}"]
        assert train["shards"] == [f"/data/mini/{name}/train/*.tar"]
        assert ev["shards"] == [f"/data/mini/{name}/test/*.tar"]
        for entry in (train, ev):
            assert entry["label_key"] == info["label_key"]
            assert entry["prompt"] == info["prompt"]
        assert ev["metric"] == info["metric"]
        assert ev["chance"] == pytest.approx(info["chance"], abs=1e-3)


# --------------------------------------------------------------------------- learnability


def test_labels_are_a_function_of_the_audio(tmp_path):
    """Nearest class centroid on clip-level log-mel statistics beats chance twice over."""
    torch = pytest.importorskip("torch")
    torchaudio = pytest.importorskip("torchaudio")

    sizes = {"soundevents": {"train": 40, "test": 20}, "instrument": {"train": 49, "test": 28}}
    root = ensure_mini_suite(tmp_path, size=sizes, progress=False)
    mel = torchaudio.transforms.MelSpectrogram(16000, n_fft=512, hop_length=160, n_mels=64)

    def features(task: str, split: str):
        key = MINI_TASKS[task]["label_key"]
        x, y = [], []
        for parts in read_split(root, task, split).values():
            audio, _ = sf.read(io.BytesIO(parts["flac"]), dtype="float32")
            logmel = torch.log(mel(torch.from_numpy(audio)) + 1e-6)
            x.append(torch.cat([logmel.mean(1), logmel.std(1)]).numpy())
            y.append(json.loads(parts["json"])[key])
        return np.stack(x), np.array(y)

    # Small per-clip transforms: extra intra-op threads only add contention.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        data = {t: (features(t, "train"), features(t, "test")) for t in sizes}
    finally:
        torch.set_num_threads(threads)
    for task, ((x_train, y_train), (x_test, y_test)) in data.items():
        mu, sd = x_train.mean(0), x_train.std(0) + 1e-6
        x_train, x_test = (x_train - mu) / sd, (x_test - mu) / sd
        classes = sorted(set(y_train))
        centroids = np.stack([x_train[y_train == c].mean(0) for c in classes])
        dist = ((x_test[:, None] - centroids[None]) ** 2).sum(-1)
        accuracy = float(np.mean(np.array(classes)[dist.argmin(1)] == y_test))
        assert accuracy > 2 * MINI_TASKS[task]["chance"], (task, accuracy)


@requires_espeak
def test_more_talkers_cover_more_of_the_clip():
    """Speaker count is audible in time as well as timbre: talkers join one after another."""
    coverage = {}
    for count in ("1", "2", "3", "4"):
        fractions = []
        for index in range(6):
            rng = np.random.default_rng([7, int(count), index])
            audio, meta = recipes._speakercount(rng, "train", count)
            assert meta == {"num_speakers": count}
            assert audio.size == 3 * recipes.SAMPLE_RATE
            # 10 ms frames louder than a tenth of the clip's peak frame count as speech.
            envelope = np.abs(audio).reshape(-1, 160).max(1)
            fractions.append(float(np.mean(envelope > 0.1 * envelope.max())))
        coverage[count] = np.mean(fractions)
    values = [coverage[c] for c in ("1", "2", "3", "4")]
    assert all(a < b for a, b in zip(values, values[1:])), coverage
    assert values[-1] > 2 * values[0], coverage


@requires_espeak
def test_keyword_sits_in_the_middle_of_its_second():
    for index, word in enumerate(recipes.KEYWORDS):
        audio, meta = recipes._keywords(np.random.default_rng([11, index]), "test", word)
        assert meta == {"label": word} and audio.size >= recipes.SAMPLE_RATE
        energy = audio.astype(np.float64) ** 2
        centre = float((np.arange(audio.size) * energy).sum() / energy.sum())
        assert abs(centre - audio.size / 2) < 0.15 * recipes.SAMPLE_RATE, word

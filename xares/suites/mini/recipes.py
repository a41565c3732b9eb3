"""The mini suite's recipes: voices, vocabularies, the nine tasks and their chance levels.

Nine tasks mirror the kinds of tasks in the two challenge tracks. Every clip is
synthesised from a seed (speech with eSpeak NG, everything else with numpy), mixed
with background noise at a random SNR and passed through a random synthetic room,
then written as WebDataset tar shards: ``<root>/<task>/<split>/<task>_<split>_NNNNNN.tar``
holding ``<key>.flac`` (16 kHz mono, 16-bit) and ``<key>.json`` (the label fields).

Train and test differ in content, so scores measure generalisation rather than
recall: test speech uses voice variants never heard in training, and speaking rates
(and pitches, outside the ``voice`` task whose classes are pitch bands) from a band
held out of training; test sentences for ``transcription`` come from a fixed quarter
of the grammar's sentences that training never uses; every noise, room and synthesis
parameter is an independent draw. Classification labels are balanced within each
split, and a smaller suite is a prefix of a larger one with the same seed.

| task | like | label key | classes | metric | chance |
|---|---|---|---|---|---|
| keywords | Speech Commands | ``label`` | yes, no, up, down, left, right, on, off, stop, go | Accuracy | 0.100 |
| language | VoxLingua107 | ``label`` | english, mandarin, vietnamese, russian, swahili, hindi | Accuracy | 0.167 |
| speakercount | LibriCount | ``num_speakers`` | 1, 2, 3, 4 (talkers joining in turn, overlapping) | Accuracy | 0.250 |
| voice | speaker / gender | ``label`` | male low, male high, female low, female high | Accuracy | 0.250 |
| soundevents | ESC-50 | ``label`` | siren, dog bark, engine, rain, alarm, bell, bird chirp, clapping, water drops, knocking | Accuracy | 0.100 |
| instrument | NSynth | ``instrument_family_str`` | flute, reed, brass, guitar, mallet, organ, keyboard | Accuracy | 0.143 |
| multilabel | FSD50K | ``labels`` | 1-3 of the sound event classes, ``;``-joined, sorted | mAP | ~0.20 |
| transcription | LibriSpeech | ``text`` | open: "the <adj> <noun> <verb> the <noun> [<adverb>]", 43 words | iWER | ~0.29 |
| captioning | Clotho | ``caption`` | open: event + background + loudness, 3 references | TokenF1 | ~0.27 |

Chance levels: 1 / number of classes for the single-label tasks. For ``multilabel``
it is the mean label prevalence (a clip holds 2 of 10 classes on average, and the
average precision of answers that ignore the audio equals the prevalence). For the
open tasks it is the expected score of a random sentence (caption) drawn from the
same grammar, scored against a random clip's reference(s): word-level iWER for
``transcription`` and bag-of-words token F1 averaged over the references for
``captioning`` (see :func:`estimate_text_chance`). These are what a system that
learned the answer format but not the audio would get.
"""

from __future__ import annotations

import dataclasses
import io
import json
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from xares.metrics import TokenF1, iWER
from xares.metrics.base import Metric

from . import sounds
from .speech import SAMPLE_RATE, Voice, synthesize

# Bump when a recipe changes what it renders: a cached suite of another version is rebuilt.
GENERATOR_VERSION = 4
SPLITS = ("train", "test")
MAX_SECONDS = 4.0

# --------------------------------------------------------------------------- voices

ENGLISH_ACCENTS = ("en-us", "en", "en-029")
MALE = {
    "train": ("m1", "m2", "m3", "m4", "m6", "antonio", "travis", "victor"),
    "test": ("m5", "m7", "michel", "Denis"),
}
FEMALE = {
    "train": ("f1", "f2", "f3", "belinda", "steph", "Andrea"),
    "test": ("f4", "f5", "linda", "anika"),
}
# eSpeak pitch / rate: the test split speaks from the middle band, never heard in training.
PITCH_BANDS = {"train": ((20, 42), (58, 80)), "test": ((42, 58),)}
RATE_BANDS = {"train": ((135, 160), (185, 210)), "test": ((160, 185),)}


def _from_bands(rng: np.random.Generator, bands) -> int:
    lo, hi = bands[int(rng.integers(len(bands)))]
    return int(rng.integers(lo, hi + 1))


def _variant(rng: np.random.Generator, split: str, gender: str | None = None) -> str:
    gender = gender or ("male" if rng.random() < 0.5 else "female")
    pool = (MALE if gender == "male" else FEMALE)[split]
    return str(pool[int(rng.integers(len(pool)))])


def _voice(
    rng: np.random.Generator,
    split: str,
    language: str | None = None,
    variant: str | None = None,
    pitch: int | None = None,
) -> Voice:
    return Voice(
        language=language if language is not None else str(rng.choice(ENGLISH_ACCENTS)),
        variant=variant if variant is not None else _variant(rng, split),
        rate=_from_bands(rng, RATE_BANDS[split]),
        pitch=pitch if pitch is not None else _from_bands(rng, PITCH_BANDS[split]),
        pitch_range=int(rng.integers(35, 75)),
    )


# --------------------------------------------------------------------------- text

KEYWORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")

# Six languages from six families (Germanic, Sinitic, Vietic, Slavic, Bantu, Indo-Aryan), each
# in its own script. Closely related languages (say Spanish and Italian) are near-identical in
# eSpeak's formant voice; a linear probe on log-mel frames told them apart barely above chance,
# so the task would measure the data budget rather than the encoder.
LANGUAGES: dict[str, tuple[str, tuple[str, ...]]] = {
    "english": (
        "en-us",
        tuple(
            "the house is very big and weather good today we have a small dog my friend "
            "likes water in morning evening city green tree where there time people "
            "always never".split()
        ),
    ),
    "mandarin": (
        "cmn",
        tuple(
            "房子 很 大 而且 天气 好 今天 我们 有 一只 小 狗 我的 朋友 喜欢 水 早上 晚上 "
            "城市 绿色 树 哪里 那里 时间 人们 总是 从不".split()
        ),
    ),
    "vietnamese": (
        "vi",
        tuple(
            "nhà rất lớn và thời tiết tốt hôm nay chúng tôi có một con chó nhỏ bạn tôi "
            "thích nước buổi sáng tối thành phố xanh cây ở đâu đó người luôn không bao "
            "giờ".split()
        ),
    ),
    "russian": (
        "ru",
        tuple(
            "дом очень большой и погода хорошая сегодня у нас есть маленькая собака мой "
            "друг любит воду утром вечером город зелёный дерево где там время люди всегда "
            "никогда".split()
        ),
    ),
    "swahili": (
        "sw",
        tuple(
            "nyumba ni kubwa sana na hali ya hewa nzuri leo tuna mbwa mdogo rafiki yangu "
            "anapenda maji asubuhi jioni mji kijani mti wapi pale wakati watu daima "
            "kamwe".split()
        ),
    ),
    "hindi": (
        "hi",
        tuple(
            "घर बहुत बड़ा है और मौसम अच्छा आज हमारे पास एक छोटा कुत्ता मेरा दोस्त पानी "
            "पसंद सुबह शाम शहर हरा पेड़ कहाँ वहाँ समय लोग हमेशा कभी नहीं".split()
        ),
    ),
}

ADJECTIVES = ("red", "big", "small", "old", "young", "happy", "green", "dark", "tall", "little")
NOUNS = (
    "dog",
    "cat",
    "bird",
    "man",
    "woman",
    "child",
    "farmer",
    "teacher",
    "horse",
    "fish",
    "boy",
    "girl",
    "king",
    "doctor",
)
VERBS = (
    "saw",
    "found",
    "liked",
    "helped",
    "followed",
    "called",
    "watched",
    "fed",
    "pushed",
    "carried",
    "chased",
    "heard",
)
ADVERBS = ("today", "again", "slowly", "quickly", "yesterday", "twice")
TEMPLATES = (
    ("the", "A", "N", "V", "the", "N"),
    ("the", "N", "V", "the", "A", "N"),
    ("the", "A", "N", "V", "the", "A", "N"),
    ("the", "N", "V", "the", "N", "R"),
    ("the", "A", "N", "V", "the", "N", "R"),
)
_SLOTS = {"A": ADJECTIVES, "N": NOUNS, "V": VERBS, "R": ADVERBS}


def _random_sentence(rng: np.random.Generator) -> str:
    template = TEMPLATES[int(rng.integers(len(TEMPLATES)))]
    words = [w if w not in _SLOTS else str(rng.choice(_SLOTS[w])) for w in template]
    return " ".join(words)


def sentence_split(sentence: str) -> str:
    """Which split a grammar sentence belongs to (a fixed hash partition, 3:1)."""
    return "test" if zlib.crc32(sentence.encode()) % 4 == 0 else "train"


def _sentence(rng: np.random.Generator, split: str) -> str:
    while True:
        s = _random_sentence(rng)
        if sentence_split(s) == split:
            return s


# --------------------------------------------------------------------------- captions

CAPTION_EVENTS: dict[str, tuple[str, str, str]] = {
    # class: (subject, verb, gerund)
    "siren": ("a siren", "wails", "wailing"),
    "dog bark": ("a dog", "barks", "barking"),
    "engine": ("an engine", "runs", "running"),
    "alarm": ("an alarm", "beeps", "beeping"),
    "bell": ("a bell", "rings", "ringing"),
    "bird chirp": ("a bird", "chirps", "chirping"),
    "clapping": ("someone", "claps", "clapping"),
    "water drops": ("water", "drips", "dripping"),
    "knocking": ("someone", "knocks", "knocking"),
}
CAPTION_BACKGROUNDS: dict[str, tuple[str, str]] = {
    # background: (clause, noun phrase)
    "rain": ("rain falls", "rain"),
    "wind": ("wind blows", "wind"),
    "traffic": ("traffic passes", "traffic"),
    "crowd": ("people talk", "people talking"),
}
# Event level relative to the background, in dB.
CAPTION_LOUDNESS = {"loudly": (8.0, 16.0), "softly": (-5.0, 1.0)}


def caption_references(event: str, background: str, loudness: str) -> list[str]:
    subject, verb, gerund = CAPTION_EVENTS[event]
    clause, noun = CAPTION_BACKGROUNDS[background]
    return [
        f"{subject} {verb} {loudness} while {clause}",
        f"{clause} as {subject} {verb} {loudness}",
        f"{subject} {gerund} {loudness} with {noun} in the background",
    ]


# --------------------------------------------------------------------------- clip helpers


def _noise_bed(rng: np.random.Generator, n: int) -> np.ndarray:
    duration = n / SAMPLE_RATE
    # No traffic bed: its low hum would pass for the "engine" class.
    kind = str(rng.choice(["white", "pink", "brown", "wind"]))
    if kind == "wind":
        return sounds.fit_length(sounds.wind(rng, duration), n)
    return sounds.fit_length(sounds.coloured_noise(rng, duration, kind), n)


def _finish(
    rng: np.random.Generator,
    x: np.ndarray,
    snr: tuple[float, float],
    reverb_prob: float = 0.7,
) -> np.ndarray:
    """Room, background noise and a random playback level."""
    x = x.astype(np.float32)
    if rng.random() < reverb_prob:
        x = sounds.reverb(rng, x)
    x = sounds.mix_at_snr(x, _noise_bed(rng, x.size), rng.uniform(*snr))
    peak = float(np.max(np.abs(x))) + 1e-9
    return (x * (rng.uniform(0.3, 0.9) / peak)).astype(np.float32)


def _pad_clip(rng: np.random.Generator, x: np.ndarray, min_seconds: float) -> np.ndarray:
    """Place ``x`` at a random offset in a clip of at least ``min_seconds``."""
    lead = int(rng.uniform(0.05, 0.3) * SAMPLE_RATE)
    tail = int(rng.uniform(0.05, 0.3) * SAMPLE_RATE)
    n = max(int(min_seconds * SAMPLE_RATE), x.size + lead + tail)
    n = min(n, int(MAX_SECONDS * SAMPLE_RATE))
    spare = max(0, n - x.size)
    start = int(rng.integers(0, spare + 1)) if x.size + lead + tail <= n else min(lead, spare)
    out = np.zeros(n, dtype=np.float32)
    sounds.place(out, x, start)
    return out


def _speak(text: str, voice: Voice, max_seconds: float = MAX_SECONDS - 0.3) -> np.ndarray:
    """Speech at a fixed RMS; sped up if needed so a clip never cuts off its label."""
    x = synthesize(text, voice)
    while x.size > max_seconds * SAMPLE_RATE and voice.rate < 400:
        voice = dataclasses.replace(voice, rate=int(voice.rate * 1.25))
        x = synthesize(text, voice)
    return x / (sounds.rms(x) + 1e-9) * 0.1


# --------------------------------------------------------------------------- tasks

Sample = tuple[np.ndarray, dict[str, Any]]


def _keywords(rng, split, label) -> Sample:
    voice = _voice(rng, split)
    word = _speak(label, voice)
    # Speech Commands words sit roughly in the middle of their 1 s clips.
    n = max(SAMPLE_RATE, word.size + int(0.1 * SAMPLE_RATE))
    x = np.zeros(n, dtype=np.float32)
    centre = (n - word.size) // 2
    jitter = int(0.05 * SAMPLE_RATE)
    sounds.place(x, word, centre + int(rng.integers(-jitter, jitter + 1)))
    return _finish(rng, x, (15, 35), reverb_prob=0.4), {"label": label}


def _language(rng, split, label) -> Sample:
    code, words = LANGUAGES[label]
    if label == "english":
        code = str(rng.choice(ENGLISH_ACCENTS))
    phrase = " ".join(str(w) for w in rng.choice(words, int(rng.integers(4, 7))))
    x = _pad_clip(rng, _speak(phrase, _voice(rng, split, language=code)), 1.5)
    return _finish(rng, x, (10, 30)), {"label": label, "phrase": phrase}


def _speakercount(rng, split, label) -> Sample:
    # Talkers join one after another and talk over each other: each says a short phrase and
    # the next starts before it ends. Full sentences from every talker at once (the first
    # version) filled the clip whatever the count, so only the mixture's timbre differed and a
    # short training run never learned it; here more talkers also means more speech and more
    # overlap, as in a real conversation where people interrupt.
    count = int(label)
    n = int(3.0 * SAMPLE_RATE)
    phrases: list[np.ndarray] = []
    variants: list[str] = []
    for i in range(count):
        # Alternate genders and never repeat a variant, so every talker is distinct.
        gender = ("male", "female")[(i + int(rng.integers(2))) % 2]
        while (v := _variant(rng, split, gender)) in variants:
            pass
        variants.append(v)
        words = _random_sentence(rng).split()[:3]
        phrases.append(_speak(" ".join(words), _voice(rng, split, variant=v), max_seconds=1.2))
    starts = [0]
    for previous in phrases[:-1]:
        starts.append(starts[-1] + int(previous.size * rng.uniform(0.35, 0.65)))
    extent = max(s + p.size for s, p in zip(starts, phrases))
    if extent > n:  # squeeze the entrances (never the phrases) into the clip
        squeeze = (n - phrases[-1].size) / max(starts[-1], 1)
        starts = [int(s * min(1.0, squeeze)) for s in starts]
        extent = max(s + p.size for s, p in zip(starts, phrases))
    offset = int(rng.integers(0, max(1, n - extent + 1)))
    canvas = np.zeros(n, dtype=np.float32)
    for start, speech in zip(starts, phrases):
        sounds.place(canvas, speech, offset + start, gain=10 ** (rng.uniform(-3, 3) / 20))
    return _finish(rng, canvas, (12, 30)), {"num_speakers": label}


VOICE_CLASSES = ("male low", "male high", "female low", "female high")
VOICE_PITCH = {"low": (0, 25), "high": (75, 100)}


def _voice_task(rng, split, label) -> Sample:
    gender, band = label.split()
    variant = _variant(rng, split, gender)
    lo, hi = VOICE_PITCH[band]
    voice = _voice(rng, split, variant=variant, pitch=int(rng.integers(lo, hi + 1)))
    x = _pad_clip(rng, _speak(_random_sentence(rng), voice), 1.5)
    return _finish(rng, x, (12, 30)), {"label": label, "variant": variant, "pitch": voice.pitch}


def _soundevents(rng, split, label) -> Sample:
    duration = rng.uniform(1.2, 2.0)
    x = sounds.SOUND_EVENTS[label](rng, duration)
    x = _pad_clip(rng, x, 2.0)
    return _finish(rng, x, (6, 30)), {"label": label}


def _instrument(rng, split, label) -> Sample:
    pitch = int(rng.integers(45, 82))
    x = sounds.instrument_note(rng, label, pitch, rng.uniform(1.0, 1.6))
    x = _pad_clip(rng, x, 1.2)
    return _finish(rng, x, (20, 40), reverb_prob=0.5), {
        "instrument_family_str": label,
        "pitch": pitch,
    }


def _multilabel(rng, split, label) -> Sample:
    classes = list(sounds.SOUND_EVENTS)
    k = int(rng.integers(1, 4))
    chosen = sorted(str(c) for c in rng.choice(classes, k, replace=False))
    n = int(3.0 * SAMPLE_RATE)
    canvas = np.zeros(n, dtype=np.float32)
    for name in chosen:
        dur = rng.uniform(1.0, 2.5)
        x = sounds.SOUND_EVENTS[name](rng, dur)
        x = x / (sounds.rms(x) + 1e-9) * 0.1
        start = int(rng.integers(0, max(1, n - x.size)))
        sounds.place(canvas, x, start, gain=10 ** (rng.uniform(-4, 4) / 20))
    return _finish(rng, canvas, (10, 30)), {"labels": ";".join(chosen)}


def _transcription(rng, split, label) -> Sample:
    text = _sentence(rng, split)
    x = _pad_clip(rng, _speak(text, _voice(rng, split)), 1.5)
    return _finish(rng, x, (15, 35), reverb_prob=0.5), {"text": text}


def _captioning(rng, split, label) -> Sample:
    event = str(rng.choice(list(CAPTION_EVENTS)))
    background = str(rng.choice(list(CAPTION_BACKGROUNDS)))
    loudness = str(rng.choice(list(CAPTION_LOUDNESS)))
    n = int(rng.uniform(3.0, 3.5) * SAMPLE_RATE)
    duration = n / SAMPLE_RATE
    if background == "crowd":
        bed = np.zeros(n, dtype=np.float32)
        for _ in range(2):
            babble = _speak(_random_sentence(rng), _voice(rng, split))[:n]
            sounds.place(bed, babble, int(rng.integers(0, n - babble.size + 1)))
    else:
        bed = sounds.fit_length(sounds.BACKGROUNDS[background](rng, duration), n)
    event_audio = sounds.SOUND_EVENTS[event](rng, rng.uniform(1.5, duration - 0.3))
    canvas = np.zeros(n, dtype=np.float32)
    sounds.place(canvas, event_audio, int(rng.integers(0, n - event_audio.size + 1)))
    # The loudness word describes the event against the background, so the
    # background is scaled relative to the event's level while it sounds.
    active = np.abs(canvas) > 1e-4
    level = sounds.rms(canvas[active]) if active.any() else 1.0
    gain_db = rng.uniform(*CAPTION_LOUDNESS[loudness])
    bed = bed / (sounds.rms(bed) + 1e-9) * level * 10 ** (-gain_db / 20)
    x = _finish(rng, canvas + bed, (25, 40))
    meta = {
        "caption": caption_references(event, background, loudness),
        "event": event,
        "background": background,
        "loudness": loudness,
    }
    return x, meta


@dataclass(frozen=True)
class MiniTask:
    name: str
    like: str
    label_key: str
    prompt: str
    metric: str
    classes: tuple[str, ...] | None
    chance: float
    make: Callable[[np.random.Generator, str, str | None], Sample]
    # Classification tasks get a balanced label sequence decided up front.
    balanced: bool = True

    def info(self) -> dict[str, Any]:
        return {
            "classes": list(self.classes) if self.classes is not None else None,
            "chance": self.chance,
            "metric": self.metric,
            "label_key": self.label_key,
            "prompt": self.prompt,
            "like": self.like,
        }


_TASK_LIST = (
    MiniTask(
        "keywords",
        "Speech Commands",
        "label",
        "Which keyword is spoken?",
        "Accuracy",
        KEYWORDS,
        1 / len(KEYWORDS),
        _keywords,
    ),
    MiniTask(
        "language",
        "VoxLingua107",
        "label",
        "Classify the language.",
        "Accuracy",
        tuple(LANGUAGES),
        1 / len(LANGUAGES),
        _language,
    ),
    MiniTask(
        "speakercount",
        "LibriCount",
        "num_speakers",
        "Count the amount of speakers.",
        "Accuracy",
        ("1", "2", "3", "4"),
        0.25,
        _speakercount,
    ),
    MiniTask(
        "voice",
        "VoxCeleb gender / speaker",
        "label",
        "Describe the voice.",
        "Accuracy",
        VOICE_CLASSES,
        1 / len(VOICE_CLASSES),
        _voice_task,
    ),
    MiniTask(
        "soundevents",
        "ESC-50",
        "label",
        "Classify the sound event.",
        "Accuracy",
        tuple(sounds.SOUND_EVENTS),
        1 / len(sounds.SOUND_EVENTS),
        _soundevents,
    ),
    MiniTask(
        "instrument",
        "NSynth",
        "instrument_family_str",
        "Classify the music instrument.",
        "Accuracy",
        tuple(sounds.INSTRUMENTS),
        1 / len(sounds.INSTRUMENTS),
        _instrument,
    ),
    MiniTask(
        "multilabel",
        "FSD50K",
        "labels",
        "List the sound events.",
        "mAP",
        tuple(sounds.SOUND_EVENTS),
        0.2,
        _multilabel,
        balanced=False,
    ),
    MiniTask(
        "transcription",
        "LibriSpeech",
        "text",
        "Transcribe the English speech into text.",
        "iWER",
        None,
        0.29,
        _transcription,
        balanced=False,
    ),
    MiniTask(
        "captioning",
        "Clotho",
        "caption",
        "Generate a short caption for the audio.",
        "TokenF1",
        None,
        0.27,
        _captioning,
        balanced=False,
    ),
)

TASKS: dict[str, MiniTask] = {t.name: t for t in _TASK_LIST}
MINI_TASKS: dict[str, dict[str, Any]] = {t.name: t.info() for t in _TASK_LIST}


# --------------------------------------------------------------------------- chance


def estimate_text_chance(task: str, trials: int = 4000, seed: int = 0) -> float:
    """Monte-Carlo score of answers drawn from the task's grammar, ignoring the audio.

    Scored with the suite's own metrics (``xares.metrics``), pair by pair, as a run scores
    one clip.
    """
    rng = np.random.default_rng(seed)
    total = 0.0
    metric: Metric
    if task == "transcription":
        metric = iWER()
        for _ in range(trials):
            ref, hyp = _random_sentence(rng), _random_sentence(rng)
            total += metric([hyp], [ref])
    elif task == "captioning":
        metric = TokenF1()

        def draw():
            return (
                str(rng.choice(list(CAPTION_EVENTS))),
                str(rng.choice(list(CAPTION_BACKGROUNDS))),
                str(rng.choice(list(CAPTION_LOUDNESS))),
            )

        for _ in range(trials):
            refs = caption_references(*draw())
            hyp = caption_references(*draw())[int(rng.integers(3))]
            total += metric([hyp] * len(refs), refs)
    else:
        raise ValueError(f"no text chance estimate for task {task!r}")
    return total / trials


# --------------------------------------------------------------------------- rendering

_SPLIT_CODE = {"train": 0, "test": 1}


def _task_code(name: str) -> int:
    return zlib.crc32(name.encode())


def balanced_labels(task: MiniTask, split: str, count: int, seed: int) -> list[str | None]:
    # Each block of len(classes) clips holds every class once, in a shuffled order
    # drawn per block: labels stay balanced, and a smaller suite is a prefix of a
    # larger one with the same seed.
    if not task.balanced or task.classes is None:
        return [None] * count
    n_cls = len(task.classes)
    labels: list[str | None] = []
    for block in range(-(-count // n_cls)):
        rng = np.random.default_rng([seed, _task_code(task.name), _SPLIT_CODE[split], 0, block])
        labels.extend(task.classes[i] for i in rng.permutation(n_cls))
    return labels[:count]


def render_sample(task_name: str, split: str, index: int, label: str | None, seed: int):
    """One clip as (key, flac bytes, json bytes); a pure function of its arguments."""
    import soundfile as sf

    task = TASKS[task_name]
    rng = np.random.default_rng([seed, _task_code(task_name), _SPLIT_CODE[split], 1, index])
    audio, meta = task.make(rng, split, label)
    audio = np.clip(np.nan_to_num(audio), -1.0, 1.0)
    buf = io.BytesIO()
    sf.write(buf, audio, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    meta = {**meta, "task": task_name, "split": split}
    key = f"{task_name}_{split}_{index:06d}"
    return key, buf.getvalue(), json.dumps(meta, ensure_ascii=False, sort_keys=True).encode()


__all__ = [
    "GENERATOR_VERSION",
    "MINI_TASKS",
    "SPLITS",
    "TASKS",
    "MiniTask",
    "balanced_labels",
    "caption_references",
    "estimate_text_chance",
    "render_sample",
    "sentence_split",
]

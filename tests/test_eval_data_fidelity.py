"""Test data read as the challenge reads it: whole clips, peak-normalised clipped audio,
garbled labels dropped and counted, and the counts carried to ``scores.json``.

Each expected value follows from the rules of the challenge's loader
(xares-llm ``src/xares_llm/audiowebdataset.py``: ``preprocess_audio``, ``_is_corrupted_text``,
``text_from_json``), worked out by hand.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
import torchaudio
from helpers.config import eval_set

import xares.data.mixing as mixing
from xares.data.mixing import DatasetSource, EvalSet
from xares.data.samples import SkipCounter, decode_audio, looks_corrupt, to_example
from xares.results import scores
from xares.training.module import AudioLLMModule

SR = 16000


def wav(wave: np.ndarray, rate: int = SR) -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, wave, rate, format="WAV", subtype="FLOAT")
    return buffer.getvalue()


def write_tar(path: Path, samples: list[tuple[str, np.ndarray | None, object]]) -> str:
    """Samples as (key, audio or None, json value or raw bytes)."""
    with tarfile.open(path, "w") as tar:
        for key, wave, meta in samples:
            members = [] if wave is None else [(f"{key}.wav", wav(wave))]
            data = meta if isinstance(meta, bytes) else json.dumps(meta).encode()
            members.append((f"{key}.json", data))
            for name, payload in members:
                info = tarfile.TarInfo(name)
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    return str(path)


def tone(seconds: float, peak: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (peak * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


# ---------------------------------------------------------------------------- audio


def test_clipped_audio_is_divided_by_its_peak():
    # [0.5, -2.0, 1.0] peaks at 2.0 > 1: divided by 2.
    out = decode_audio(wav(np.array([0.5, -2.0, 1.0] * 200, dtype=np.float32)), sample_rate=SR)
    torch.testing.assert_close(out[:3], torch.tensor([0.25, -1.0, 0.5]))
    # A peak of exactly 1.0 is not clipped: left as it is.
    same = decode_audio(wav(np.array([0.5, -1.0, 0.25] * 200, dtype=np.float32)), sample_rate=SR)
    torch.testing.assert_close(same[:3], torch.tensor([0.5, -1.0, 0.25]))


def test_peak_normalisation_comes_before_resampling():
    # The reference normalises at the file's rate, then resamples to 16 kHz.
    wave = 3.0 * tone(0.5, peak=1.0)[::2].copy()  # 8 kHz, peak 3
    expected = torchaudio.functional.resample(torch.from_numpy(wave / 3.0), 8000, SR)
    torch.testing.assert_close(
        decode_audio(wav(wave, 8000), sample_rate=SR), expected, atol=1e-6, rtol=1e-5
    )


# ---------------------------------------------------------------------------- labels


@pytest.mark.parametrize(
    ("text", "corrupt"),
    [
        ("", False),  # empty is kept
        ("dog", False),
        ("a b c", False),  # 2 spaces of 5 characters: 0.4 not alphanumeric
        ("a, b", False),  # 2 of 4: exactly 0.5 is not "more than half"
        ("oh [__]", True),  # 5 of 7 not alphanumeric
        ("- I am.", True),  # 5 of 7
        ("aaaaaaaaaaa", True),  # 11 characters, 1 distinct
        ("abcabcabca", False),  # 3 distinct, but only 10 characters
        ("abcabcabcab", True),  # 11 characters, 3 distinct
        ("abcdefghij\u0301\u0302\u0303", False),  # 3 combining marks (3 of 13 not alnum)
        ("abcdefghij\u0301\u0302\u0303\u0304", True),  # 4 combining marks
        ("abcdefghij\u0300\u0300\u0300\u0300", False),  # U+0300 is outside (0x0300, 0x0370)
        ("Bark;Dog;Domestic_animals_and_pets", False),  # 4 of 34
        ("我们在北京", False),  # CJK characters are alphanumeric
    ],
)
def test_corrupt_label_rules(text, corrupt):
    assert looks_corrupt(text) is corrupt


def example(meta, skips):
    raw = {"__key__": "k", "wav": wav(tone(0.1)), "json": json.dumps(meta).encode()}
    return to_example(raw, task="t", label_key="label", prompt="P", sample_rate=SR, skips=skips)


def test_garbled_labels_are_dropped_and_counted_empty_ones_kept():
    skips = SkipCounter("t")
    assert example({"label": "oh [__]"}, skips) is None
    # One garbled caption of three: the clip stays with the other two.
    kept = example({"label": ["a dog barks", "?!?!", "rain falls"]}, skips)
    assert kept.targets == ["a dog barks", "rain falls"]
    # An empty label is an answer (the reference keeps it), not a reason to try `text`.
    assert example({"label": "", "text": "fallback"}, skips).targets == [""]
    assert skips.counts == Counter({"corrupt label": 2})


# ---------------------------------------------------------------------------- eval sets


def read(dataset: EvalSet) -> tuple[dict[str, int], Counter, int]:
    lengths, dropped, empty = {}, Counter(), 0
    batches = list(dataset)
    # Every reader ends with a marker of the set's end (and its last skip counts).
    assert batches[-1]["finished"] == [dataset.source.name] and not batches[-1]["keys"]
    assert not any(b.get("finished") for b in batches[:-1])
    for batch in batches:
        for counts in batch["skipped"].values():
            dropped.update(counts)
        if not batch["keys"] and not batch.get("finished"):
            empty += 1
        for key, mask in zip(batch["keys"], batch["audio_mask"]):
            lengths[key] = int(mask.sum())
    return lengths, dropped, empty


def test_test_clips_are_encoded_whole_unless_a_crop_is_asked_for(tmp_path):
    shard = write_tar(tmp_path / "t.tar", [("long", tone(31.5), {"label": "a"})])
    source = DatasetSource("eval_t", [shard], "label", "P")
    assert read(eval_set(source, batch_size=2))[0] == {"long": int(31.5 * SR)}
    assert read(eval_set(source, batch_size=2, max_seconds=30))[0] == {"long": 30 * SR}


def test_dropped_samples_reach_the_scorer_with_their_reasons(tmp_path):
    shard = write_tar(
        tmp_path / "t.tar",
        [
            ("good", tone(0.2), {"label": "dog"}),
            ("garbled", tone(0.2), {"label": "[__]"}),
            ("no_audio", None, {"label": "cat"}),
            ("no_label", tone(0.2), {"speaker": 3}),
            # The last two are dropped after the last clip that is kept: an empty batch
            # carries their counts.
            ("garbled2", tone(0.2), {"label": "..."}),
            ("no_label2", tone(0.2), {"id": 1}),
        ],
    )
    lengths, dropped, empty = read(
        eval_set(DatasetSource("eval_t", [shard], "label", "P"), batch_size=4)
    )
    assert list(lengths) == ["good"]
    assert dropped == Counter({"corrupt label": 2, "no audio": 1, "missing label": 2})
    assert empty == 0  # the one batch was yielded after every sample had been read

    # Split over two readers, each reports only its own drops; together they add up.
    total = Counter()
    for slot in ((0, 2), (1, 2)):
        source = DatasetSource("eval_t", [shard], "label", "P")
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(mixing, "_process_slot", lambda ranks=None, slot=slot: slot)
            _, part, _ = read(eval_set(source, batch_size=4))
        total += part
    assert total == dropped


def test_a_reader_with_only_dropped_samples_still_reports_them(tmp_path):
    shard = write_tar(tmp_path / "t.tar", [("g", tone(0.2), {"label": "$$$"})])
    lengths, dropped, empty = read(
        eval_set(DatasetSource("e", [shard], "label", "P"), batch_size=2)
    )
    # No batch of clips: the end-of-set marker carries the count.
    assert lengths == {} and dropped == Counter({"corrupt label": 1}) and empty == 0


class EchoModel:
    """Stands in for the AudioLLM: answers every clip with "dog"."""

    def batch_answers(self, batch, **overrides):
        return ["dog"] * len(batch["prompts"])


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
def test_dropped_counts_are_in_the_results_and_scores_json(tmp_path):
    module = AudioLLMModule(
        EchoModel(), optimizer=None, eval_sets={"eval_t": {"metric": "Accuracy"}}
    )
    batch = {
        "audio": torch.zeros(2, 10),
        "audio_mask": torch.ones(2, 10, dtype=torch.long),
        "prompts": ["P", "P"],
        "keys": ["a", "b"],
        "tasks": ["eval_t", "eval_t"],
        "references": [["dog"], ["cat"]],
        "skipped": {"eval_t": {"corrupt label": 2}},
    }
    module.on_test_epoch_start()
    module.test_step(batch, 0)
    module.test_step({**mixing.empty_batch(), "skipped": {"eval_t": {"no audio": 1}}}, 1)
    module.on_test_epoch_end()
    (result,) = module.results
    assert result["score"] == 0.5 and result["clips"] == 2
    assert result["dropped"] == {"corrupt label": 2, "no audio": 1}
    summary = scores.write_reports(tmp_path, module.results)
    assert json.loads((tmp_path / "scores.json").read_text())["tasks"][0]["dropped"] == {
        "corrupt label": 2,
        "no audio": 1,
    }
    assert "eval_t: dropped 2 (corrupt label), 1 (no audio)" in scores.format_table(summary)


def test_protocol_run_has_no_eval_crop_and_full_window_whisper(make_cfg):
    cfg = make_cfg("task=task1", "encoder=whisper_base")
    assert cfg.data.eval_max_seconds is None
    assert cfg.encoder.full_window is True
    assert cfg.task.eval["eval_fsd50k"].metric_args.num_classes == 200
    assert "label_join" not in cfg.task.eval["eval_fsd50k"]

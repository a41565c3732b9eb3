"""Whisper in the challenge's full-window mode equals transformers' own front end + encoder.

The challenge (xares-llm ``example/whisper_base/whisper_base.py``, ``WhisperEncoder.forward``)
feeds each clip through ``WhisperFeatureExtractor``, which pads it with silence to 30 s and
reflects the window's end in its STFT, then runs ``WhisperModel``'s encoder on the window.
A random tiny Whisper built from a config stands in for the released weights.
"""

from __future__ import annotations

import pytest
import torch
from helpers.config import SAMPLE_RATE
from helpers.models import TINY_WHISPER
from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperModel

from xares.encoders.whisper import WhisperEncoder

SR = 16000
WINDOW = 30 * SR


@pytest.fixture(scope="module")
def tiny_whisper(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("whisper")
    config = WhisperConfig(**TINY_WHISPER)
    torch.manual_seed(0)
    WhisperModel(config).save_pretrained(path)
    WhisperFeatureExtractor().save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def reference(tiny_whisper):
    extractor = WhisperFeatureExtractor.from_pretrained(tiny_whisper)
    encoder = WhisperModel.from_pretrained(tiny_whisper).get_encoder().eval()

    def encode(clip: torch.Tensor) -> torch.Tensor:
        """transformers' features of one clip (at most 30 s), all 1500 positions."""
        inputs = extractor(clip.numpy(), sampling_rate=SR, return_tensors="pt")
        with torch.no_grad():
            return encoder(inputs["input_features"]).last_hidden_state[0]

    return encode


def clip(seconds: float, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    samples = round(seconds * SR)
    # A tone under noise, so the log-mel floor and the window's end both matter.
    t = torch.arange(samples) / SR
    return 0.3 * torch.sin(2 * torch.pi * 440 * t) + 0.05 * torch.randn(
        samples, generator=generator
    )


def test_protocol_default_is_the_full_window(tiny_whisper):
    assert WhisperEncoder(tiny_whisper, sample_rate=SAMPLE_RATE).full_window is True


def test_a_30_second_clip_equals_transformers(tiny_whisper, reference):
    audio = clip(30.0)
    with torch.no_grad():
        ours, mask = WhisperEncoder(tiny_whisper, full_window=True, sample_rate=SAMPLE_RATE)(
            audio[None], None
        )
    theirs = reference(audio)
    assert ours.shape == (1, 1500, 32) and mask.sum() == 1500
    # Every frame, the last included: its mel frame reflects the clip's end, as the extractor's.
    torch.testing.assert_close(ours[0], theirs, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("samples", [WINDOW - 100, WINDOW - 160 * 3 + 7, 16000])
def test_clips_near_and_far_from_the_window_end_equal_transformers(
    tiny_whisper, reference, samples
):
    audio = clip(samples / SR, seed=samples)
    with torch.no_grad():
        ours, mask = WhisperEncoder(tiny_whisper, sample_rate=SAMPLE_RATE)(audio[None], None)
    frames = (samples // 160 + 1) // 2
    assert mask.sum() == frames
    torch.testing.assert_close(ours[0, :frames], reference(audio)[:frames], atol=1e-5, rtol=1e-5)


def test_each_30_second_window_of_a_long_clip_equals_transformers(tiny_whisper, reference):
    audio = clip(65.0, seed=1)
    with torch.no_grad():
        ours, mask = WhisperEncoder(tiny_whisper, sample_rate=SAMPLE_RATE)(audio[None], None)
    assert mask.sum() == ours.shape[1] == 1500 + 1500 + 250
    for start, frames in ((0, 1500), (1500, 1500), (3000, 250)):
        piece = audio[start * 320 : start * 320 + WINDOW]
        expected = reference(piece)[:frames]
        torch.testing.assert_close(ours[0, start : start + frames], expected, atol=1e-5, rtol=1e-5)


def test_a_padded_batch_gives_each_clip_its_own_features(tiny_whisper, reference):
    long, short = clip(30.0, seed=2), clip(1.0, seed=3)
    audio = torch.zeros(2, WINDOW)
    audio[0], audio[1, :SR] = long, short
    mask = torch.zeros(2, WINDOW, dtype=torch.long)
    mask[0], mask[1, :SR] = 1, 1
    with torch.no_grad():
        ours, frame_mask = WhisperEncoder(tiny_whisper, sample_rate=SAMPLE_RATE)(audio, mask)
    assert frame_mask.sum(-1).tolist() == [1500, 50]
    torch.testing.assert_close(ours[0], reference(long), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours[1, :50], reference(short)[:50], atol=1e-5, rtol=1e-5)


def test_trimmed_mode_is_close_but_not_the_challenges_features(tiny_whisper, reference):
    audio = clip(1.0, seed=4)
    with torch.no_grad():
        trimmed, mask = WhisperEncoder(tiny_whisper, full_window=False, sample_rate=SAMPLE_RATE)(
            audio[None], None
        )
    theirs = reference(audio)[:50]
    assert mask.sum() == 50
    deviation = (trimmed[0] - theirs).abs().max() / theirs.abs().max()
    # Not attending to the 29 s of silence changes every frame a little.
    assert 1e-4 < deviation < 0.1


def test_the_last_mel_frame_of_a_full_window_reflects_the_clip(tiny_whisper):
    # WhisperFeatureExtractor's STFT reflects the window's end: frame 2999 (centred 160 samples
    # before the end, 400 wide) reaches 40 samples past it, into the mirrored clip.
    audio = clip(30.0, seed=5)
    encoder = WhisperEncoder(tiny_whisper, sample_rate=SAMPLE_RATE)
    ours = encoder.log_mel(audio[None], torch.tensor([3000]))
    extractor = WhisperFeatureExtractor.from_pretrained(tiny_whisper)
    theirs = extractor(audio.numpy(), sampling_rate=SR, return_tensors="pt")["input_features"]
    assert ours.shape == theirs.shape == (1, 80, 3000)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)

"""Log-mel filterbank features: the no-weights baseline encoder and the offline default."""

from __future__ import annotations

import torch
import torchaudio
from torch import nn

from xares.encoders.contract import mask_from_lengths


class MelEncoder(nn.Module):
    """Log-mel frames, normalised per clip, stacked ``stack`` at a time to shorten the sequence.

    With the defaults (80 mels, 10 ms hop, stack 4) it emits 25 frames per second of size 320.
    """

    def __init__(
        self,
        n_mels: int = 80,
        *,
        sample_rate: int,
        win_ms: float = 25.0,
        hop_ms: float = 10.0,
        stack: int = 4,
    ):
        super().__init__()
        self.hop = int(sample_rate * hop_ms / 1000)
        win = int(sample_rate * win_ms / 1000)
        self.stack = stack
        self.melspec = torchaudio.transforms.MelSpectrogram(
            sample_rate=sample_rate,
            n_fft=1 << (win - 1).bit_length(),
            win_length=win,
            hop_length=self.hop,
            n_mels=n_mels,
            center=True,
            # Zero (not reflected) edge padding: a clip then gives the same frames alone and
            # zero-padded inside a batch, so scores do not depend on the eval batch size.
            pad_mode="constant",
        )
        self.output_dim = n_mels * stack

    def forward(self, audio: torch.Tensor, audio_attention_mask: torch.Tensor | None = None):
        if audio_attention_mask is None:
            audio_attention_mask = torch.ones_like(audio, dtype=torch.long)
        lengths = audio_attention_mask.long().sum(-1)
        mel = self.melspec(audio.float()).clamp_min(1e-10).log().transpose(1, 2)  # [B, F, M]
        frames = torch.div(lengths, self.hop, rounding_mode="floor") + 1
        mel_mask = mask_from_lengths(frames.clamp(max=mel.shape[1]), mel.shape[1]).unsqueeze(-1)
        # One mean and scale per clip, over its real frames and all bins: removes the recording
        # gain but keeps the spectral envelope (a per-bin normalisation would erase exactly
        # what tells voices, instruments and sound events apart). Padding never enters it.
        count = (mel_mask.sum((1, 2), keepdim=True) * mel.shape[-1]).clamp_min(1)
        mean = (mel * mel_mask).sum((1, 2), keepdim=True) / count
        var = (((mel - mean) * mel_mask) ** 2).sum((1, 2), keepdim=True) / count
        mel = (mel - mean) / (var.sqrt() + 1e-5) * mel_mask
        pad = (-mel.shape[1]) % self.stack
        mel = nn.functional.pad(mel, (0, 0, 0, pad))
        batch, steps, bins = mel.shape
        features = mel.reshape(batch, steps // self.stack, bins * self.stack)
        out_frames = torch.div(frames + self.stack - 1, self.stack, rounding_mode="floor")
        return features, mask_from_lengths(
            out_frames.clamp(1, features.shape[1]), features.shape[1]
        )

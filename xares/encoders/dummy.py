"""An encoder whose features carry no information about the audio (a floor for comparison)."""

from __future__ import annotations

import torch
from torch import nn

from xares.encoders.contract import mask_from_lengths


class DummyEncoder(nn.Module):
    table: torch.Tensor
    """Fixed pseudo-random frames that depend only on the clip length, never on its content.

    Training on top of it measures what the decoder learns from the prompts and label priors
    alone; a real encoder must beat it.
    """

    def __init__(
        self,
        output_dim: int = 64,
        frame_rate: float = 25,
        *,
        sample_rate: int,
        max_frames: int = 1500,
        seed: int = 0,
    ):
        super().__init__()
        self.output_dim = output_dim
        self.hop = int(round(sample_rate / frame_rate))
        generator = torch.Generator().manual_seed(seed)
        self.register_buffer("table", torch.randn(max_frames, output_dim, generator=generator))

    def forward(self, audio: torch.Tensor, audio_attention_mask: torch.Tensor | None = None):
        if audio_attention_mask is None:
            audio_attention_mask = torch.ones_like(audio, dtype=torch.long)
        lengths = audio_attention_mask.long().sum(-1)
        frames = torch.div(lengths + self.hop - 1, self.hop, rounding_mode="floor").clamp(1)
        num = min(int(frames.max()), self.table.shape[0])
        features = self.table[:num].unsqueeze(0).expand(audio.shape[0], -1, -1).to(audio.dtype)
        mask = mask_from_lengths(frames.clamp(max=num), num)
        return features * mask.unsqueeze(-1).to(features.dtype), mask

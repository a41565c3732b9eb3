"""Encoder files written to disk, loaded as ``encoder=custom encoder.path=...`` would load them."""

from __future__ import annotations

import textwrap

HOP = 640  # 25 frames per second of 16 kHz audio

# An encoder with real weights, so the parameter count is not trivially zero.
TINY_CONV_ENCODER = textwrap.dedent(
    f"""
    import torch
    from torch import nn


    class TinyConvEncoder(nn.Module):
        def __init__(self, dim: int = 16, hop: int = {HOP}):
            super().__init__()
            self.output_dim = dim
            self.hop = hop
            self.conv = nn.Conv1d(1, dim, kernel_size=hop, stride=hop)

        def forward(self, audio, audio_attention_mask=None):
            pad = (-audio.shape[-1]) % self.hop
            features = self.conv(nn.functional.pad(audio, (0, pad)).unsqueeze(1)).transpose(1, 2)
            lengths = audio_attention_mask.long().sum(-1)
            frames = (lengths + self.hop - 1) // self.hop
            positions = torch.arange(features.shape[1], device=audio.device)
            return features, (positions[None] < frames[:, None]).long()
    """
)

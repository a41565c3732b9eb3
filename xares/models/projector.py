"""Projectors map encoder frames into the decoder's embedding space.

``in_dim`` and ``out_dim`` are injected when the model is built (encoder ``output_dim`` and the
decoder's hidden size), so configs never hard-code them.
"""

from __future__ import annotations

import torch
from torch import nn


class LinearProjector(nn.Module):
    """The challenge protocol's projector: one linear layer, no downsampling.

    ``init_std=None`` keeps PyTorch's default initialisation (the protocol's). A number draws
    the weights so that features of unit variance come out with that standard deviation per
    element, and zeroes the bias: set to the decoder's token-embedding scale, the audio tokens
    start out as loud as text tokens instead of several times louder.
    """

    def __init__(self, in_dim: int, out_dim: int, init_std: float | None = None):
        super().__init__()
        self.proj = nn.Linear(in_dim, out_dim)
        if init_std is not None:
            # `embedding` is resolved to a number by build_model; any other string is a typo.
            if not isinstance(init_std, (int, float)) or init_std <= 0:
                raise ValueError(
                    f"projector init_std must be a positive number, null or `embedding`, "
                    f"got {init_std!r}"
                )
            nn.init.normal_(self.proj.weight, std=init_std / in_dim**0.5)
            nn.init.zeros_(self.proj.bias)
        self.downsample = 1

    def forward(self, features: torch.Tensor, mask: torch.Tensor):
        return self.proj(features), mask


class MLPProjector(nn.Module):
    """Linear → GELU → Linear, a common LALM adapter."""

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int | None = None):
        super().__init__()
        hidden_dim = hidden_dim or out_dim
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, out_dim)
        )
        self.downsample = 1

    def forward(self, features: torch.Tensor, mask: torch.Tensor):
        return self.net(features), mask


class StackProjector(nn.Module):
    """Concatenate ``k`` consecutive frames, then an MLP: ``k`` times fewer audio tokens."""

    def __init__(self, in_dim: int, out_dim: int, k: int = 4, hidden_dim: int | None = None):
        super().__init__()
        self.k = k
        self.downsample = k
        hidden_dim = hidden_dim or out_dim
        self.net = nn.Sequential(
            nn.Linear(in_dim * k, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, out_dim)
        )

    def forward(self, features: torch.Tensor, mask: torch.Tensor):
        batch, frames, dim = features.shape
        pad = (-frames) % self.k
        if pad:
            features = nn.functional.pad(features, (0, 0, 0, pad))
            mask = nn.functional.pad(mask, (0, pad))
        stacked = features.reshape(batch, -1, dim * self.k)
        # A stacked frame is real if any of its source frames is real.
        new_mask = mask.reshape(batch, -1, self.k).amax(-1)
        return self.net(stacked), new_mask

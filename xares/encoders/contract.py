"""The encoder contract and the checker that enforces it before any training.

An encoder is a ``torch.nn.Module`` with an ``output_dim`` attribute and
``forward(audio, audio_attention_mask=None) -> (features, feature_mask)``:

* ``audio``: float ``[B, T]``, mono, 16 kHz, zero-padded; ``audio_attention_mask``: ``[B, T]``, 1 = keep.
* ``features``: ``[B, N, output_dim]``; ``feature_mask``: ``[B, N]`` (1 = keep) or ``None``.

This is the interface of the XARES-LLM challenge, so encoder files written for it run unmodified.
"""

from __future__ import annotations

import inspect
import logging

import torch
from torch import nn

log = logging.getLogger(__name__)

HOW_TO = (
    "An encoder is an nn.Module with an `output_dim` attribute and "
    "forward(audio [B, T], audio_attention_mask [B, T]) -> (features [B, N, output_dim], "
    "feature_mask [B, N] or None)."
)


class EncoderContractError(TypeError):
    """An encoder does not follow the contract; the message names the problem and the fix."""

    def __init__(self, name: str, problem: str, fix: str):
        super().__init__(f"encoder {name}: {problem}. Fix: {fix}\n{HOW_TO}")
        self.problem = problem


def _name(encoder: object) -> str:
    return type(encoder).__qualname__


def mask_from_lengths(lengths: torch.Tensor, size: int) -> torch.Tensor:
    """A ``[B, size]`` long mask with the first ``lengths[b]`` positions set."""
    positions = torch.arange(size, device=lengths.device)
    return (positions[None, :] < lengths[:, None]).long()


def frames_from_audio_mask(
    audio_mask: torch.Tensor, num_frames: int, num_samples: int | None = None
) -> torch.Tensor:
    """Derive a frame mask by scaling each row's valid-audio fraction to ``num_frames``.

    Used when an encoder returns a mask that does not line up with its frames (some published
    encoders pass the audio mask through unchanged); rounding up keeps a frame that covers any
    real audio.
    """
    total = num_samples if num_samples is not None else audio_mask.shape[-1]
    valid = audio_mask.long().sum(-1).float()
    frames = torch.ceil(valid * num_frames / max(total, 1)).long().clamp(1, num_frames)
    return mask_from_lengths(frames, num_frames)


def normalise_output(
    output: object,
    audio_mask: torch.Tensor,
    *,
    output_dim: int | None = None,
    encoder_name: str = "encoder",
    warn_state: dict | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Turn an encoder's return value into ``(features, mask)`` with a valid ``[B, N]`` long mask.

    A mask whose length does not match the frames is replaced by one derived from the audio
    mask, with a warning (once per ``warn_state``) rather than silently mis-sliced.
    """
    if isinstance(output, torch.Tensor):
        features, mask = output, None
    else:
        features, mask = output  # type: ignore[misc]  # shape already validated by check_encoder
    batch, frames = features.shape[0], features.shape[1]
    if mask is None:
        return features, frames_from_audio_mask(audio_mask, frames)
    if mask.dim() != 2 or mask.shape[0] != batch or mask.shape[1] != frames:
        state = warn_state if warn_state is not None else {}
        if not state.get("warned"):
            log.warning(
                "%s returned a mask of shape %s for %d frames; replacing it with a mask derived "
                "from the audio lengths. Return a [B, N] frame mask (or None) to silence this.",
                encoder_name,
                tuple(mask.shape),
                frames,
            )
            state["warned"] = True
        return features, frames_from_audio_mask(audio_mask, frames)
    return features, mask.to(features.device).long()


def check_encoder(
    encoder: object,
    *,
    sample_rate: int,
    batch_size: int = 2,
    seconds: tuple[float, float] = (1.0, 0.6),
    device: torch.device | str | None = None,
) -> int:
    """Run ``encoder`` on a small padded batch and raise :class:`EncoderContractError` on misuse.

    Returns the checked ``output_dim``. A mask of the wrong length only warns (it is replaced at
    run time); everything else that would break training later fails here, before any work.
    """
    name = _name(encoder)
    if not isinstance(encoder, nn.Module):
        raise EncoderContractError(
            name,
            f"is a {type(encoder).__name__}, not a torch.nn.Module",
            "subclass torch.nn.Module",
        )
    output_dim = getattr(encoder, "output_dim", None)
    if output_dim is None:
        raise EncoderContractError(
            name,
            "has no `output_dim` attribute",
            "set self.output_dim = <feature size> in __init__",
        )
    if not isinstance(output_dim, int) or isinstance(output_dim, bool) or output_dim <= 0:
        raise EncoderContractError(
            name, f"output_dim must be a positive int, got {output_dim!r}", "set an int"
        )
    try:
        params = inspect.signature(encoder.forward).parameters.values()
    except (TypeError, ValueError):  # builtins without a signature: let the call decide
        params = ()  # type: ignore[assignment]
    positional = [
        p
        for p in params
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)
    ]
    if params and len(positional) < 2 and not any(p.kind == p.VAR_POSITIONAL for p in positional):
        raise EncoderContractError(
            name,
            "forward() must take two arguments (audio, audio_attention_mask)",
            "define forward(self, audio, audio_attention_mask=None)",
        )

    if device is None:
        try:
            device = next(encoder.parameters()).device
        except StopIteration:
            device = torch.device("cpu")
    lengths = [max(1, int(s * sample_rate)) for s in seconds][:batch_size]
    while len(lengths) < batch_size:
        lengths.append(lengths[-1])
    total = max(lengths)
    generator = torch.Generator().manual_seed(0)
    audio = torch.randn(batch_size, total, generator=generator) * 0.1
    mask = mask_from_lengths(torch.tensor(lengths), total)
    audio = (audio * mask).to(device)
    mask = mask.to(device)

    was_training = encoder.training
    encoder.eval()
    try:
        with torch.no_grad():
            output = encoder(audio, mask)
    except Exception as error:  # report the encoder's own failure with the contract beside it
        raise EncoderContractError(
            name,
            f"forward(audio [{batch_size}, {total}], mask) raised {type(error).__name__}: {error}",
            "make forward accept a zero-padded float batch and its [B, T] mask",
        ) from error
    finally:
        encoder.train(was_training)

    if isinstance(output, torch.Tensor):
        features, out_mask = output, None
    elif isinstance(output, (tuple, list)) and len(output) == 2:
        features, out_mask = output
    else:
        raise EncoderContractError(
            name,
            f"forward returned {type(output).__name__}"
            + (f" of length {len(output)}" if isinstance(output, (tuple, list)) else ""),
            "return a tuple (features, feature_mask) (feature_mask may be None)",
        )
    if not isinstance(features, torch.Tensor):
        raise EncoderContractError(
            name, f"features are a {type(features).__name__}, not a tensor", "return a torch.Tensor"
        )
    if features.dim() != 3:
        raise EncoderContractError(
            name,
            f"features have rank {features.dim()} (shape {tuple(features.shape)}), expected 3",
            "return features shaped [batch, frames, output_dim]",
        )
    if features.shape[0] != batch_size:
        raise EncoderContractError(
            name,
            f"batch size changed from {batch_size} to {features.shape[0]}",
            "keep the batch as the first dimension; do not squeeze or flatten it",
        )
    if features.shape[-1] != output_dim:
        raise EncoderContractError(
            name,
            f"last dimension is {features.shape[-1]} but output_dim is {output_dim}",
            "set output_dim to the feature size the encoder returns",
        )
    if features.shape[1] == 0:
        raise EncoderContractError(
            name, "returned zero frames", "return at least one frame per clip"
        )
    if not torch.isfinite(features.float()).all():
        raise EncoderContractError(
            name,
            "output contains NaN or Inf",
            "check numerical stability (e.g. log of zero, division by the padded length)",
        )
    if out_mask is not None:
        if not isinstance(out_mask, torch.Tensor):
            raise EncoderContractError(
                name,
                f"feature_mask is a {type(out_mask).__name__}",
                "return a [B, N] tensor or None",
            )
        if out_mask.dim() != 2 or out_mask.shape[0] != batch_size:
            raise EncoderContractError(
                name,
                f"feature_mask has shape {tuple(out_mask.shape)}",
                "return a [B, N] mask (1 = keep) or None",
            )
        if out_mask.shape[1] != features.shape[1]:
            log.warning(
                "encoder %s: feature_mask length %d != %d frames; it will be replaced by a mask "
                "derived from the audio lengths. Return a [B, N] frame mask (or None) to fix.",
                name,
                out_mask.shape[1],
                features.shape[1],
            )
        elif out_mask.long().sum(-1).min() == 0:
            raise EncoderContractError(
                name, "feature_mask marks every frame of a clip as padding", "mark real frames 1"
            )
    return output_dim

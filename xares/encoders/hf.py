"""Self-supervised speech encoders from Hugging Face (wav2vec 2.0, HuBERT, WavLM).

Each clip is encoded as if it were alone: the features of its real frames do not depend on how
much padding the batch added or on the other clips in it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch import nn

from xares.encoders.chunking import (
    audio_lengths,
    check_loading_info,
    join_pieces,
    pad_rows,
    real_rows,
    split_rows,
)
from xares.encoders.contract import mask_from_lengths

log = logging.getLogger(__name__)

# The rate the speech models this wrapper loads (wav2vec 2.0, HuBERT, WavLM) were pre-trained on.
SAMPLE_RATE = 16000


def min_input_samples(conv_kernel: Sequence[int], conv_stride: Sequence[int]) -> int:
    """Fewest samples that give one frame from a stack of unpadded convolutions."""
    samples = 1
    for kernel, stride in reversed(list(zip(conv_kernel, conv_stride))):
        samples = (samples - 1) * stride + kernel
    return samples


# ---------------------------------------------------------------------------- the encoder


class HFSpeechEncoder(nn.Module):
    """A wav2vec 2.0-family model (``AutoModel``): wav2vec 2.0, HuBERT, WavLM, data2vec-audio.

    Output: the last hidden state (or hidden layer ``layer``; 0 = the input of the first
    transformer layer), 50 frames per second, ``hidden_size`` wide.

    Padding: models whose first convolution uses group norm (``feat_extract_norm: group``, e.g.
    wav2vec2-base, HuBERT-base, WavLM-base+) normalise over the whole input, padding included, and
    were trained without attention masks, so each clip is encoded on its own at its real length.
    Models with ``feat_extract_norm: layer`` are batched with an attention mask. Input
    normalisation (``do_normalize`` of the checkpoint's feature extractor) uses each clip's real
    samples only. There is no input length limit; ``chunk_seconds`` optionally encodes long clips
    in independent pieces to bound memory.
    """

    def __init__(
        self,
        name_or_path: str,
        layer: int | None = None,
        chunk_seconds: float | None = None,
        *,
        sample_rate: int,
        attn_implementation: str | None = None,
    ):
        super().__init__()
        from transformers import AutoConfig, AutoFeatureExtractor, AutoModel

        config = AutoConfig.from_pretrained(name_or_path)
        # None lets transformers pick the best kernel the architecture supports (WavLM: eager).
        options = {"attn_implementation": attn_implementation} if attn_implementation else {}
        self.model, info = AutoModel.from_pretrained(
            name_or_path, config=config, output_loading_info=True, **options
        )
        check_loading_info(info, name_or_path)
        self.model.eval()
        if sample_rate != SAMPLE_RATE:
            raise ValueError(f"{name_or_path} expects 16 kHz audio, got sample_rate={sample_rate}")
        try:
            extractor = AutoFeatureExtractor.from_pretrained(name_or_path)
            self.normalize = bool(getattr(extractor, "do_normalize", True))
        except OSError:  # no preprocessor_config.json: the wav2vec 2.0 convention
            self.normalize = True
            log.warning("%s has no feature extractor config; normalising input audio", name_or_path)
        self.batched = getattr(config, "feat_extract_norm", "layer") == "layer"
        self.layer = layer
        self.chunk_samples = int(chunk_seconds * sample_rate) if chunk_seconds else None
        self.min_samples = min_input_samples(config.conv_kernel, config.conv_stride)
        wide = getattr(config, "add_adapter", False) and getattr(config, "output_hidden_size", None)
        self.output_dim = int(wide or config.hidden_size)
        num_layers = int(config.num_hidden_layers)
        if layer is not None and not -(num_layers + 1) <= layer <= num_layers:
            raise ValueError(f"layer={layer} out of range for a {num_layers}-layer model")

    def _normalise(self, batch: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        mask = mask_from_lengths(lengths, batch.shape[1]).to(batch.dtype)
        count = lengths.clamp_min(1).to(batch.dtype)[:, None]
        mean = (batch * mask).sum(-1, keepdim=True) / count
        var = (((batch - mean) * mask) ** 2).sum(-1, keepdim=True) / count
        return (batch - mean) / torch.sqrt(var + 1e-7) * mask

    def _hidden(self, values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        out = self.model(values, attention_mask=mask, output_hidden_states=self.layer is not None)
        if self.layer is None:
            return out.last_hidden_state
        return out.hidden_states[self.layer]

    def forward(self, audio: torch.Tensor, audio_attention_mask: torch.Tensor | None = None):
        lengths = audio_lengths(audio, audio_attention_mask)
        rows = real_rows(audio, lengths, self.min_samples)
        pieces, counts = split_rows(rows, self.chunk_samples)
        # A trailing piece shorter than one receptive field cannot give a frame: fold it into
        # silence rather than fail (it holds under 25 ms of audio).
        pieces = [
            nn.functional.pad(p, (0, self.min_samples - p.shape[0]))
            if p.shape[0] < self.min_samples
            else p
            for p in pieces
        ]
        values, piece_lengths = pad_rows(pieces)
        if self.normalize:
            values = self._normalise(values, piece_lengths)
        frames = self.model._get_feat_extract_output_lengths(piece_lengths).long()
        if self.batched:
            mask = mask_from_lengths(piece_lengths, values.shape[1])
            hidden = self._hidden(values, mask)
        else:
            outputs = [
                self._hidden(values[i : i + 1, : int(n)], None)[0]
                for i, n in enumerate(piece_lengths.tolist())
            ]
            hidden, _ = pad_rows(outputs)
        frames = frames.clamp(1, hidden.shape[1])
        return join_pieces(hidden, frames, counts)

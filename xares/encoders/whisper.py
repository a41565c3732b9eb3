"""The encoder half of OpenAI Whisper (``transformers``), in its 30 s window or trimmed.

Whisper's encoder was trained on 30 s windows (3000 mel frames, 1500 positions). With
``full_window=True`` (the default, and what the challenge computes) every clip is padded with
silence to 30 s, its log-mel is the one ``WhisperFeatureExtractor`` computes (the window's end
reflected, the floor 8 decades below the window's loudest bin) and the encoder runs on the
whole window; the clip's own frames (50 per second) are kept. Clips longer than 30 s are
encoded in consecutive 30 s windows, as Whisper's own long-form transcription does, and the
frames concatenated; each window is computed as the feature extractor computes a 30 s clip.

``full_window=False`` trades fidelity for speed: this module then runs the encoder's own
submodules (``conv1``, ``conv2``, ``embed_positions``, ``layers``, ``layer_norm``) on a mel
spectrogram trimmed to the longest clip of the batch, adds only the first ``N`` positional
embeddings and masks padded frames out of attention, so a batch of 2 s clips costs what 2 s
clips cost, not 30 s. Each clip is computed as if it were followed by silence and its
features do not depend on the rest of the batch, but they are not the full-window ones: the
clip's frames no longer attend to the silent positions, and the mel frame after the clip is
zero rather than silence. docs/fidelity.md gives the measured deviation.
"""

from __future__ import annotations

from typing import Any, cast

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


class WhisperEncoder(nn.Module):
    mel_filters: torch.Tensor
    window: torch.Tensor
    """Whisper encoder features: 50 frames per second, ``d_model`` wide (512 for whisper-base)."""

    def __init__(
        self,
        name_or_path: str = "openai/whisper-base",
        full_window: bool = True,
        *,
        sample_rate: int,
        attn_implementation: str | None = None,
    ):
        super().__init__()
        from transformers import WhisperFeatureExtractor, WhisperModel

        # The padding mask below is additive, which every attention kernel accepts.
        options: dict[str, Any] = {}
        if attn_implementation:
            options["attn_implementation"] = attn_implementation
        model, info = cast(
            tuple[Any, dict[str, Any]],
            WhisperModel.from_pretrained(name_or_path, output_loading_info=True, **options),
        )
        check_loading_info(info, name_or_path, prefix="encoder.")
        self.encoder = model.get_encoder()
        del model  # the decoder is never used; let it be freed
        self.encoder.eval()
        extractor = WhisperFeatureExtractor.from_pretrained(name_or_path)
        if sample_rate != extractor.sampling_rate:
            raise ValueError(
                f"{name_or_path} expects {extractor.sampling_rate} Hz audio, got {sample_rate}"
            )
        self.n_fft = int(extractor.n_fft)
        self.hop = int(extractor.hop_length)
        filters = torch.as_tensor(extractor.mel_filters, dtype=torch.float32).T
        self.register_buffer("mel_filters", filters, persistent=False)
        self.register_buffer("window", torch.hann_window(self.n_fft), persistent=False)
        stride = self.encoder.conv1.stride[0] * self.encoder.conv2.stride[0]
        self.max_mel_frames = int(self.encoder.config.max_source_positions) * stride
        self.window_samples = self.max_mel_frames * self.hop
        self.full_window = full_window
        self.output_dim = int(self.encoder.config.d_model)

    def log_mel(self, batch: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        """Whisper's log-mel (``[N, n_mels, F]``) of zero-padded rows, clamped per clip.

        The floor 8 decades below each clip's loudest bin is taken over that clip's ``frames``.
        Rows are the clip followed by silence up to the 30 s window, whose end is reflected, as
        in ``WhisperFeatureExtractor``: up to ``n_fft // 2`` zeros (never past the window) make
        a frame near the end of a short row see the silence the extractor pads with, and a row
        that fills the window sees its own end reflected.
        """
        width = int(frames.max())
        silence = max(0, min(self.n_fft // 2, self.window_samples - batch.shape[1]))
        padded = nn.functional.pad(batch, (0, silence))
        spec = torch.stft(
            padded, self.n_fft, self.hop, window=self.window, center=True, return_complex=True
        )
        power = spec[..., :width].abs() ** 2
        log_spec = (self.mel_filters @ power).clamp_min(1e-10).log10()
        valid = mask_from_lengths(frames, width).bool()[:, None, :]
        top = log_spec.masked_fill(~valid, float("-inf")).amax(dim=(1, 2), keepdim=True)
        log_spec = torch.maximum(log_spec, top - 8.0)
        return (log_spec + 4.0) / 4.0

    def encode_mel(
        self, mel: torch.Tensor, frames: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the encoder on ``mel`` (``frames[n]`` real) and return states and their counts."""
        encoder = self.encoder
        masked = not self.full_window
        keep = mask_from_lengths(frames, mel.shape[-1]).to(mel.dtype)[:, None, :]
        # Zeroing beyond each clip's end matches the zero padding the convolutions would apply to
        # the clip alone, so a clip's last frames see the same input in any batch.
        if masked:
            mel = mel * keep
        hidden = nn.functional.gelu(encoder.conv1(mel))
        if masked:
            hidden = hidden * keep
        hidden = nn.functional.gelu(encoder.conv2(hidden)).transpose(1, 2)
        out_frames = torch.div(frames + 1, 2, rounding_mode="floor").clamp_min(1)
        steps = hidden.shape[1]
        hidden = hidden + encoder.embed_positions.weight[:steps].to(hidden.dtype)
        attention = None
        if masked:
            valid = mask_from_lengths(out_frames, steps).bool()[:, None, None, :]
            attention = torch.zeros(valid.shape, dtype=hidden.dtype, device=hidden.device)
            attention = attention.masked_fill(~valid, torch.finfo(hidden.dtype).min)
        for layer in encoder.layers:
            hidden = layer(hidden, attention)
        return encoder.layer_norm(hidden), out_frames

    def forward(self, audio: torch.Tensor, audio_attention_mask: torch.Tensor | None = None):
        lengths = audio_lengths(audio, audio_attention_mask)
        rows = real_rows(audio, lengths, min_samples=self.hop)
        pieces, counts = split_rows(rows, self.window_samples)
        batch, piece_lengths = pad_rows(pieces)
        frames = torch.div(piece_lengths, self.hop, rounding_mode="floor").clamp_min(1)
        with torch.autocast(batch.device.type, enabled=False):
            if self.full_window:
                batch = nn.functional.pad(batch, (0, self.window_samples - batch.shape[1]))
                full = torch.full_like(frames, self.max_mel_frames)
                mel = self.log_mel(batch, full)
            else:
                mel = self.log_mel(batch, frames)
        hidden, out_frames = self.encode_mel(mel.to(self.encoder.conv1.weight.dtype), frames)
        return join_pieces(hidden, out_frames, counts)

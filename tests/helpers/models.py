"""Small models built from the real classes: a tiny decoder, the audio LLM around it, batches."""

from __future__ import annotations

import torch
from omegaconf import OmegaConf
from torch import nn

from helpers.config import CONF
from xares.encoders.mel import MelEncoder
from xares.models import llm
from xares.models.audio_llm import AudioLLM
from xares.models.projector import LinearProjector

TINY = OmegaConf.to_container(OmegaConf.load(CONF / "llm" / "tiny_random.yaml").decoder.config)
LORA = OmegaConf.to_container(OmegaConf.load(CONF / "lora" / "protocol.yaml"))

# A two-layer, 32-wide Whisper: the real architecture and feature extractor, random weights.
TINY_WHISPER = dict(
    d_model=32,
    encoder_layers=2,
    encoder_attention_heads=2,
    encoder_ffn_dim=64,
    decoder_layers=1,
    decoder_attention_heads=2,
    decoder_ffn_dim=64,
    vocab_size=64,
    max_target_positions=16,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
    decoder_start_token_id=1,
)


def tiny_decoder():
    return llm.from_config(TINY, tokenizer="bytes", seed=0)


def build(encoder: nn.Module | None = None, lora=LORA) -> AudioLLM:
    encoder = encoder or MelEncoder()
    decoder, tokenizer = tiny_decoder()
    projector = LinearProjector(encoder.output_dim, decoder.config.hidden_size)
    return AudioLLM(encoder, projector, decoder, tokenizer, lora=lora)


def padded(clips: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    total = max(c.shape[0] for c in clips)
    audio = torch.zeros(len(clips), total)
    mask = torch.zeros(len(clips), total, dtype=torch.long)
    for row, clip in enumerate(clips):
        audio[row, : clip.shape[0]] = clip
        mask[row, : clip.shape[0]] = 1
    return audio, mask

"""Small models built from the real classes: a tiny decoder, the audio LLM around it, batches."""

from __future__ import annotations

import dataclasses

import torch
from omegaconf import OmegaConf
from torch import nn

from helpers.config import CONF, SAMPLE_RATE, generation_settings
from xares.encoders.mel import MelEncoder
from xares.models import llm
from xares.models.audio_llm import AudioLLM, LoraSettings
from xares.models.projector import LinearProjector
from xares.models.speed import Speed
from xares.models.text import TextEncoder

TINY = OmegaConf.to_container(OmegaConf.load(CONF / "llm" / "tiny_random.yaml").decoder.config)
LORA = LoraSettings.of(OmegaConf.to_container(OmegaConf.load(CONF / "lora" / "protocol.yaml")))  # type: ignore[arg-type]

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


def build(encoder: nn.Module | None = None, lora: LoraSettings | None = LORA) -> AudioLLM:
    encoder = encoder or MelEncoder(sample_rate=SAMPLE_RATE)
    decoder, tokenizer = tiny_decoder()
    projector = LinearProjector(encoder.output_dim, decoder.config.hidden_size)
    return AudioLLM(
        encoder, projector, decoder, tokenizer, lora=lora, generation=generation_settings()
    )


def padded(clips: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    total = max(c.shape[0] for c in clips)
    audio = torch.zeros(len(clips), total)
    mask = torch.zeros(len(clips), total, dtype=torch.long)
    for row, clip in enumerate(clips):
        audio[row, : clip.shape[0]] = clip
        mask[row, : clip.shape[0]] = 1
    return audio, mask


# A batch of three clips whose prompts and targets differ in length, for the speed paths.
PROMPTS = ["Name it.", "Q?", "Say more about it."]
TARGETS = ["low", "top high", "a b c d"]


def batch(seed: int = 3):
    generator = torch.Generator().manual_seed(seed)
    clips = [torch.randn(n, generator=generator) * 0.1 for n in (16000, 5000, 11000)]
    return padded(clips)


def model_with(speed: Speed, device: str = "cpu"):
    """The same seeded model (non-zero LoRA B) under the given speed settings."""
    torch.manual_seed(0)
    model = build(lora=dataclasses.replace(LORA, dropout=0.0))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    model.speed = speed
    model.text = TextEncoder(model.tokenizer, multiple=speed.text_multiple)
    model.configure_speed(device)
    return model

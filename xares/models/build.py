"""Assemble an :class:`AudioLLM` from a :class:`ModelSpec`: what the run plan says the model is."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hydra.utils import instantiate

from xares.encoders.cache import FeatureCache, encoder_fingerprint
from xares.encoders.contract import check_encoder
from xares.models.audio_llm import AudioLLM, GenerationSettings, LoraSettings
from xares.models.speed import DTYPES, Speed
from xares.settings import from_section

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FeatureCacheSettings:
    """``speed.feature_cache``, typed: where frozen-encoder outputs are kept between uses."""

    enabled: bool
    memory_gb: float
    dir: str | None
    dtype: str | None

    def __post_init__(self):
        if self.dtype is not None and self.dtype not in DTYPES:
            raise ValueError(
                f"speed.feature_cache.dtype={self.dtype!r}: write null or one of {list(DTYPES)}"
            )

    @classmethod
    def of(cls, values: Mapping[str, Any]) -> FeatureCacheSettings:
        return from_section(cls, "speed.feature_cache", values)

    @property
    def stores(self) -> bool:
        return self.enabled and (float(self.memory_gb or 0) > 0 or bool(self.dir))


@dataclass(frozen=True)
class ModelSpec:
    """Everything that makes the model, in plain values.

    ``encoder``, ``projector`` and ``decoder`` are ``_target_`` specifications (plain dicts,
    as the config groups write them), instantiated here; the rest is typed settings.
    """

    encoder: Mapping[str, Any]
    projector: Mapping[str, Any]
    decoder: Mapping[str, Any]
    lora: LoraSettings | None
    generation: GenerationSettings
    pack: bool
    speed: Speed
    feature_cache: FeatureCacheSettings
    sample_rate: int


def build_feature_cache(encoder, spec: ModelSpec) -> FeatureCache | None:
    """The frozen-encoder feature cache of ``speed.feature_cache`` (``None`` when disabled)."""
    settings = spec.feature_cache
    if not settings.stores:
        return None
    return FeatureCache(
        encoder_fingerprint(encoder, dict(spec.encoder), sample_rate=spec.sample_rate),
        memory_gb=float(settings.memory_gb or 0),
        directory=settings.dir,
        dtype=DTYPES[settings.dtype] if settings.dtype else None,
    )


def build_model(spec: ModelSpec, *, check: bool = True) -> AudioLLM:
    """Encoder (contract-checked before anything else is built) → projector → LoRA decoder."""
    encoder = instantiate(dict(spec.encoder), _convert_="all")
    if check:
        check_encoder(encoder, sample_rate=spec.sample_rate)
    decoder, tokenizer = instantiate(dict(spec.decoder), _convert_="all")
    embeddings = decoder.get_input_embeddings()
    sizes: dict[str, int | float] = dict(
        in_dim=int(encoder.output_dim), out_dim=int(embeddings.embedding_dim)
    )
    if spec.projector.get("init_std") == "embedding":
        # Measured here because it belongs to the decoder, which the config cannot see.
        sizes["init_std"] = float(embeddings.weight.detach().float().std())
    projector = instantiate(dict(spec.projector), **sizes)
    model = AudioLLM(
        encoder,
        projector,
        decoder,
        tokenizer,
        lora=spec.lora,
        generation=spec.generation,
        pack=spec.pack,
        # The model's own copy: resolving it for a device records what was resolved.
        speed=dataclasses.replace(spec.speed),
        feature_cache=build_feature_cache(encoder, spec),
    )
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    log.info(
        "model: %s (%d-d) → %s → %s; trainable %.2fM of %.1fM parameters",
        type(encoder).__name__,
        encoder.output_dim,
        type(projector).__name__,
        type(decoder).__name__,
        trainable / 1e6,
        total / 1e6,
    )
    return model

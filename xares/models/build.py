"""Assemble an :class:`AudioLLM` from the ``encoder``, ``projector`` and ``llm`` config groups."""

from __future__ import annotations

import logging
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from xares.encoders.cache import FeatureCache, encoder_fingerprint
from xares.encoders.contract import check_encoder
from xares.models.audio_llm import AudioLLM
from xares.models.speed import DTYPES, Speed
from xares.protocol import is_challenge_task

log = logging.getLogger(__name__)


def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def build_feature_cache(encoder, cfg: DictConfig) -> FeatureCache | None:
    """The frozen-encoder feature cache of ``speed.feature_cache`` (``None`` when disabled)."""
    spec = _plain((cfg.get("speed") or {}).get("feature_cache")) or {}
    stores = float(spec.get("memory_gb") or 0) > 0 or spec.get("dir")
    if not spec.get("enabled") or not stores:
        return None
    dtype = spec.get("dtype")
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"speed.feature_cache.dtype must be null or one of {list(DTYPES)}")
    sample_rate = int(cfg.data.sample_rate)
    return FeatureCache(
        encoder_fingerprint(encoder, _plain(cfg.encoder), sample_rate=sample_rate),
        memory_gb=float(spec.get("memory_gb") or 0),
        directory=spec.get("dir"),
        dtype=DTYPES[dtype] if dtype else None,
    )


def build_speed(cfg: DictConfig) -> Speed:
    """The run's speed settings; on a challenge task, ``auto`` numerics are the protocol's."""
    task = (cfg.get("task") or {}).get("name")
    return Speed.from_config(_plain(cfg.get("speed")), challenge=is_challenge_task(task))


def build_model(cfg: DictConfig, *, check: bool = True) -> AudioLLM:
    """Encoder (contract-checked before anything else is built) → projector → LoRA decoder."""
    encoder = instantiate(cfg.encoder, _convert_="all")
    if check:
        check_encoder(encoder, sample_rate=int(cfg.data.sample_rate))
    decoder, tokenizer = instantiate(cfg.llm.decoder, _convert_="all")
    embeddings = decoder.get_input_embeddings()
    sizes: dict[str, int | float] = dict(
        in_dim=int(encoder.output_dim), out_dim=int(embeddings.embedding_dim)
    )
    if cfg.projector.get("init_std") == "embedding":
        # Measured here because it belongs to the decoder, which the config cannot see.
        sizes["init_std"] = float(embeddings.weight.detach().float().std())
    projector = instantiate(cfg.projector, **sizes)
    model = AudioLLM(
        encoder,
        projector,
        decoder,
        tokenizer,
        lora=_plain(cfg.llm.get("lora")),
        generation=_plain(cfg.get("generation")),
        pack=bool(cfg.get("model", {}).get("pack", False)),
        speed=build_speed(cfg),
        feature_cache=build_feature_cache(encoder, cfg),
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

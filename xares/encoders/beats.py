"""BEATs (Chen et al., "BEATs: Audio Pre-Training with Acoustic Tokenizers", ICML 2023).

An implementation of the released architecture whose parameter names match the official
checkpoints (a ``.pt`` file holding ``{"cfg": {...}, "model": state_dict}``), so they load with a
strict key check:

* front end: Kaldi fbank, 128 mel bins, 25 ms windows every 10 ms, input scaled to 16-bit range,
  normalised as ``(fbank - 15.41663) / (2 * 6.55582)``;
* ``patch_embedding``: 16x16 patches over (time, mel) -> 8 patches per 160 ms, ``layer_norm``,
  ``post_extract_proj`` to the encoder width;
* ``encoder``: a weight-normalised convolutional position embedding (``pos_conv``), then
  post-norm (deep-norm) transformer layers with a bucketed relative position bias shared by all
  layers and gated per query (``grep_linear``, ``grep_a``).

What xares adds: clip-length-exact padding masks (each clip is encoded exactly as it would be
alone), and explicit handling of long inputs. BEATs was pre-trained on 10 s clips; by default a
clip is encoded in consecutive ``chunk_seconds`` pieces whose features are concatenated
(``chunk_seconds: null`` encodes the whole clip at once: the relative position bias has no length
limit, but such lengths were never seen in training).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import urllib.parse
from pathlib import Path
from typing import Any

import torch
import torchaudio
from torch import nn

from xares.encoders.chunking import audio_lengths, join_pieces, pad_rows, real_rows, split_rows
from xares.encoders.contract import mask_from_lengths

log = logging.getLogger(__name__)

# The rate BEATs was pre-trained on, and its filterbank assumes.
SAMPLE_RATE = 16000

FBANK_MEAN = 15.41663
FBANK_STD = 6.55582
# The public BEATs_iter3+ (AS2M) self-supervised checkpoint, as linked from the BEATs README.
BEATS_ITER3_PLUS_AS2M_URL = (
    "https://valle.blob.core.windows.net/share/BEATs/BEATs_iter3_plus_AS2M.pt"
    "?sv=2020-08-04&st=2023-03-01T07%3A51%3A05Z&se=2033-03-02T07%3A51%3A00Z&sr=c&sp=rl"
    "&sig=QJXmSJG9DbMKf48UDIU1MfzIro8HQOf3sqlNXiflY1I%3D"
)


@dataclasses.dataclass
class BEATsConfig:
    """The fields of a BEATs checkpoint's ``cfg`` that shape the network (others are ignored)."""

    input_patch_size: int = 16
    embed_dim: int = 512
    conv_bias: bool = False
    encoder_layers: int = 12
    encoder_embed_dim: int = 768
    encoder_ffn_embed_dim: int = 3072
    encoder_attention_heads: int = 12
    activation_fn: str = "gelu"
    layer_norm_first: bool = False
    deep_norm: bool = True
    conv_pos: int = 128
    conv_pos_groups: int = 16
    relative_position_embedding: bool = True
    num_buckets: int = 320
    max_distance: int = 800
    gru_rel_pos: bool = True
    finetuned_model: bool = False
    predictor_class: int = 527

    @classmethod
    def from_dict(cls, cfg: dict[str, Any]) -> BEATsConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in cfg.items() if k in names})


def _activation(name: str):
    if name == "gelu":
        return nn.functional.gelu
    if name == "relu":
        return nn.functional.relu
    raise ValueError(f"BEATs activation {name!r} is not supported (gelu, relu)")


class WeightNormConv1d(nn.Module):
    """A grouped 1-D convolution with weight normalisation over the kernel axis.

    Stored as ``weight_g``/``weight_v`` like ``torch.nn.utils.weight_norm(dim=2)``, which the
    checkpoints were saved with; computing the weight here keeps those names loadable.
    """

    def __init__(self, channels: int, kernel: int, groups: int):
        super().__init__()
        self.padding = kernel // 2
        self.groups = groups
        self.weight_g = nn.Parameter(torch.ones(1, 1, kernel))
        self.weight_v = nn.Parameter(torch.randn(channels, channels // groups, kernel) * 0.02)
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm = self.weight_v.norm(dim=(0, 1), keepdim=True)
        weight = self.weight_v * (self.weight_g / norm)
        return nn.functional.conv1d(x, weight, self.bias, padding=self.padding, groups=self.groups)


class DropLast(nn.Module):
    """An even kernel with ``padding = kernel // 2`` yields one step too many: drop the last."""

    def __init__(self, kernel: int):
        super().__init__()
        self.remove = 1 if kernel % 2 == 0 else 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[..., : -self.remove] if self.remove else x


class RelativeSelfAttention(nn.Module):
    """Multi-head self-attention with a bucketed relative position bias, gated per query."""

    def __init__(self, cfg: BEATsConfig, has_bias: bool):
        super().__init__()
        dim, heads = cfg.encoder_embed_dim, cfg.encoder_attention_heads
        self.heads = heads
        self.head_dim = dim // heads
        self.num_buckets = cfg.num_buckets
        self.max_distance = cfg.max_distance
        if has_bias:
            self.relative_attention_bias = nn.Embedding(cfg.num_buckets, heads)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.q_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)
        self.gru_rel_pos = cfg.gru_rel_pos
        if cfg.gru_rel_pos:
            self.grep_linear = nn.Linear(self.head_dim, 8)
            self.grep_a = nn.Parameter(torch.ones(1, heads, 1, 1))

    def buckets(self, length: int, device: torch.device) -> torch.Tensor:
        """T5-style bidirectional buckets: exact up to a quarter of the buckets, then log-spaced."""
        positions = torch.arange(length, device=device)
        relative = positions[None, :] - positions[:, None]
        half = self.num_buckets // 2
        bucket = (relative > 0).long() * half
        distance = relative.abs()
        exact = half // 2
        far = (
            exact
            + (
                torch.log(distance.clamp_min(1).float() / exact)
                / math.log(self.max_distance / exact)
                * (half - exact)
            ).long()
        )
        far = far.clamp_max(half - 1)
        return bucket + torch.where(distance < exact, distance, far)

    def position_bias(self, length: int) -> torch.Tensor:
        """``[heads, length, length]`` bias, computed once per forward and shared by all layers."""
        table = self.relative_attention_bias
        return table(self.buckets(length, table.weight.device)).permute(2, 0, 1)

    def forward(
        self, x: torch.Tensor, key_mask: torch.Tensor | None, bias: torch.Tensor | None
    ) -> torch.Tensor:
        batch, length, dim = x.shape

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(batch, length, self.heads, self.head_dim).transpose(1, 2)

        q, k, v = heads(self.q_proj(x)), heads(self.k_proj(x)), heads(self.v_proj(x))
        scores_bias = None
        if bias is not None:
            bias = bias[None].to(q.dtype)
            if self.gru_rel_pos:
                gates = torch.sigmoid(
                    self.grep_linear(q).view(batch, self.heads, length, 2, 4).sum(-1)
                )
                gate_a, gate_b = gates.chunk(2, dim=-1)
                bias = (gate_a * (gate_b * self.grep_a - 1.0) + 2.0) * bias
            scores_bias = bias
        if key_mask is not None:
            blocked = torch.zeros(key_mask.shape, dtype=q.dtype, device=q.device)
            blocked = blocked.masked_fill(~key_mask, float("-inf"))[:, None, None, :]
            scores_bias = blocked if scores_bias is None else scores_bias + blocked
        out = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=scores_bias)
        return self.out_proj(out.transpose(1, 2).reshape(batch, length, dim))


class EncoderLayer(nn.Module):
    def __init__(self, cfg: BEATsConfig, has_bias: bool):
        super().__init__()
        dim = cfg.encoder_embed_dim
        self.self_attn = RelativeSelfAttention(cfg, has_bias)
        self.self_attn_layer_norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, cfg.encoder_ffn_embed_dim)
        self.fc2 = nn.Linear(cfg.encoder_ffn_embed_dim, dim)
        self.final_layer_norm = nn.LayerNorm(dim)
        self.activation = _activation(cfg.activation_fn)
        self.layer_norm_first = cfg.layer_norm_first
        # Deep norm up-weights the residual branch of a post-norm layer by (2N)^(1/4).
        self.alpha = math.pow(2 * cfg.encoder_layers, 0.25) if cfg.deep_norm else 1.0

    def forward(self, x, key_mask, bias):
        if self.layer_norm_first:
            x = x + self.self_attn(self.self_attn_layer_norm(x), key_mask, bias)
            return x + self.fc2(self.activation(self.fc1(self.final_layer_norm(x))))
        x = self.self_attn_layer_norm(x * self.alpha + self.self_attn(x, key_mask, bias))
        return self.final_layer_norm(x * self.alpha + self.fc2(self.activation(self.fc1(x))))


class TransformerEncoder(nn.Module):
    def __init__(self, cfg: BEATsConfig):
        super().__init__()
        dim = cfg.encoder_embed_dim
        self.pos_conv = nn.Sequential(
            WeightNormConv1d(dim, cfg.conv_pos, cfg.conv_pos_groups),
            DropLast(cfg.conv_pos),
            nn.GELU(),
        )
        self.layers = nn.ModuleList(
            [EncoderLayer(cfg, cfg.relative_position_embedding) for _ in range(cfg.encoder_layers)]
        )
        if cfg.relative_position_embedding:
            # One table for all layers; registering it under every layer keeps the checkpoints'
            # per-layer key names (they were saved the same way).
            shared = self.layers[0].self_attn.relative_attention_bias  # type: ignore[union-attr]
            for layer in self.layers[1:]:
                layer.self_attn.relative_attention_bias = shared  # type: ignore[union-attr]
        self.relative = cfg.relative_position_embedding
        self.layer_norm_first = cfg.layer_norm_first
        self.layer_norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        if key_mask is not None:
            x = x * key_mask[..., None].to(x.dtype)
        x = x + self.pos_conv(x.transpose(1, 2)).transpose(1, 2)
        if not self.layer_norm_first:
            x = self.layer_norm(x)
        bias = (
            self.layers[0].self_attn.position_bias(x.shape[1])  # type: ignore[union-attr, operator]
            if self.relative
            else None
        )
        for layer in self.layers:
            x = layer(x, key_mask, bias)
        if self.layer_norm_first:
            x = self.layer_norm(x)
        return x


class BEATs(nn.Module):
    """The BEATs network on normalised fbank input; parameter names follow the checkpoints."""

    def __init__(self, cfg: BEATsConfig):
        super().__init__()
        self.cfg = cfg
        self.patch = cfg.input_patch_size
        self.patch_embedding = nn.Conv2d(
            1, cfg.embed_dim, kernel_size=self.patch, stride=self.patch, bias=cfg.conv_bias
        )
        self.layer_norm = nn.LayerNorm(cfg.embed_dim)
        self.post_extract_proj = (
            nn.Linear(cfg.embed_dim, cfg.encoder_embed_dim)
            if cfg.embed_dim != cfg.encoder_embed_dim
            else None
        )
        self.encoder = TransformerEncoder(cfg)
        if cfg.finetuned_model:  # loaded so fine-tuned checkpoints pass the strict check; unused
            self.predictor = nn.Linear(cfg.encoder_embed_dim, cfg.predictor_class)

    def forward(self, fbank: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
        """``fbank [B, T, mels]`` (``patches[b]`` real time patches) -> ``[B, P, F, D]``."""
        x = self.patch_embedding(fbank[:, None])  # [B, E, P, F]
        steps, bands = x.shape[2], x.shape[3]
        # Tokens run time-major (all bands of one time step, then the next), as in training.
        x = self.layer_norm(x.flatten(2).transpose(1, 2))
        if self.post_extract_proj is not None:
            x = self.post_extract_proj(x)
        key_mask = mask_from_lengths(patches, steps).bool().repeat_interleave(bands, dim=1)
        x = self.encoder(x, key_mask)
        return x.view(x.shape[0], steps, bands, x.shape[-1])


def resolve_checkpoint(checkpoint: str, cache_dir: str | Path | None = None) -> Path:
    """A local file, or a URL downloaded once into ``cache_dir`` (``$XARES_DATA_HOME/models/``)."""
    if urllib.parse.urlparse(checkpoint).scheme in ("http", "https"):
        from xares.data.download import data_home, download_file

        name = Path(urllib.parse.urlparse(checkpoint).path).name or "checkpoint.pt"
        cache = Path(cache_dir) if cache_dir else data_home() / "models"
        return download_file(checkpoint, cache / name)
    path = Path(checkpoint).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"BEATs checkpoint not found: {path}. Give encoder.checkpoint=<file.pt or URL> "
            "(the official BEATs_iter3+ checkpoints are linked from the BEATs README)"
        )
    return path


class BEATsEncoder(nn.Module):
    """BEATs features for xares: one frame per 160 ms time patch (6.25 frames per second).

    ``freq_pooling`` decides what a frame holds: ``stack`` (default) concatenates the 8 frequency
    patches of a time step (``8 * 768`` wide, nothing discarded), ``mean`` averages them (768
    wide), ``none`` emits every patch as its own frame in time-major order (50 frames per second,
    768 wide, the layout the transformer itself sees).
    """

    def __init__(
        self,
        cfg: BEATsConfig | dict[str, Any],
        freq_pooling: str = "stack",
        chunk_seconds: float | None = 10.0,
        *,
        sample_rate: int,
    ):
        super().__init__()
        cfg = cfg if isinstance(cfg, BEATsConfig) else BEATsConfig.from_dict(dict(cfg))
        if sample_rate != SAMPLE_RATE:
            raise ValueError(f"BEATs expects 16 kHz audio, got sample_rate={sample_rate}")
        if freq_pooling not in ("stack", "mean", "none"):
            raise ValueError(f"freq_pooling must be stack, mean or none, not {freq_pooling!r}")
        self.beats = BEATs(cfg)
        self.beats.eval()
        self.freq_pooling = freq_pooling
        self.n_mels = 128
        self.window = 400  # 25 ms: the shortest input that yields one fbank frame
        self.hop = 160
        patch = cfg.input_patch_size
        # Pieces hold whole patches, so chunking moves no patch boundary.
        self.chunk_frames = (
            max(1, int(round(chunk_seconds * 100)) // patch) * patch if chunk_seconds else None
        )
        bands = self.n_mels // patch
        width = cfg.encoder_embed_dim
        self.output_dim = width * bands if freq_pooling == "stack" else width

    @classmethod
    def from_checkpoint(
        cls,
        checkpoint: str = BEATS_ITER3_PLUS_AS2M_URL,
        cache_dir: str | None = None,
        **kwargs: Any,
    ) -> BEATsEncoder:
        """Build from an official checkpoint file or URL; every parameter must match by name."""
        path = resolve_checkpoint(checkpoint, cache_dir)
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict) or "cfg" not in state or "model" not in state:
            raise ValueError(f"{path} is not a BEATs checkpoint (expected keys 'cfg' and 'model')")
        encoder = cls(state["cfg"], **kwargs)
        encoder.beats.load_state_dict(state["model"], strict=True)
        log.info("BEATs loaded from %s", path)
        return encoder

    def save_checkpoint(self, path: str | Path) -> None:
        """Write ``{"cfg", "model"}`` in the official layout."""
        torch.save(
            {"cfg": dataclasses.asdict(self.beats.cfg), "model": self.beats.state_dict()}, path
        )

    def fbank(self, rows: list[torch.Tensor]) -> list[torch.Tensor]:
        """Normalised Kaldi fbank ``[frames, 128]`` of each clip (``snip_edges``: whole windows)."""
        out = []
        with torch.autocast(rows[0].device.type, enabled=False):
            for row in rows:
                feats = torchaudio.compliance.kaldi.fbank(
                    row[None].float() * 2**15,
                    num_mel_bins=self.n_mels,
                    sample_frequency=SAMPLE_RATE,
                    frame_length=25,
                    frame_shift=10,
                )
                out.append((feats - FBANK_MEAN) / (2 * FBANK_STD))
        return out

    def forward(self, audio: torch.Tensor, audio_attention_mask: torch.Tensor | None = None):
        lengths = audio_lengths(audio, audio_attention_mask)
        patch = self.beats.patch
        rows = []
        for feats in self.fbank(real_rows(audio, lengths, self.window)):
            # Trailing frames that do not fill a patch are dropped, as the patch convolution does
            # for a lone clip; a clip under one patch (~0.16 s) is padded to one.
            keep = max(1, feats.shape[0] // patch) * patch
            if feats.shape[0] < keep:
                feats = nn.functional.pad(feats, (0, 0, 0, keep - feats.shape[0]))
            rows.append(feats[:keep])
        pieces, counts = split_rows(rows, self.chunk_frames)
        batch, frames = pad_rows(pieces)
        patches = torch.div(frames, patch, rounding_mode="floor")
        tokens = self.beats(batch.to(self.beats.patch_embedding.weight.dtype), patches)
        if self.freq_pooling == "stack":
            features = tokens.flatten(2)
        elif self.freq_pooling == "mean":
            features = tokens.mean(2)
        else:
            bands = tokens.shape[2]
            features = tokens.flatten(1, 2)
            patches = patches * bands
        return join_pieces(features, patches, counts)

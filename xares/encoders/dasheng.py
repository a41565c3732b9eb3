"""Dasheng (Dinkel et al., "Scaling up masked audio encoder learning for general audio
classification", Interspeech 2024): a ViT over 64-bin log-mel spectrograms.

An implementation of the released encoder whose parameter names match the checkpoints on the
Hugging Face hub (``mispeech/dasheng-base``, ``-0.6B``, ``-1.2B``: ``config.json`` with
``encoder_kwargs`` plus ``model.safetensors`` or ``pytorch_model.bin``, keys ``encoder.*``) and
the original ``.pt`` files (``{"model": ..., "config": ...}``):

* front end: 512-point STFT (hann, centred, reflect-padded) every 10 ms, 64 HTK mel bins up to
  8 kHz, power in dB floored 120 dB below the clip's loudest bin, a BatchNorm per mel bin;
* 64x4 patches (the whole mel axis, 40 ms): 25 frames per second, with separate learned time and
  frequency position embeddings;
* pre-norm transformer blocks, final LayerNorm.

The positional table covers ``target_length`` mel frames (1008, about 10 s): longer clips are
encoded in consecutive 10 s pieces whose frames are concatenated, as the released package does.
Each clip (and each piece) is encoded at its own length, with padding masked out of attention, so
a clip's features do not depend on the rest of the batch; the dB floor is likewise per clip.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import torch
import torchaudio
from torch import nn

from xares.encoders.chunking import audio_lengths, join_pieces, pad_rows, real_rows, split_rows
from xares.encoders.contract import mask_from_lengths

log = logging.getLogger(__name__)

# The rate Dasheng was pre-trained on, and its filterbank assumes.
SAMPLE_RATE = 16000

PRESETS = {
    "dasheng-base": {"embed_dim": 768, "depth": 12, "num_heads": 12},
    "dasheng-0.6B": {"embed_dim": 1280, "depth": 32, "num_heads": 16},
    "dasheng-1.2B": {"embed_dim": 1536, "depth": 40, "num_heads": 24},
}
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


@dataclasses.dataclass
class DashengConfig:
    """The encoder settings of a Dasheng checkpoint (``encoder_kwargs`` in the hub format)."""

    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    init_values: float | None = None
    target_length: int = 1008
    patch_size: tuple[int, int] = (64, 4)
    patch_stride: tuple[int, int] = (64, 4)
    n_mels: int = 64
    n_fft: int = 512
    win_size: int = 512
    hop_size: int = 160
    f_min: float = 0.0
    f_max: float = 8000.0
    top_db: float = 120.0
    pooling: str = "mean"

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> DashengConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        kept = {k: v for k, v in values.items() if k in names}
        for key in ("patch_size", "patch_stride"):
            if key in kept:
                value = kept[key]
                kept[key] = tuple(value) if isinstance(value, (list, tuple)) else (value, value)
        return cls(**kept)

    @classmethod
    def from_hub(cls, config: dict[str, Any]) -> DashengConfig:
        """Read a hub ``config.json``: its ``encoder_kwargs``, else the preset its ``name`` names."""
        values = dict(PRESETS.get(config.get("name", ""), {}))
        values.update(config.get("encoder_kwargs") or {})
        if not values:
            raise ValueError(f"not a Dasheng config (no encoder_kwargs, unknown name): {config}")
        return cls.from_dict(values)


class SwapAxes(nn.Module):
    """Moves mel bins onto the channel axis so ``BatchNorm2d`` normalises each bin."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.transpose(1, 2)


class PatchEmbed(nn.Module):
    def __init__(self, cfg: DashengConfig):
        super().__init__()
        self.proj = nn.Conv2d(1, cfg.embed_dim, kernel_size=cfg.patch_size, stride=cfg.patch_stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class LayerScale(nn.Module):
    def __init__(self, dim: int, init_values: float):
        super().__init__()
        self.gamma = nn.Parameter(init_values * torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, qkv_bias: bool):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        batch, length, dim = x.shape
        qkv = self.qkv(x).view(batch, length, 3, self.heads, dim // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        mask = key_mask[:, None, None, :] if key_mask is not None else None
        out = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(out.transpose(1, 2).reshape(batch, length, dim))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, cfg: DashengConfig):
        super().__init__()
        dim = cfg.embed_dim
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, cfg.num_heads, cfg.qkv_bias)
        self.ls1 = LayerScale(dim, cfg.init_values) if cfg.init_values else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * cfg.mlp_ratio))
        self.ls2 = LayerScale(dim, cfg.init_values) if cfg.init_values else nn.Identity()

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x), key_mask))
        return x + self.ls2(self.mlp(self.norm2(x)))


class AudioTransformer(nn.Module):
    """The Dasheng encoder from normalised-input spectrogram to frames; checkpoint names kept."""

    def __init__(self, cfg: DashengConfig):
        super().__init__()
        if cfg.pooling != "mean":
            raise ValueError("only Dasheng checkpoints without a class token (pooling=mean) load")
        if tuple(cfg.patch_size) != tuple(cfg.patch_stride) or cfg.patch_size[0] != cfg.n_mels:
            raise ValueError(
                "Dasheng patches must span all mel bins without overlap (patch_size == "
                f"patch_stride == (n_mels, t)); got {cfg.patch_size}/{cfg.patch_stride}"
            )
        self.init_bn = nn.Sequential(
            SwapAxes(), nn.BatchNorm2d(cfg.n_mels, momentum=0.01), SwapAxes()
        )
        self.patch_embed = PatchEmbed(cfg)
        steps = cfg.target_length // cfg.patch_stride[1]
        self.time_pos_embed = nn.Parameter(torch.randn(1, cfg.embed_dim, 1, steps) * 0.02)
        self.freq_pos_embed = nn.Parameter(torch.randn(1, cfg.embed_dim, 1, 1) * 0.02)
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.depth)])
        self.norm = nn.LayerNorm(cfg.embed_dim, eps=1e-6)

    def forward(self, spec: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
        """``spec [P, 1, mels, T]`` after ``init_bn`` (``steps[p]`` real patches) -> ``[P, S, D]``."""
        x = self.patch_embed(spec)
        width = x.shape[-1]
        x = x + self.time_pos_embed[..., :width] + self.freq_pos_embed
        x = x.flatten(2).transpose(1, 2)
        key_mask = mask_from_lengths(steps, width).bool()
        for block in self.blocks:
            x = block(x, key_mask)
        return self.norm(x)


class DashengEncoder(nn.Module):
    mel_fbanks: torch.Tensor
    window: torch.Tensor
    """Dasheng features for xares: 25 frames per second, ``embed_dim`` wide (768 for base)."""

    def __init__(self, config: DashengConfig | dict[str, Any] | None = None, *, sample_rate: int):
        super().__init__()
        cfg = config if isinstance(config, DashengConfig) else DashengConfig.from_dict(config or {})
        if sample_rate != SAMPLE_RATE:
            raise ValueError(f"Dasheng expects 16 kHz audio, got sample_rate={sample_rate}")
        self.cfg = cfg
        self.encoder = AudioTransformer(cfg)
        self.encoder.eval()
        fbanks = torchaudio.functional.melscale_fbanks(
            cfg.n_fft // 2 + 1,
            cfg.f_min,
            cfg.f_max,
            cfg.n_mels,
            SAMPLE_RATE,
            norm=None,
            mel_scale="htk",
        )
        self.register_buffer("mel_fbanks", fbanks, persistent=False)
        self.register_buffer("window", torch.hann_window(cfg.win_size), persistent=False)
        self.output_dim = int(cfg.embed_dim)

    # ------------------------------------------------------------------ loading and saving
    @classmethod
    def from_pretrained(cls, name_or_path: str = "mispeech/dasheng-base", **kwargs: Any):
        """Load a hub repository id, a local directory in the hub layout, or an original ``.pt``."""
        path = Path(name_or_path).expanduser()
        if path.is_file():
            dump = torch.load(path, map_location="cpu", weights_only=True)
            weights = {k: v for k, v in dump["model"].items() if not k.startswith("front_end")}
            encoder = cls(_original_config(dump.get("config") or {}, weights), **kwargs)
            state = {f"encoder.{k}": v for k, v in weights.items()}
        else:
            config_file, weights_file = _locate(name_or_path, path)
            config = json.loads(Path(config_file).read_text())
            encoder = cls(DashengConfig.from_hub(config), **kwargs)
            state = _read_weights(weights_file)
        encoder.load_state_dict(state, strict=True)
        log.info("Dasheng loaded from %s", name_or_path)
        return encoder

    def save_pretrained(self, directory: str | Path, name: str = "dasheng-base") -> None:
        """Write ``config.json`` + ``model.safetensors`` in the hub layout."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        config = {
            "model_type": "dasheng",
            "architectures": ["DashengModel"],
            "name": name,
            "encoder_kwargs": dataclasses.asdict(self.cfg),
        }
        (directory / "config.json").write_text(json.dumps(config, indent=2))
        state = {k: v.contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(directory / "model.safetensors"))

    # ------------------------------------------------------------------ encoding
    def log_mel(
        self, batch: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """dB mel ``[N, mels, F]`` and real frames per row, as each row alone would give.

        A centred STFT reflects the signal at both ends; each row's right end is reflected at its
        own length (not at the batch's), so its last frames match the clip encoded alone.
        """
        cfg = self.cfg
        pad = cfg.n_fft // 2
        steps = torch.arange(pad, device=batch.device)
        padded = nn.functional.pad(batch, (0, pad))
        mirror = batch.gather(1, (lengths[:, None] - 2 - steps).clamp_min(0))
        padded = padded.scatter(1, lengths[:, None] + steps, mirror)
        padded = nn.functional.pad(padded[:, None], (pad, 0), mode="reflect")[:, 0]
        window = nn.functional.pad(self.window, ((cfg.n_fft - cfg.win_size) // 2,) * 2)
        spec = torch.stft(
            padded, cfg.n_fft, cfg.hop_size, window=window, center=False, return_complex=True
        )
        frames = torch.div(lengths, cfg.hop_size, rounding_mode="floor") + 1
        power = spec[..., : int(frames.max())].abs() ** 2
        mel = torch.matmul(power.transpose(1, 2), self.mel_fbanks).transpose(1, 2)
        db = 10.0 * mel.clamp_min(1e-10).log10()
        valid = mask_from_lengths(frames, db.shape[-1]).bool()[:, None, :]
        top = db.masked_fill(~valid, float("-inf")).amax(dim=(1, 2), keepdim=True)
        return torch.maximum(db, top - cfg.top_db), frames

    def forward(self, audio: torch.Tensor, audio_attention_mask: torch.Tensor | None = None):
        cfg = self.cfg
        lengths = audio_lengths(audio, audio_attention_mask)
        # Clips shorter than one FFT window are followed by silence up to it (the reflection
        # at the edges needs that many samples).
        batch, row_lengths = pad_rows(real_rows(audio, lengths, cfg.n_fft))
        with torch.autocast(batch.device.type, enabled=False):
            db, frames = self.log_mel(batch, row_lengths)
            db = self.encoder.init_bn(db[:, None])[:, 0]
        patch = cfg.patch_stride[1]
        # Whole patches only, as the patch convolution takes them; every row has at least one.
        rows = [db[b, :, : int(n) // patch * patch].T for b, n in enumerate(frames.tolist())]
        pieces, counts = split_rows(rows, cfg.target_length // patch * patch)
        spec, piece_frames = pad_rows(pieces)
        steps = torch.div(piece_frames, patch, rounding_mode="floor")
        dtype = self.encoder.patch_embed.proj.weight.dtype
        features = self.encoder(spec.transpose(1, 2)[:, None].to(dtype), steps)
        return join_pieces(features, steps, counts)


def _locate(name_or_path: str, path: Path) -> tuple[str, str]:
    """``config.json`` and the weights file of a local directory or a hub repository."""
    if path.is_dir():
        for name in WEIGHT_FILES:
            if (path / name).is_file() and (path / "config.json").is_file():
                return str(path / "config.json"), str(path / name)
        raise FileNotFoundError(
            f"{path} holds no Dasheng checkpoint (config.json + one of {', '.join(WEIGHT_FILES)})"
        )
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    try:
        config_file = hf_hub_download(name_or_path, "config.json")
    except Exception as error:
        raise FileNotFoundError(
            f"Dasheng checkpoint {name_or_path!r} is neither a local directory nor reachable on "
            f"the Hugging Face hub ({type(error).__name__}: {error}). Download it once with "
            f"`huggingface-cli download {name_or_path} --local-dir <dir>` and pass "
            "encoder.name_or_path=<dir>"
        ) from error
    for name in WEIGHT_FILES:
        try:
            return config_file, hf_hub_download(name_or_path, name)
        except EntryNotFoundError:
            continue
    raise FileNotFoundError(f"{name_or_path} has none of {', '.join(WEIGHT_FILES)}")


def _original_config(config: dict[str, Any], weights: dict[str, torch.Tensor]) -> DashengConfig:
    """The config of an original ``.pt`` checkpoint; its size comes from the weights themselves.

    The released package passes the width, depth and head count of each size explicitly rather
    than trusting the stored config, so they are read from the tensors (heads from the preset of
    that width, which is not recoverable from the weights).
    """
    values = dict(config)
    width = int(weights["time_pos_embed"].shape[1])
    values["embed_dim"] = width
    values["depth"] = len({k.split(".")[1] for k in weights if k.startswith("blocks.")})
    preset = {p["embed_dim"]: p["num_heads"] for p in PRESETS.values()}
    if width in preset:
        values["num_heads"] = preset[width]
    elif "num_heads" not in values:
        raise ValueError(f"a {width}-wide Dasheng checkpoint must state num_heads in its config")
    values["target_length"] = int(weights["time_pos_embed"].shape[-1]) * int(
        DashengConfig.from_dict(values).patch_stride[1]
    )
    return DashengConfig.from_dict(values)


def _read_weights(file: str) -> dict[str, torch.Tensor]:
    if file.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(file)
    return torch.load(file, map_location="cpu", weights_only=True)

"""The pretrained encoder zoo, offline.

Each encoder is built with random weights from a tiny config, saved in its released format,
reloaded through its Hydra config with the path overridden, and checked: the contract, frame masks
computed from each clip's length, features that do not depend on the rest of the batch, explicit
long-input handling, and one training step of the whole model (projector learns, encoder frozen).
"""

from __future__ import annotations

import functools
import http.server
import threading
from pathlib import Path

import pytest
import torch
from helpers.config import SAMPLE_RATE
from helpers.models import TINY_WHISPER
from hydra.utils import get_method, instantiate
from transformers import (
    HubertConfig,
    HubertModel,
    Wav2Vec2Config,
    Wav2Vec2FeatureExtractor,
    Wav2Vec2Model,
    WavLMConfig,
    WavLMModel,
    WhisperConfig,
    WhisperFeatureExtractor,
    WhisperModel,
)

from xares.encoders.beats import BEATsEncoder
from xares.encoders.contract import mask_from_lengths
from xares.encoders.dasheng import DashengEncoder
from xares.encoders.hf import HFSpeechEncoder
from xares.encoders.whisper import WhisperEncoder
from xares.models.build import build_model
from xares.run.plan import model_spec

SR = 16000

BEATS_CFG = {
    "encoder_layers": 2,
    "encoder_embed_dim": 32,
    "encoder_ffn_embed_dim": 64,
    "encoder_attention_heads": 4,
    "embed_dim": 24,
    "conv_pos": 8,
    "conv_pos_groups": 4,
    "num_buckets": 16,
    "max_distance": 32,
    "input_patch_size": 16,
    "deep_norm": True,
    "gru_rel_pos": True,
    "relative_position_embedding": True,
    "layer_norm_first": False,
    "conv_bias": False,
}
# target_length 64 mel frames (0.64 s) so that a 1.5 s clip already spans three pieces.
DASHENG_CFG = {"embed_dim": 32, "depth": 2, "num_heads": 4, "target_length": 64}
SPEECH_CFG = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "conv_dim": (16, 16, 16),
    "conv_kernel": (10, 3, 2),
    "conv_stride": (5, 8, 8),
    "num_conv_pos_embeddings": 16,
    "num_conv_pos_embedding_groups": 2,
    "vocab_size": 8,
}


def fill(module: torch.nn.Module, seed: int = 0) -> None:
    """Deterministic weights from the parameter names alone, independent of any init code."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in sorted(module.state_dict(keep_vars=True).items()):
            if not tensor.dtype.is_floating_point:
                continue
            if name.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)
            elif "norm" in name and name.endswith("weight"):
                tensor.copy_(1 + torch.randn(tensor.shape, generator=generator) * 0.1)
            elif name.endswith("bias"):
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.02)
            else:
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.1)


def noise(seconds: float, seed: int = 1, rows: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(rows, int(seconds * SR), generator=generator) * 0.1


def padded_batch(lengths: list[int], seed: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    audio = noise(max(lengths) / SR, seed, rows=len(lengths))
    mask = mask_from_lengths(torch.tensor(lengths), audio.shape[1])
    return audio * mask, mask


# ---------------------------------------------------------------------------- tiny checkpoints


def save_speech(directory: Path, config, model_class) -> str:
    torch.manual_seed(0)
    model_class(config).save_pretrained(directory)
    Wav2Vec2FeatureExtractor(do_normalize=True).save_pretrained(directory)
    return str(directory)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("zoo")
    beats = BEATsEncoder(BEATS_CFG, sample_rate=SAMPLE_RATE)
    fill(beats.beats)
    beats.save_checkpoint(root / "beats.pt")

    dasheng = DashengEncoder(DASHENG_CFG, sample_rate=SAMPLE_RATE)
    fill(dasheng)
    dasheng.save_pretrained(root / "dasheng")

    whisper = WhisperConfig(**TINY_WHISPER)
    torch.manual_seed(0)
    WhisperModel(whisper).save_pretrained(root / "whisper")
    WhisperFeatureExtractor().save_pretrained(root / "whisper")

    return {
        "beats": str(root / "beats.pt"),
        "dasheng": str(root / "dasheng"),
        "whisper_base": str(root / "whisper"),
        # Both wav2vec 2.0 conventions: layer-norm (batched with a mask) and group-norm (per clip).
        "wav2vec2": save_speech(
            root / "wav2vec2",
            Wav2Vec2Config(**SPEECH_CFG, feat_extract_norm="layer", do_stable_layer_norm=True),
            Wav2Vec2Model,
        ),
        "hubert": save_speech(
            root / "hubert", HubertConfig(**SPEECH_CFG, feat_extract_norm="group"), HubertModel
        ),
        "wavlm": save_speech(
            root / "wavlm",
            WavLMConfig(
                **SPEECH_CFG,
                feat_extract_norm="layer",
                do_stable_layer_norm=True,
                num_buckets=16,
                max_bucket_distance=32,
            ),
            WavLMModel,
        ),
    }


PATH_KEY = {
    "beats": "checkpoint",
    "dasheng": "name_or_path",
    "whisper_base": "name_or_path",
    "wav2vec2": "name_or_path",
    "hubert": "name_or_path",
    "wavlm": "name_or_path",
}


def hf_frames(length: int) -> int:
    for kernel, stride in zip(SPEECH_CFG["conv_kernel"], SPEECH_CFG["conv_stride"]):
        length = (length - kernel) // stride + 1
    return length


# Frames each encoder must report for a clip of `n` real samples.
EXPECTED_FRAMES = {
    "beats": lambda n: max(1, (1 + (max(n, 400) - 400) // 160) // 16),
    "dasheng": lambda n: (1 + max(n, 512) // 160) // 4,
    "whisper_base": lambda n: (max(n // 160, 1) + 1) // 2,
    "wav2vec2": hf_frames,
    "hubert": hf_frames,
    "wavlm": hf_frames,
}


def zoo_cfg(make_cfg, checkpoints, name: str, *extra: str):
    return make_cfg(
        "experiment=smoke",
        f"encoder={name}",
        f"encoder.{PATH_KEY[name]}={checkpoints[name]}",
        *extra,
    )


# ---------------------------------------------------------------------------- configs


@pytest.mark.parametrize(
    ("name", "default"),
    [
        ("beats", "BEATs_iter3_plus_AS2M.pt"),
        ("dasheng", "mispeech/dasheng-base"),
        ("dasheng_0_6b", "mispeech/dasheng-0.6B"),
        ("dasheng_1_2b", "mispeech/dasheng-1.2B"),
        ("whisper_tiny", "openai/whisper-tiny"),
        ("whisper_base", "openai/whisper-base"),
        ("whisper_small", "openai/whisper-small"),
        ("wav2vec2", "facebook/wav2vec2-base-960h"),
        ("hubert", "facebook/hubert-base-ls960"),
        ("wavlm", "microsoft/wavlm-base-plus"),
    ],
)
def test_config_composes_with_the_public_checkpoint(make_cfg, name, default):
    encoder = make_cfg(f"encoder={name}").encoder
    assert callable(get_method(encoder._target_))
    assert default in str(encoder.get("checkpoint", encoder.get("name_or_path")))
    assert encoder.sample_rate == SR


# ---------------------------------------------------------------------------- every encoder


@pytest.mark.parametrize("name", list(PATH_KEY))
def test_encoder_loads_masks_and_trains(make_cfg, checkpoints, name):
    cfg = zoo_cfg(make_cfg, checkpoints, name)
    model = build_model(
        model_spec(cfg)
    )  # instantiates through the config and runs the contract checker
    encoder = model.encoder

    lengths = [SR, int(0.55 * SR), int(0.3 * SR)]
    audio, mask = padded_batch(lengths)
    with torch.no_grad():
        features, frame_mask = encoder(audio, mask)
    expected = [EXPECTED_FRAMES[name](n) for n in lengths]
    assert frame_mask.sum(-1).tolist() == expected
    assert features.shape == (3, max(expected), encoder.output_dim)
    assert torch.isfinite(features).all()

    # Each clip alone gives the same features on its real frames: padding does not leak.
    for row, length in enumerate(lengths):
        with torch.no_grad():
            alone, alone_mask = encoder(audio[row : row + 1, :length], None)
        frames = expected[row]
        assert alone.shape[1] == frames and alone_mask.sum() == frames
        torch.testing.assert_close(features[row, :frames], alone[0], atol=1e-4, rtol=1e-4)

    # One training step: gradients reach the projector and never the frozen encoder.
    model.train()
    assert not encoder.training
    loss = model(audio, mask, ["Name it."] * 3, ["a", "bb", "ccc"])
    loss.backward()
    grads = [p.grad for p in model.projector.parameters()]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)
    assert all(not p.requires_grad and p.grad is None for p in encoder.parameters())


# ---------------------------------------------------------------------------- reference values

# Outputs of the released implementations (the BEATs reference code and the `dasheng` package)
# on the same deterministic weights and input: tokens 0, middle and last, first 4 channels.
BEATS_REFERENCE = [
    [1.126946, -0.422403, -1.100148, 0.337172],
    [0.165460, 0.491107, -1.453318, -0.518737],
    [0.296538, 0.573709, -1.378537, -0.666048],
]
DASHENG_REFERENCE = [
    [-0.303979, 0.249129, 0.506070, 1.448157],
    [0.449989, 0.447750, 0.321190, 1.229563],
    [0.053548, 0.740626, 0.083463, 1.144232],
]


def test_beats_matches_the_reference_implementation(checkpoints):
    encoder = BEATsEncoder.from_checkpoint(
        checkpoints["beats"], freq_pooling="none", chunk_seconds=None, sample_rate=SAMPLE_RATE
    )
    with torch.no_grad():
        tokens, mask = encoder(noise(1.5), None)
    assert tokens.shape == (1, 72, 32) and mask.sum() == 72  # 9 time patches x 8 bands
    picked = tokens[0, [0, 36, -1], :4]
    torch.testing.assert_close(picked, torch.tensor(BEATS_REFERENCE), atol=1e-4, rtol=1e-4)
    assert abs(tokens.abs().mean().item() - 0.769305) < 1e-4


def test_dasheng_matches_the_reference_implementation(checkpoints):
    encoder = DashengEncoder.from_pretrained(checkpoints["dasheng"], sample_rate=SAMPLE_RATE)
    with torch.no_grad():
        frames, mask = encoder(noise(1.5), None)
    assert frames.shape == (1, 37, 32) and mask.sum() == 37  # 16 + 16 + 5 over three pieces
    picked = frames[0, [0, 18, -1], :4]
    torch.testing.assert_close(picked, torch.tensor(DASHENG_REFERENCE), atol=1e-4, rtol=1e-4)
    assert abs(frames.abs().mean().item() - 0.826588) < 1e-4


def test_dasheng_front_end_is_the_released_one(checkpoints):
    import torchaudio

    encoder = DashengEncoder.from_pretrained(checkpoints["dasheng"], sample_rate=SAMPLE_RATE)
    clip = noise(0.7) * 5  # loud enough for the 120 dB floor to matter nowhere but be computed
    released = torch.nn.Sequential(
        torchaudio.transforms.MelSpectrogram(
            f_min=0,
            sample_rate=SR,
            win_length=512,
            center=True,
            n_fft=512,
            f_max=8000,
            hop_length=160,
            n_mels=64,
        ),  # fmt: skip
        torchaudio.transforms.AmplitudeToDB(top_db=120),
    )
    ours, frames = encoder.log_mel(clip, torch.tensor([clip.shape[1]]))
    torch.testing.assert_close(ours, released(clip), atol=1e-3, rtol=1e-4)
    assert frames.tolist() == [1 + clip.shape[1] // 160]


def test_whisper_full_window_is_transformers_whisper(checkpoints):
    path = checkpoints["whisper_base"]
    encoder = WhisperEncoder(path, full_window=True, sample_rate=SAMPLE_RATE)
    audio, mask = padded_batch([SR, int(0.5 * SR)])
    extractor = WhisperFeatureExtractor.from_pretrained(path)
    reference = WhisperModel.from_pretrained(path).encoder.eval()
    with torch.no_grad():
        ours, frame_mask = encoder(audio, mask)
        inputs = extractor([audio[0].numpy(), audio[1, : SR // 2].numpy()], sampling_rate=SR)
        theirs = reference(torch.as_tensor(inputs["input_features"])).last_hidden_state
    assert frame_mask.sum(-1).tolist() == [50, 25]
    torch.testing.assert_close(ours[0], theirs[0, :50], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ours[1, :25], theirs[1, :25], atol=1e-4, rtol=1e-4)


def test_hf_encoder_is_the_automodel_and_picks_layers(checkpoints):
    path = checkpoints["hubert"]
    clip = noise(0.8)
    normalised = (clip - clip.mean()) / torch.sqrt(clip.var(unbiased=False) + 1e-7)
    reference = HubertModel.from_pretrained(path).eval()
    with torch.no_grad():
        out = reference(normalised, output_hidden_states=True)
        last, _ = HFSpeechEncoder(path, sample_rate=SAMPLE_RATE)(clip, None)
        first, _ = HFSpeechEncoder(path, layer=1, sample_rate=SAMPLE_RATE)(clip, None)
    torch.testing.assert_close(last, out.last_hidden_state, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(first, out.hidden_states[1], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="out of range"):
        HFSpeechEncoder(path, layer=7, sample_rate=SAMPLE_RATE)


# ---------------------------------------------------------------------------- long inputs


def test_whisper_encodes_long_clips_in_30_second_windows(checkpoints):
    encoder = WhisperEncoder(checkpoints["whisper_base"], sample_rate=SAMPLE_RATE)
    clip = noise(65)
    with torch.no_grad():
        features, mask = encoder(clip, None)
        first, _ = encoder(clip[:, : 30 * SR], None)
    assert features.shape[1] == mask.sum() == 1500 + 1500 + 250
    torch.testing.assert_close(features[:, :1500], first, atol=1e-4, rtol=1e-4)


def test_beats_chunks_on_patch_boundaries(checkpoints):
    # 0.64 s pieces hold exactly 4 time patches (64 fbank frames).
    encoder = BEATsEncoder.from_checkpoint(
        checkpoints["beats"], chunk_seconds=0.64, sample_rate=SAMPLE_RATE
    )
    clip = noise(1.5)
    with torch.no_grad():
        features, mask = encoder(clip, None)
        # The first piece's 64 frames come from its first 400 + 63 * 160 samples.
        first, _ = encoder(clip[:, : 400 + 63 * 160], None)
    assert mask.sum() == 9 and features.shape == (1, 9, 8 * 32)
    torch.testing.assert_close(features[:, :4], first, atol=1e-5, rtol=1e-5)


def test_hf_chunking_is_optional_and_explicit(checkpoints):
    path = checkpoints["wav2vec2"]
    clip = noise(2.0)
    with torch.no_grad():
        whole, _ = HFSpeechEncoder(path, sample_rate=SAMPLE_RATE)(clip, None)
        pieces, mask = HFSpeechEncoder(path, chunk_seconds=1.0, sample_rate=SAMPLE_RATE)(clip, None)
        half, _ = HFSpeechEncoder(path, sample_rate=SAMPLE_RATE)(clip[:, :SR], None)
    assert whole.shape[1] == hf_frames(2 * SR)
    assert mask.sum() == pieces.shape[1] == 2 * hf_frames(SR)
    torch.testing.assert_close(pieces[:, : half.shape[1]], half, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------- loading


def test_beats_checkpoint_must_match_by_name(checkpoints, tmp_path):
    state = torch.load(checkpoints["beats"], weights_only=True)
    del state["model"]["encoder.layers.1.self_attn.grep_a"]
    torch.save(state, tmp_path / "broken.pt")
    with pytest.raises(RuntimeError, match="grep_a"):
        BEATsEncoder.from_checkpoint(str(tmp_path / "broken.pt"), sample_rate=SAMPLE_RATE)
    with pytest.raises(FileNotFoundError, match="encoder.checkpoint"):
        BEATsEncoder.from_checkpoint(str(tmp_path / "absent.pt"), sample_rate=SAMPLE_RATE)


def test_beats_checkpoint_url_is_downloaded_once(checkpoints, data_home):
    folder = str(Path(checkpoints["beats"]).parent)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=folder)
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/beats.pt?sig=abc"
        encoder = BEATsEncoder.from_checkpoint(url, sample_rate=SAMPLE_RATE)
    finally:
        server.shutdown()
    assert (data_home / "models" / "beats.pt").is_file()
    assert encoder.output_dim == 8 * 32
    BEATsEncoder.from_checkpoint(
        url, sample_rate=SAMPLE_RATE
    )  # the server is gone: served from the cache


def test_hf_checkpoint_missing_encoder_weights_is_refused(checkpoints, tmp_path):
    from safetensors.torch import load_file, save_file

    source = Path(checkpoints["hubert"])
    target = tmp_path / "hubert"
    target.mkdir()
    for file in source.iterdir():
        target.joinpath(file.name).write_bytes(file.read_bytes())
    weights = load_file(target / "model.safetensors")
    weights = {k: v for k, v in weights.items() if ".layers.1." not in k}
    save_file(weights, target / "model.safetensors")
    with pytest.raises(RuntimeError, match="missing from the checkpoint"):
        HFSpeechEncoder(str(target), sample_rate=SAMPLE_RATE)


def test_dasheng_directory_without_weights_is_refused(tmp_path):
    (tmp_path / "config.json").write_text('{"name": "dasheng-base"}')
    with pytest.raises(FileNotFoundError, match="no Dasheng checkpoint"):
        DashengEncoder.from_pretrained(str(tmp_path), sample_rate=SAMPLE_RATE)


def test_dasheng_original_checkpoint_loads(checkpoints, tmp_path):
    """The original ``{"model", "config"}`` files: unprefixed keys plus a front end to drop."""
    encoder = DashengEncoder.from_pretrained(checkpoints["dasheng"], sample_rate=SAMPLE_RATE)
    state = {k.removeprefix("encoder."): v for k, v in encoder.state_dict().items()}
    state["front_end.0.mel_scale.fb"] = torch.zeros(257, 64)
    torch.save({"model": state, "config": {"num_heads": 4, "target_length": 64}}, tmp_path / "d.pt")
    again = DashengEncoder.from_pretrained(str(tmp_path / "d.pt"), sample_rate=SAMPLE_RATE)
    clip = noise(0.5)
    with torch.no_grad():
        torch.testing.assert_close(again(clip, None)[0], encoder(clip, None)[0])


# ---------------------------------------------------------------------------- full run


@pytest.mark.slow
def test_train_runs_with_a_zoo_encoder(make_cfg, checkpoints):
    from xares.run.train import train

    cfg = zoo_cfg(
        make_cfg,
        checkpoints,
        "whisper_base",
        "trainer.max_steps=2",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
        "data.eval_limit=2",
        "generation.max_new_tokens=2",
        "logger=none",
    )
    summary = train(cfg)
    assert summary and 0.0 <= summary["overall"] <= 1.0
    assert isinstance(instantiate(cfg.encoder), WhisperEncoder)

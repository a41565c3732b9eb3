"""How far Whisper's trimmed mode (``full_window=False``) is from the challenge's features.

    python experiments/whisper_trimmed_deviation.py [--seeds 3]

Builds a random tiny Whisper from a config (nothing is downloaded), encodes clips of several
lengths in both modes and prints, per length, the largest absolute difference between the
modes' frames divided by the largest absolute full-window feature (the worst case over the
seeds), and the same for the full-window mode against transformers' own
``WhisperFeatureExtractor`` + encoder. Random weights give the size of the effect, not the
change in a trained model's score.
"""

from __future__ import annotations

import argparse
import tempfile

import torch
from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperModel

from xares.encoders.whisper import WhisperEncoder

SR = 16000
LENGTHS = (1.0, 5.0, 10.0, 20.0, 29.0, 30.0)


def tiny_whisper(path: str, seed: int) -> None:
    config = WhisperConfig(
        d_model=64,
        encoder_layers=2,
        encoder_attention_heads=4,
        encoder_ffn_dim=128,
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
    torch.manual_seed(seed)
    WhisperModel(config).save_pretrained(path)
    WhisperFeatureExtractor().save_pretrained(path)


def clip(seconds: float, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    t = torch.arange(round(seconds * SR)) / SR
    noise = torch.randn(t.shape[0], generator=generator)
    return 0.3 * torch.sin(2 * torch.pi * 440 * t) + 0.05 * noise


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    worst_trimmed = dict.fromkeys(LENGTHS, 0.0)
    worst_full = dict.fromkeys(LENGTHS, 0.0)
    for seed in range(args.seeds):
        with tempfile.TemporaryDirectory() as path:
            tiny_whisper(path, seed)
            full = WhisperEncoder(path, full_window=True, sample_rate=SR)
            trimmed = WhisperEncoder(path, full_window=False, sample_rate=SR)
            extractor = WhisperFeatureExtractor.from_pretrained(path)
            reference = WhisperModel.from_pretrained(path).get_encoder().eval()
            for seconds in LENGTHS:
                audio = clip(seconds, seed)
                inputs = extractor(audio.numpy(), sampling_rate=SR, return_tensors="pt")
                with torch.no_grad():
                    a, _ = full(audio[None], None)
                    b, _ = trimmed(audio[None], None)
                    theirs = reference(inputs["input_features"]).last_hidden_state
                scale = a.abs().max()
                frames = a.shape[1]
                worst_trimmed[seconds] = max(
                    worst_trimmed[seconds], float((a - b).abs().max() / scale)
                )
                worst_full[seconds] = max(
                    worst_full[seconds], float((a - theirs[:, :frames]).abs().max() / scale)
                )
    print("clip (s)  trimmed vs full window  full window vs transformers")
    for seconds in LENGTHS:
        print(f"{seconds:8.1f}  {worst_trimmed[seconds]:22.2%}  {worst_full[seconds]:27.1e}")


if __name__ == "__main__":
    main()

"""Time the frozen-encoder feature cache with real-sized encoders: uncached vs miss vs hit.

Whisper-base and Dasheng-base are built from their configurations with random weights (no
download; the cost of a forward pass does not depend on the weights' values) and run on CPU on
batches of 4 × 10 s clips:

* ``uncached``: the encoder itself (``normalise_output(encoder(audio, mask))``);
* ``miss``: a cold cache with a disk directory: the encoder, the copy to CPU and the file writes;
* ``hit (memory)``: every clip in the in-memory LRU;
* ``hit (disk)``: a cache with no memory level reading every clip from its file.

    python experiments/bench_feature_cache.py                         # both encoders, 1-2 min
    python experiments/bench_feature_cache.py --encoders dasheng --batches 3 --threads 4

Prints a table of ms per batch (mean for the encoder and misses, median of many calls for
hits) and the speed-up of a hit over the encoder, and writes the same numbers as JSON
(``--out``). On a shared machine, run it twice: timings follow the other processes' load.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from xares.encoders.cache import (  # noqa: E402
    FeatureCache,
    batch_variation,
    clip_id,
    encoder_fingerprint,
)
from xares.encoders.contract import mask_from_lengths, normalise_output  # noqa: E402

SAMPLE_RATE = 16000


def build_whisper_base(folder: Path) -> torch.nn.Module:
    """``WhisperEncoder`` over whisper-base's encoder sizes (the decoder is cut to a stub)."""
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperModel

    from xares.encoders.whisper import WhisperEncoder

    config = WhisperConfig(
        d_model=512,
        encoder_layers=6,
        encoder_attention_heads=8,
        encoder_ffn_dim=2048,
        num_mel_bins=80,
        # The decoder is discarded on load; a small one keeps the temporary checkpoint small.
        decoder_layers=1,
        decoder_attention_heads=8,
        decoder_ffn_dim=64,
        vocab_size=64,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        decoder_start_token_id=1,
    )
    WhisperModel(config).save_pretrained(folder)
    WhisperFeatureExtractor(feature_size=80).save_pretrained(folder)
    return WhisperEncoder(str(folder), sample_rate=SAMPLE_RATE)


def build_dasheng_base(folder: Path) -> torch.nn.Module:
    from xares.encoders.dasheng import PRESETS, DashengEncoder

    return DashengEncoder(dict(PRESETS["dasheng-base"]), sample_rate=SAMPLE_RATE)


BUILDERS = {"whisper_base": build_whisper_base, "dasheng": build_dasheng_base}


def make_batches(count: int, batch: int, seconds: float, seed: int = 0):
    """``count`` batches of distinct clips, each as (audio, mask, clip ids)."""
    generator = torch.Generator().manual_seed(seed)
    samples = int(seconds * SAMPLE_RATE)
    batches = []
    for _ in range(count):
        clips = [torch.randn(samples, generator=generator) * 0.1 for _ in range(batch)]
        audio = torch.stack(clips)
        mask = mask_from_lengths(torch.full((batch,), samples), samples)
        batches.append((audio, mask, [clip_id(c) for c in clips]))
    return batches


def elapsed_ms(function, *args) -> float:
    started = time.perf_counter()
    function(*args)
    return (time.perf_counter() - started) * 1000


def bench_encoder(name: str, args, work: Path) -> dict:
    started = time.perf_counter()
    encoder = BUILDERS[name](work / name).eval()
    build_s = time.perf_counter() - started
    for parameter in encoder.parameters():
        parameter.requires_grad_(False)
    parameters = sum(p.numel() for p in encoder.parameters())

    def encode_fn(audio, mask):
        with torch.no_grad():
            return normalise_output(encoder(audio, mask), mask)

    started = time.perf_counter()
    fingerprint = encoder_fingerprint(encoder, {"encoder": name}, sample_rate=SAMPLE_RATE)
    fingerprint_s = time.perf_counter() - started

    batches = make_batches(args.batches, args.batch_size, args.seconds)
    encode_fn(*batches[0][:2])  # first-call allocations and kernel selection, not measured

    directory = work / "features"
    warm = FeatureCache(fingerprint, memory_gb=args.memory_gb, directory=directory)
    # Uncached and miss alternate batch by batch, so load from other processes on a shared
    # machine falls on both alike; each batch holds new clips, so every row is a miss.
    uncached, miss = [], []
    for audio, mask, ids in batches:
        uncached.append(elapsed_ms(encode_fn, audio, mask))
        miss.append(elapsed_ms(warm.encode, encode_fn, audio, mask, ids))
    # Hits are short: the median over many calls is robust to a stray scheduling delay.
    cold = FeatureCache(fingerprint, memory_gb=0, directory=directory)
    hit_memory, hit_disk = [], []
    for _ in range(args.hit_repeats):
        for audio, mask, ids in batches:
            hit_memory.append(elapsed_ms(warm.encode, encode_fn, audio, mask, ids))
            hit_disk.append(elapsed_ms(cold.encode, encode_fn, audio, mask, ids))
    # The best hit shows the cache's own cost; the median adds what the machine's other load
    # (and first-touch page faults of the fresh output batch) cost on top.
    best = {"hit_memory": min(hit_memory), "hit_disk": min(hit_disk)}
    uncached, miss = statistics.mean(uncached), statistics.mean(miss)
    hit_memory, hit_disk = statistics.median(hit_memory), statistics.median(hit_disk)
    expected_hits = args.batches * args.batch_size * args.hit_repeats
    if warm.stats["hits"] != expected_hits or cold.stats["disk_reads"] != expected_hits:
        raise RuntimeError(f"unexpected cache behaviour: {warm.stats} / {cold.stats}")

    features, mask = encode_fn(*batches[0][:2])
    row_bytes = int(mask[0].sum()) * features.shape[-1] * features.element_size()
    clip = batches[0][0][0].clone()
    started = time.perf_counter()
    for _ in range(20):
        clip_id(clip)
    clip_id_ms = (time.perf_counter() - started) * 1000 / 20
    variation = batch_variation(encode_fn, sample_rate=SAMPLE_RATE)
    return {
        "encoder": name,
        "batch_variation": variation,
        "parameters": parameters,
        "build_s": round(build_s, 2),
        "fingerprint_s": round(fingerprint_s, 3),
        "clip_id_ms_per_clip": round(clip_id_ms, 3),
        "frames_per_clip": int(mask[0].sum()),
        "bytes_per_clip": row_bytes,
        "ms_per_batch": {
            "uncached": round(uncached, 2),
            "miss": round(miss, 2),
            "hit_memory": round(hit_memory, 3),
            "hit_disk": round(hit_disk, 3),
        },
        "best_ms_per_batch": {key: round(value, 3) for key, value in best.items()},
        "speedup_hit_memory": round(uncached / hit_memory, 1),
        "speedup_hit_disk": round(uncached / hit_disk, 1),
        "miss_overhead": round(miss / uncached - 1, 4),
        "stats_memory_cache": warm.stats,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--encoders", default="whisper_base,dasheng")
    parser.add_argument("--batches", type=int, default=2, help="distinct batches per encoder")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--hit-repeats", type=int, default=10, help="passes over the hit batches")
    parser.add_argument("--memory-gb", type=float, default=1.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "outputs" / "bench_feature_cache.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    names = [n.strip() for n in args.encoders.split(",") if n.strip()]
    unknown = sorted(set(names) - set(BUILDERS))
    if unknown:
        parser.error(f"unknown encoder(s) {unknown}; choose from {sorted(BUILDERS)}")
    results = []
    with tempfile.TemporaryDirectory(prefix="bench_feature_cache_") as folder:
        for name in names:
            results.append(bench_encoder(name, args, Path(folder)))
            print(f"{name}: done", file=sys.stderr, flush=True)

    shape = f"{args.batch_size} x {args.seconds:g} s clips, {args.batches} batches"
    print(f"\nfeature cache on CPU ({args.threads} threads), {shape}; ms per batch\n")
    header = (
        f"{'encoder':<14}{'params':>8}{'uncached':>11}{'miss':>11}{'hit mem':>10}"
        f"{'hit disk':>10}{'mem ×':>9}{'disk ×':>9}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        t = r["ms_per_batch"]
        print(
            f"{r['encoder']:<14}{r['parameters'] / 1e6:>7.1f}M{t['uncached']:>11.1f}"
            f"{t['miss']:>11.1f}{t['hit_memory']:>10.2f}{t['hit_disk']:>10.2f}"
            f"{r['speedup_hit_memory']:>8.0f}x{r['speedup_hit_disk']:>8.0f}x"
        )
    print()
    for r in results:
        print(
            f"{r['encoder']}: {r['frames_per_clip']} frames/clip, "
            f"{r['bytes_per_clip'] / 1e6:.2f} MB/clip stored; best hit "
            f"{r['best_ms_per_batch']['hit_memory']:.2f} ms (memory), "
            f"{r['best_ms_per_batch']['hit_disk']:.2f} ms (disk); miss overhead "
            f"{100 * r['miss_overhead']:+.1f}%; clip_id {r['clip_id_ms_per_clip']:.2f} ms/clip; "
            f"fingerprint {r['fingerprint_s']:.2f} s; batch variation {r['batch_variation']:.1e}"
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "settings": vars(args),
        "torch": torch.__version__,
        "machine": platform.machine(),
        "results": results,
    }
    out.write_text(json.dumps(report, indent=2))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Speed of xares's own training step and generation: the reference's setting against the fast path.

Both settings run in this one process, on the same synthetic clips, through the real code:
the collate (token ids, clip digests) in loader workers, ``AudioLLM`` (encoder, feature cache,
projector, splice, decoder, loss), gradient clipping and the AdamW step, then ``generate``.

* ``reference``: ``speed=reference`` — fp32, eager, deterministic algorithms, full-vocabulary
  logits at every position, the protocol's batch of 4, a dynamic KV cache.
* ``fast``: ``speed=fast`` — on a GPU: bf16 frozen decoder, compiled step on bucketed shapes,
  target-position logits, fused AdamW, cached encoder features, static KV cache, big eval
  batches. On a CPU the same switches resolve to eager fp32 (see ``conf/speed/fast.yaml``).

    python experiments/bench_speed.py                     # GPU: protocol shapes; CPU: small ones
    python experiments/bench_speed.py --preset cpu --json out.json
    python experiments/bench_speed.py --seconds 2.25 --frame-rate 25 --dim 768   # mini-suite shapes

It prints a table (samples/s, warm-up seconds, peak memory, time waiting for data) and ends
with ``speedup: train <x>x, generate <y>x``, the fast path over the reference measured here.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
# Deterministic cuBLAS for the reference setting must be configured before CUDA starts.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.utils import instantiate  # noqa: E402
from torch.utils.data import DataLoader, IterableDataset, get_worker_info  # noqa: E402

from xares.data.collate import collate  # noqa: E402
from xares.data.lengths import lengths_of  # noqa: E402
from xares.data.samples import Example  # noqa: E402
from xares.encoders.cache import clip_id  # noqa: E402
from xares.models.build import build_model  # noqa: E402
from xares.run.plan import model_spec  # noqa: E402
from xares.training.module import build_optimizer  # noqa: E402

PRESETS: dict[str, dict[str, Any]] = {
    # The protocol's shapes: 10 s clips at 25 frames/s (250 frames), ~20 text tokens, batch 4.
    "gpu": dict(
        llm="smollm2_135m_random",
        seconds=10.0,
        frame_rate=25.0,
        dim=768,
        target_words=6,
        batch=4,
        steps=200,
        warmup=30,
        clips=256,
        gen_clips=32,
        gen_batch=32,
        new_tokens=150,
        workers=4,
        test_task="mini",
    ),
    # A couple of minutes on two CPU cores: the tiny decoder, short clips.
    "cpu": dict(
        llm="tiny_random",
        seconds=2.0,
        frame_rate=25.0,
        dim=64,
        target_words=4,
        batch=4,
        steps=12,
        warmup=3,
        clips=32,
        gen_clips=16,
        gen_batch=16,
        new_tokens=8,
        workers=0,
        test_task="smoke",
    ),
}
WORDS = "dog cat bird rain engine speech music bell siren wind water door car laugh".split()
PROMPTS = ["What sound is this?", "Transcribe the speech.", "Describe the audio in detail."]


class Clips(IterableDataset):
    """Endless batches collated from a fixed pool of clips, as the training loader makes them.

    The pool repeats, as a task's training set does over epochs, so cached features are hit
    from the second pass on. Lengths vary by ±10% around ``seconds``.
    """

    def __init__(self, args, text, digest, batch: int, seed: int = 0):
        self.args, self.text, self.digest, self.batch, self.seed = args, text, digest, batch, seed

    def examples(self) -> list[Example]:
        rng = random.Random(self.seed)
        generator = torch.Generator().manual_seed(self.seed)
        pool = []
        for index in range(self.args.clips):
            samples = int(self.args.seconds * 16000 * rng.uniform(0.9, 1.1))
            audio = torch.randn(samples, generator=generator) * 0.1
            target = " ".join(rng.choice(WORDS) for _ in range(self.args.target_words))
            pool.append(Example(f"clip{index}", audio, rng.choice(PROMPTS), [target], "bench"))
        return pool

    def __iter__(self):
        pool = self.examples()
        info = get_worker_info()
        rng = random.Random(self.seed + (info.id if info else 0))
        while True:
            yield collate(rng.sample(pool, self.batch), text=self.text, digest=self.digest)


def build(args, setting: str, device: torch.device):
    overrides = [
        f"llm={args.llm}",
        "encoder=dummy",
        f"encoder.frame_rate={args.frame_rate}",
        f"encoder.output_dim={args.dim}",
        f"speed={setting}",
        "llm.lora.dropout=0.1",
        f"data.batch_size={args.batch}",
    ]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=overrides + list(args.override))
    torch.manual_seed(0)
    model = build_model(model_spec(cfg), check=False).to(device)
    model.configure_speed(device)
    if model.speed.shaped:
        # speed.buckets=auto: the compiled shapes from this benchmark's own batches.
        stream = iter(Clips(args, model.text, None, args.batch))
        model.plan_shapes([lengths_of(next(stream)) for _ in range(64)])
    return cfg, model


def optimizer_for(cfg, model) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    return build_optimizer(instantiate(cfg.optimizer), params, cfg.speed.get("fused_optimizer"))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB"
    return f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB RSS"


def to_device(batch: dict, device: torch.device) -> dict:
    return {
        k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v
        for k, v in batch.items()
    }


def time_training(args, setting: str, device: torch.device) -> dict[str, Any]:
    cfg, model = build(args, setting, device)
    model.train()
    optimizer = optimizer_for(cfg, model)
    digest = clip_id if model.feature_cache is not None else None
    batch = args.batch
    loader = DataLoader(
        Clips(args, model.text, digest, batch),
        batch_size=None,
        num_workers=args.workers,
        pin_memory=device.type == "cuda",
        prefetch_factor=4 if args.workers else None,
    )
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    deterministic = bool(cfg.trainer.get("deterministic"))
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(deterministic)
    batches = iter(loader)
    first_loss = None
    waited = 0.0

    def step() -> torch.Tensor:
        nonlocal waited
        started = time.perf_counter()
        data = to_device(next(batches), device)
        waited += time.perf_counter() - started
        loss = model.batch_loss(data)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    try:
        started = time.perf_counter()
        for index in range(args.warmup):
            loss = step()
            if index == 0:
                first_loss = float(loss.detach())
        sync(device)
        warmup = time.perf_counter() - started
        waited = 0.0
        started = time.perf_counter()
        for _ in range(args.steps):
            loss = step()
        sync(device)
        elapsed = time.perf_counter() - started
    finally:
        torch.use_deterministic_algorithms(previous)
    cache = model.feature_cache.stats if model.feature_cache is not None else None
    return {
        "phase": "train",
        "setting": setting,
        "batch": batch,
        "samples_per_s": args.steps * batch / elapsed,
        "warmup_s": warmup,
        "peak_memory": peak_memory(device),
        "data_wait_pct": 100.0 * waited / elapsed,
        "first_loss": first_loss,
        "last_loss": float(loss.detach()),
        "feature_cache": dict(cache) if cache else None,
        "speed": {k: str(v) for k, v in model.resolved_speed.items() if k != "compile_args"},
    }


def time_generation(args, setting: str, device: torch.device, batch: int) -> dict[str, Any]:
    cfg, model = build(args, setting, device)
    model.eval()
    digest = clip_id if model.feature_cache is not None else None
    pool = Clips(args, None, None, batch, seed=1).examples()[: args.gen_clips]
    # Length-sorted batches, as the test loader makes them.
    pool.sort(key=lambda e: e.audio.shape[0])
    batches = [
        collate(pool[i : i + batch], references=True, text=model.text, digest=digest)
        for i in range(0, len(pool), batch)
    ]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    settings = {"max_new_tokens": args.new_tokens}

    def run_all() -> list[str]:
        answers = []
        for data in batches:
            data = to_device(data, device)
            answers += model.batch_answers(data, **settings)
        sync(device)
        return answers

    started = time.perf_counter()
    run_all()  # warm-up: compilation, cache fill
    warmup = time.perf_counter() - started
    started = time.perf_counter()
    answers = run_all()
    elapsed = time.perf_counter() - started
    return {
        "phase": "generate",
        "setting": setting,
        "batch": batch,
        "samples_per_s": len(pool) / elapsed,
        "warmup_s": warmup,
        "peak_memory": peak_memory(device),
        "data_wait_pct": None,
        "answers": answers,
    }


def time_test_loop(args, setting: str, device: torch.device) -> dict[str, Any]:
    """The real evaluation: ``train=false`` through Lightning's test loop, loaders and scoring.

    Clips per second come from the run's own efficiency block (time inside the test loop).
    """
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from xares.run.train import train

    out = args.work / f"test-loop-{setting}"
    overrides = [
        f"task={args.test_task}",
        "train=false",
        f"speed={setting}",
        f"llm={args.llm}",
        "encoder=dummy",
        f"encoder.frame_rate={args.frame_rate}",
        f"encoder.output_dim={args.dim}",
        "logger=none",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
        f"trainer.accelerator={'gpu' if device.type == 'cuda' else 'cpu'}",
        f"generation.max_new_tokens={args.new_tokens}",
        f"data.num_workers={args.workers}",
        f"paths.data_dir={args.data_dir}",
        f"paths.log_dir={out}",
    ]
    if setting == "reference":
        overrides.append("data.eval_batch_size=4")
    if args.test_limit:
        overrides.append(f"data.eval_limit={args.test_limit}")
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=overrides + list(args.override), return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(out / "run")
        del cfg["hydra"]
    summary = train(cfg)
    evaluation = summary["efficiency"]["eval"]
    return {
        "phase": "test loop",
        "setting": setting,
        "batch": int(cfg.data.eval_batch_size or 0) or "per set",
        "samples_per_s": evaluation["clips_per_sec"],
        "warmup_s": 0.0,
        "peak_memory": peak_memory(device),
        "data_wait_pct": None,
        "clips": evaluation["clips"],
        "overall": summary.get("overall"),
    }


def table(rows: list[dict[str, Any]]) -> str:
    header = ["phase", "setting", "batch", "samples/s", "warm-up s", "peak memory", "data wait"]
    lines = [
        [
            r["phase"],
            r["setting"],
            str(r["batch"]),
            f"{r['samples_per_s']:.2f}",
            f"{r['warmup_s']:.1f}",
            r["peak_memory"],
            "-" if r["data_wait_pct"] is None else f"{r['data_wait_pct']:.1f}%",
        ]
        for r in rows
    ]
    widths = [max(len(x[i]) for x in [header, *lines]) for i in range(len(header))]
    render = ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in [header, *lines]]
    render.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(render)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", choices=sorted(PRESETS), help="default: gpu if CUDA, else cpu")
    parser.add_argument("--device", help="cuda, cpu, ... (default: cuda if available)")
    parser.add_argument("--llm", help="llm config option")
    parser.add_argument("--seconds", type=float, help="mean clip length")
    parser.add_argument("--frame-rate", type=float, help="encoder frames per second")
    parser.add_argument("--dim", type=int, help="encoder output width")
    parser.add_argument("--target-words", type=int, help="words per target answer")
    parser.add_argument("--batch", type=int, help="training batch (both settings)")
    parser.add_argument("--steps", type=int, help="timed training steps")
    parser.add_argument("--warmup", type=int, help="untimed warm-up steps")
    parser.add_argument("--clips", type=int, help="training clips in the repeating pool")
    parser.add_argument("--gen-clips", type=int, help="clips to generate answers for")
    parser.add_argument("--gen-batch", type=int, help="fast path's generation batch")
    parser.add_argument("--new-tokens", type=int, help="max new tokens per answer")
    parser.add_argument("--workers", type=int, help="loader worker processes")
    parser.add_argument(
        "--test-task", help="task whose test sets the test-loop phase scores ('none': skip)"
    )
    parser.add_argument("--test-limit", type=int, help="clips per test set in the test loop")
    parser.add_argument(
        "--data-dir", type=Path, help="where generated suites live (default: $XARES_DATA_HOME)"
    )
    parser.add_argument("--json", type=Path, help="where to write the results")
    parser.add_argument(
        "override", nargs="*", default=[], help="config overrides for both settings"
    )
    args = parser.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    preset = PRESETS[args.preset or ("gpu" if device.type == "cuda" else "cpu")]
    for key, value in preset.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.device = device
    args.data_dir = args.data_dir or Path(os.environ.get("XARES_DATA_HOME", ROOT / "xares_data"))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    device = args.device
    print(
        f"device {device}; llm={args.llm}; {args.seconds:g} s clips at {args.frame_rate:g} "
        f"frames/s x {args.dim}; {args.target_words}-word targets; train batch {args.batch}, "
        f"{args.steps} steps after {args.warmup} warm-up; generate {args.gen_clips} clips, "
        f"{args.new_tokens} new tokens",
        flush=True,
    )
    rows = []
    for setting in ("reference", "fast"):
        rows.append(time_training(args, setting, device))
        print(f"train {setting}: {rows[-1]['samples_per_s']:.2f} samples/s", flush=True)
    for setting, batch in (("reference", 4), ("fast", args.gen_batch)):
        rows.append(time_generation(args, setting, device, batch))
        print(f"generate {setting}: {rows[-1]['samples_per_s']:.2f} samples/s", flush=True)
    train_ref, train_fast, gen_ref, gen_fast = rows
    # Kept in the JSON so that two versions of the code can be checked for identical answers.
    answers = {"reference": gen_ref.pop("answers"), "fast": gen_fast.pop("answers")}
    same = sum(a == b for a, b in zip(answers["reference"], answers["fast"]))
    speedup = {
        "train": train_fast["samples_per_s"] / train_ref["samples_per_s"],
        "generate": gen_fast["samples_per_s"] / gen_ref["samples_per_s"],
    }
    if args.test_task != "none":
        with tempfile.TemporaryDirectory() as work:
            args.work = Path(work)
            loops = [time_test_loop(args, setting, device) for setting in ("reference", "fast")]
        rows += loops
        speedup["test_loop"] = loops[1]["samples_per_s"] / loops[0]["samples_per_s"]
    result = {
        "args": {
            k: str(v) if isinstance(v, (Path, torch.device)) else v for k, v in vars(args).items()
        },
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "rows": rows,
        "identical_answers": f"{same}/{args.gen_clips}",
        "first_loss": {"reference": train_ref["first_loss"], "fast": train_fast["first_loss"]},
        "answers": answers,
        "speedup": speedup,
    }
    path = args.json or ROOT / "outputs" / "bench" / f"speed-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2))
    print()
    print(table(rows))
    print(
        f"\nfirst-step loss: reference {train_ref['first_loss']:.4f}, fast "
        f"{train_fast['first_loss']:.4f}; identical answers (reference vs fast): "
        f"{same}/{args.gen_clips}"
    )
    if train_fast.get("feature_cache"):
        print(f"feature cache (fast): {train_fast['feature_cache']}")
    print(f"results written to {path}")
    if "test_loop" in speedup:
        print(f"test loop (real loaders, generation, scoring): {speedup['test_loop']:.1f}x")
    print(f"speedup: train {speedup['train']:.1f}x, generate {speedup['generate']:.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

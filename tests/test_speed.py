"""The fast path: each switch on and off gives the reference's loss, gradients and answers."""

from __future__ import annotations

import json
import pickle
import re
import subprocess
import sys

import pytest
import torch
from helpers.config import ROOT
from helpers.models import PROMPTS, TARGETS, batch, build, model_with

from xares.data.collate import collate
from xares.data.samples import Example
from xares.encoders.cache import clip_id
from xares.models import speed as speed_module
from xares.models.speed import Compiled, Speed
from xares.models.text import TextEncoder


def loss_and_grads(model):
    audio, mask = batch()
    text = model.text(PROMPTS, TARGETS)
    loss = model(audio, mask, PROMPTS, TARGETS, text=text)
    loss.backward()
    return loss.detach(), {
        n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None
    }


REFERENCE = dict(logits="full")
SWITCHES = {
    "target logits": dict(logits="targets"),
    "no padding mask": dict(logits="targets", causal_train=True),
    "padded text ids": dict(text_multiple=8),
    "compiled on buckets": dict(
        compile=True, compile_backend="eager", buckets=[48, 96, 192], text_multiple=8
    ),
}


@pytest.mark.parametrize("name", sorted(SWITCHES))
def test_each_fast_switch_keeps_loss_and_gradients(name):
    reference_loss, reference_grads = loss_and_grads(model_with(Speed(**REFERENCE)))
    loss, grads = loss_and_grads(model_with(Speed(**SWITCHES[name])))
    assert torch.allclose(loss, reference_loss, atol=1e-5)
    assert set(grads) == set(reference_grads) and len(grads) > 2
    for key, grad in reference_grads.items():
        # fp32 sums in another order (other padded widths, masks): rounding-level differences.
        assert torch.allclose(grads[key], grad, atol=1e-4, rtol=1e-3), key


def test_bf16_decoder_matches_the_reference_loss_within_bf16_tolerance():
    reference = model_with(Speed(**REFERENCE))
    fast = model_with(Speed(decoder_dtype="bfloat16", causal_train=True, text_multiple=8))
    reference_loss, _ = loss_and_grads(reference)
    fast_loss, grads = loss_and_grads(fast)
    assert abs(float(fast_loss) - float(reference_loss)) < 0.02 * float(reference_loss)
    # Frozen decoder weights in bf16; everything that trains keeps fp32 weights and gradients.
    for name, parameter in fast.named_parameters():
        if name.startswith("decoder.") and not parameter.requires_grad:
            assert parameter.dtype == torch.bfloat16, name
        if parameter.requires_grad:
            assert parameter.dtype == torch.float32 and grads[name].dtype == torch.float32
    assert any(n.startswith("projector.") for n in grads) and any("lora_" in n for n in grads)


def test_compiled_step_pads_to_buckets():
    torch._dynamo.reset()  # a graph another test compiled for these shapes would skip the hook
    model = model_with(Speed(compile=True, compile_backend="eager", buckets=[48, 96, 192]))
    seen = []
    model._parts()[1].register_forward_hook(lambda m, a, out: seen.append(out[0].shape[1]))
    loss_and_grads(model)
    assert seen and seen[0] in (48, 96, 192)
    assert isinstance(model._loss, Compiled) and model._loss.failed is None


def test_compile_failure_falls_back_to_eager_and_says_how_to_silence(monkeypatch, caplog):
    def broken(fn, **kwargs):
        def run(*args, **kw):
            raise RuntimeError("no C++ compiler")

        return run

    monkeypatch.setattr(speed_module.torch, "compile", broken)
    calls = []
    wrapped = Compiled(lambda x: calls.append(x) or x * 2, "step")
    with caplog.at_level("WARNING"):
        assert wrapped(3) == 6 and wrapped(4) == 8
    assert calls == [3, 4] and isinstance(wrapped.failed, RuntimeError)
    warnings = [r.getMessage() for r in caplog.records if "torch.compile" in r.getMessage()]
    assert len(warnings) == 1 and "speed.compile=false" in warnings[0]


def test_static_cache_and_buckets_give_the_same_answers_as_eager_generation():
    audio, mask = batch(seed=5)
    answers = []
    for speed in (
        Speed(),
        Speed(generate_cache="static", buckets=[40, 80, 160], text_multiple=8),
    ):
        model = model_with(speed).eval()
        speed.shaped = bool(speed.buckets)  # bucketed widths, as when compiled on a GPU
        answers.append(model.generate(audio, mask, PROMPTS, max_new_tokens=8))
    assert answers[0] == answers[1] and all(answers[0])


def test_generate_settings_follow_the_device():
    fast = Speed(compile="auto", generate_cache="auto")
    resolved = fast.resolve("cpu")
    assert not resolved["compile"] and resolved["generate_cache"] == "dynamic"
    assert fast.generate_settings() == {"disable_compile": True}
    if torch.cuda.is_available():  # pragma: no cover - exercised on the GPU machine
        assert fast.resolve("cuda")["generate_cache"] == "static"


def test_bucket_lengths():
    speed = Speed(buckets=[128, 64, 256])
    assert [speed.bucket(n) for n in (1, 64, 65, 256, 257, 600)] == [64, 64, 128, 256, 512, 768]
    assert Speed().bucket(77) == 77


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(decoder_dtype="fp8"), "decoder_dtype"),
        (dict(numerics="bf16"), "numerics"),
        (dict(matmul_precision="tf32"), "matmul_precision"),
        (dict(logits="some"), "logits"),
        (dict(compile="yes"), "compile"),
        (dict(generate_cache="paged"), "generate_cache"),
        (dict(buckets=[0, 64]), "buckets"),
        (dict(text_multiple=0), "text_multiple"),
        (dict(buckets="some"), "buckets"),
        (dict(slot_buckets=[0, 8]), "slot_buckets"),
        (dict(warmup="yes"), "warmup"),
        (dict(max_shapes=0), "max_shapes"),
    ],
)
def test_bad_speed_settings_name_the_setting(settings, message):
    with pytest.raises(ValueError, match=message):
        Speed(**settings)


def test_unknown_speed_key_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown speed settings.*'compile_mode'"):
        Speed.from_config({"compile_mod": "max-autotune"})


# ---------------------------------------------------------------------------- token ids, collate
def test_text_encoder_pads_to_a_multiple_and_appends_eos():
    model = build()
    encode = TextEncoder(model.tokenizer, multiple=8)
    out = encode(["Hi", "Hello there"], ["ab", "c"])
    assert out["prompt_ids"].shape == (2, 16) and out["prompt_lengths"].tolist() == [2, 11]
    assert out["target_ids"].shape == (2, 8) and out["target_lengths"].tolist() == [3, 2]
    eos, pad = model.tokenizer.eos_token_id, model.tokenizer.pad_token_id
    ab = model.tokenizer("ab", add_special_tokens=False)["input_ids"]
    assert out["target_ids"][0, :3].tolist() == [*ab, eos] and len(ab) == 2
    assert (out["target_ids"][0, 3:] == pad).all()
    no_targets = encode(["Hi"])
    assert no_targets["target_ids"].shape == (1, 0) and no_targets["target_lengths"].tolist() == [0]
    # Workers get a copy without the prompt cache.
    assert encode._cache and not pickle.loads(pickle.dumps(encode))._cache


def test_collate_adds_token_ids_and_clip_ids_except_for_random_crops():
    model = build()
    examples = [
        Example("a", torch.ones(800), "P", ["x"], "t"),
        Example("b", torch.ones(400), "P", ["y"], "t", cropped=True),
    ]
    out = collate(examples, text=model.text, digest=clip_id)
    assert out["clip_ids"] == [clip_id(torch.ones(800)), None]
    assert out["prompt_lengths"].tolist() == [1, 1] and out["target_lengths"].tolist() == [2, 2]
    plain = collate(examples)
    assert "clip_ids" not in plain and "prompt_ids" not in plain


def test_training_with_collated_ids_equals_tokenising_in_the_step():
    model = model_with(Speed(causal_train=True, text_multiple=8))
    audio, mask = batch()
    from_collate = model(audio, mask, PROMPTS, TARGETS, text=model.text(PROMPTS, TARGETS))
    in_step = model(audio, mask, PROMPTS, TARGETS)
    assert torch.equal(from_collate, in_step)


def test_feature_cache_serves_the_second_pass_and_keeps_the_loss(make_cfg):
    from xares.models.build import build_model
    from xares.run.plan import model_spec

    cfg = make_cfg("experiment=smoke", "encoder=dummy", "encoder.frame_rate=25")
    model = build_model(model_spec(cfg))
    assert model.feature_cache is not None
    audio, mask = batch()
    ids = [clip_id(audio[row, : int(mask[row].sum())]) for row in range(3)]
    model.eval()
    first = model(audio, mask, PROMPTS, TARGETS, clip_ids=ids)
    second = model(audio, mask, PROMPTS, TARGETS, clip_ids=ids)
    uncached = model(audio, mask, PROMPTS, TARGETS)
    assert torch.equal(first, second) and torch.equal(first, uncached)
    stats = model.feature_cache.stats
    assert stats["misses"] == 3 and stats["hits"] == 3
    off = build_model(model_spec(make_cfg("experiment=smoke", "speed.feature_cache.enabled=false")))
    assert off.feature_cache is None


# ---------------------------------------------------------------------------- configs
def test_speed_options_compose(make_cfg):
    fast = make_cfg("experiment=smoke")
    assert fast.speed.decoder_dtype == "auto" and fast.speed.compile == "auto"
    assert fast.trainer.deterministic is False
    reference = make_cfg("experiment=smoke", "speed=reference")
    assert reference.speed.logits == "full" and reference.speed.compile is False
    assert reference.trainer.deterministic is True and reference.trainer.precision == "32-true"
    assert reference.speed.feature_cache.enabled is False


@pytest.mark.parametrize(
    "overrides, dtype, matmul",
    [
        (["task=task1"], torch.float32, "highest"),
        (["task=esc-50"], torch.float32, "highest"),
        (["task=all", "speed=reference"], torch.float32, "highest"),
        (["task=task1", "speed=turbo"], torch.bfloat16, "high"),
        (["task=mini"], torch.bfloat16, "high"),
        (["task=mini", "speed.numerics=protocol"], torch.float32, "highest"),
        (["task=task2", "speed.decoder_dtype=bfloat16"], torch.bfloat16, "highest"),
    ],
)
def test_challenge_tasks_keep_the_protocols_fp32_on_a_gpu(
    make_cfg, monkeypatch, overrides, dtype, matmul
):
    """Resolved for a CUDA device (bf16-capable) without one: what a GPU run would get."""
    from xares.run.plan import model_spec

    def build_speed(cfg):
        return model_spec(cfg).speed

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    before = torch.get_float32_matmul_precision()
    cfg = make_cfg("encoder=mel", *overrides)
    try:
        resolved = build_speed(cfg).resolve("cuda")
        assert resolved["decoder_dtype"] == dtype
        assert resolved["matmul_precision"] == matmul == torch.get_float32_matmul_precision()
        # The overhead-only switches stay on either way.
        fast = "speed=reference" not in overrides
        assert resolved["compile"] is fast
        assert resolved["generate_cache"] == ("static" if fast else "dynamic")
        # A CPU is plain fp32 whatever the task.
        assert build_speed(cfg).resolve("cpu")["matmul_precision"] == "highest"
    finally:
        torch.set_float32_matmul_precision(before)


def test_fused_adamw_only_where_it_runs(make_cfg):
    from xares.run.pipeline import build_datamodule, build_module
    from xares.run.plan import plan_run
    from xares.training.module import build_optimizer

    plan = plan_run(make_cfg("experiment=smoke"))
    module = build_module(plan, build_datamodule(plan))
    optimizer = module.configure_optimizers()["optimizer"]
    # CPU parameters: the fused kernel is not asked for under speed.fused_optimizer=auto.
    assert not optimizer.defaults.get("fused")
    params = [torch.nn.Parameter(torch.zeros(3))]
    asked = []

    def factory(params, **kwargs):
        asked.append(kwargs)
        return torch.optim.SGD(params, lr=0.1)

    def adamw(params, lr=1e-3, fused=None):
        asked.append({"fused": fused})
        return torch.optim.SGD(params, lr=lr)

    build_optimizer(factory, params, True)  # takes no `fused`: never passed one
    build_optimizer(adamw, params, True)
    build_optimizer(adamw, params, "auto")  # CPU parameters: auto means no
    assert asked == [{}, {"fused": True}, {"fused": None}]


@pytest.mark.gpu
def test_training_step_never_waits_for_the_gpu():  # pragma: no cover - GPU machine only
    model = model_with(Speed(decoder_dtype="bfloat16", causal_train=True, text_multiple=8), "cuda")
    model = model.cuda()
    audio, mask = batch()
    text = {k: v.cuda() for k, v in model.text(PROMPTS, TARGETS).items()}
    audio, mask = audio.cuda(), mask.cuda()
    model.feature_cache = None
    model(audio, mask, PROMPTS, TARGETS, text=text)  # warm-up (lazy inits may sync)
    torch.cuda.set_sync_debug_mode("error")
    try:
        model(audio, mask, PROMPTS, TARGETS, text=text).backward()
    finally:
        torch.cuda.set_sync_debug_mode(0)


# ---------------------------------------------------------------------------- benchmark
def test_speed_benchmark_runs_both_settings_and_reports_the_ratio(tmp_path):
    out = tmp_path / "speed.json"
    command = [
        sys.executable,
        str(ROOT / "experiments" / "bench_speed.py"),
        "--preset=cpu",
        "--steps=2",
        "--warmup=1",
        "--clips=8",
        "--gen-clips=4",
        "--gen-batch=4",
        "--new-tokens=3",
        "--test-limit=4",
        f"--data-dir={tmp_path / 'data'}",
        f"--json={out}",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.strip().splitlines()
    assert re.fullmatch(r"speedup: train \d+\.\dx, generate \d+\.\dx", lines[-1])
    report = json.loads(out.read_text())
    rows = {(r["phase"], r["setting"]) for r in report["rows"]}
    phases = ("train", "generate", "test loop")
    assert rows == {(p, s) for p in phases for s in ("reference", "fast")}
    loops = [r for r in report["rows"] if r["phase"] == "test loop"]
    assert all(r["clips"] == 8 for r in loops)  # smoke: two test sets, limited to 4 clips each
    assert all(r["samples_per_s"] > 0 and r["warmup_s"] >= 0 for r in report["rows"])
    assert report["speedup"]["train"] > 0 and report["identical_answers"].endswith("/4")
    # On a CPU the fast path resolves to fp32 eager: the same first loss as the reference.
    first = report["first_loss"]
    assert first["fast"] == pytest.approx(first["reference"], rel=1e-4)
    assert "samples/s" in result.stdout and "peak memory" in result.stdout

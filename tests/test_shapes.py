"""The compiled fast path's shapes: a small set chosen up front, and nothing compiled outside it."""

from __future__ import annotations

import json
import random

import pytest
import torch
from helpers.config import ROOT
from helpers.models import PROMPTS, TARGETS, batch, model_with
from omegaconf import OmegaConf

from xares.data import lengths as lengths_module
from xares.data.lengths import lengths_of
from xares.models.shapes import BatchLengths, ShapeSet, choose_shapes, padding
from xares.models.speed import Speed, compile_counts

# How many shapes and batches `speed=fast` plans from (conf/speed/fast.yaml).
SHAPES = {
    key: OmegaConf.load(ROOT / "conf" / "speed" / "fast.yaml").speed[key]
    for key in ("max_shapes", "shape_batches")
}


def drawn_batches(count: int = 60, seed: int = 0) -> list[BatchLengths]:
    rng = random.Random(seed)
    batches = []
    for _ in range(count):
        rows = [(rng.randint(5, 120), rng.randint(3, 9), rng.randint(2, 70)) for _ in range(4)]
        widths = [-(-max(r[i] for r in rows) // 8) * 8 for i in (1, 2)]
        batches.append(BatchLengths.of(rows, max(r[0] for r in rows), *widths))
    return batches


def test_chosen_shapes_are_few_and_hold_every_batch():
    batches = drawn_batches()
    shapes = choose_shapes(batches, max_shapes=5, slot_weight=0.3)
    assert 1 < len(shapes) <= 5
    for b in batches:
        seq, slots = shapes.pick(b.seq, b.target)
        assert (seq, slots) in shapes.pairs and seq >= b.seq and slots >= b.target
    assert not shapes.outside
    cost = padding(batches, shapes)
    # More shapes, less padding; one shape pads every batch to the longest.
    one = padding(batches, choose_shapes(batches, max_shapes=1))
    assert 1.0 <= cost.eager_overhead <= cost.overhead < one.overhead
    assert cost.shapes_used == len(shapes)


def test_a_batch_past_the_set_runs_on_multiples_and_is_counted():
    shapes = ShapeSet([(64, 8), (128, 32)])
    assert shapes.pick(60, 8) == (64, 8) and shapes.pick(60, 9) == (128, 32)
    assert not shapes.outside
    assert shapes.pick(200, 40) == (256, 64) and shapes.outside == {(256, 64)}
    assert shapes.bucket(65) == 128 and shapes.bucket(300) == 384
    product = ShapeSet.product([48, 96], [8, 16, 64])
    assert product.pairs == [(48, 8), (48, 16), (96, 8), (96, 16), (96, 64)]


def test_batch_lengths_are_drawn_once_then_read_from_the_cache(tmp_path, monkeypatch):
    calls = []

    def draw(sources, text, batches, **mixture):
        calls.append(batches)
        return [{"samples": 16000, "prompt": 8, "target": 8, "rows": [[16000, 3, 4]]}] * batches

    monkeypatch.setattr(lengths_module, "draw_batches", draw)
    text = model_with(Speed()).text
    args = dict(batch_size=4, seed=1)
    first = lengths_module.training_lengths([], text, 3, cache_dir=tmp_path, **args)
    again = lengths_module.training_lengths([], text, 3, cache_dir=tmp_path, **args)
    assert calls == [3] and first == again and len(first) == 3
    (stored,) = tmp_path.glob("*.json")
    assert json.loads(stored.read_text())["batches"] == first
    lengths_module.training_lengths([], text, 3, cache_dir=tmp_path, batch_size=8, seed=1)
    assert calls == [3, 3]  # other batching: other batches


def shaped_model(**settings):
    speed = Speed(
        compile=True,
        compile_backend="eager",
        buckets="auto",
        text_multiple=8,
        **{**SHAPES, **settings},
    )
    return model_with(speed)


def widths_batches(model, count: int):
    """Batches of three clips with prompts and targets of varied lengths."""
    rng = random.Random(3)
    out = []
    for _ in range(count):
        prompts = [rng.choice(PROMPTS) for _ in range(3)]
        targets = [
            " ".join(rng.choice(TARGETS) for _ in range(rng.randint(1, 6))) for _ in range(3)
        ]
        out.append((prompts, targets, model.text(prompts, targets)))
    return out


def drawn_from(model, batches) -> list[dict]:
    audio, mask = batch()
    return [lengths_of({"audio": audio, "audio_mask": mask, **text}) for _, _, text in batches]


def test_compiled_steps_stay_within_the_planned_shapes_without_graph_breaks():
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    model = shaped_model(max_shapes=2)
    batches = widths_batches(model, 8)
    cost = model.plan_shapes(drawn_from(model, batches))
    shapes = model.speed.shapes
    assert cost is not None and 1 <= len(shapes) <= 2 and cost.overhead >= 1.0
    audio, mask = batch()
    for prompts, targets, text in batches:
        model(audio, mask, prompts, targets, text=text).backward()
    counts = compile_counts()
    assert counts["graph_breaks"] == 0
    assert 1 <= counts["graphs"] == len(model._loss.seen) <= len(shapes)
    assert not shapes.outside


def test_warm_up_compiles_every_shape_first_and_changes_no_result():
    def first_losses(warm: bool):
        torch._dynamo.reset()
        model = shaped_model(max_shapes=2)
        model.decoder.train()
        batches = widths_batches(model, 3)
        model.plan_shapes(drawn_from(model, batches))
        torch.manual_seed(5)
        state = torch.get_rng_state()
        seconds = model.warm_up(3, progress=False) if warm else 0.0
        assert torch.equal(state, torch.get_rng_state())
        before = compile_counts()["graphs"]
        audio, mask = batch()
        losses = [float(model(audio, mask, p, t, text=x).detach()) for p, t, x in batches]
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        return losses, seconds, compile_counts()["graphs"] - before, grads, len(model.speed.shapes)

    cold, _, compiled_cold, _, planned = first_losses(False)
    warm, seconds, compiled_after, grads, _ = first_losses(True)
    assert warm == cold and seconds > 0 and not grads
    assert compiled_after == 0 and 1 <= compiled_cold <= planned


def test_padded_generation_rows_keep_every_answer():
    audio, mask = batch(seed=5)
    answers = []
    for speed in (Speed(), Speed(compile=False, buckets=[40, 80, 160], text_multiple=8)):
        model = model_with(speed).eval()
        speed.shaped = bool(speed.buckets)  # three rows padded to four
        answers.append(model.generate(audio, mask, PROMPTS, max_new_tokens=8))
    assert answers[0] == answers[1] and len(answers[0]) == 3


def test_eager_cpu_runs_plan_nothing():
    model = model_with(Speed(compile="auto", buckets="auto", text_multiple=8, **SHAPES))
    assert not model.speed.shaped and model.plan_shapes([]) is None
    assert model.training_shape(10, 8, 8) is None and model.speed.shapes is None
    # An evaluation alone (no training lengths drawn) pads prompts to powers of two.
    assert [Speed(buckets="auto", **SHAPES).bucket(n) for n in (1, 64, 65)] == [1, 64, 128]


@pytest.mark.slow
def test_mini_suite_compiled_run_stays_within_the_printed_set(make_cfg, tmp_path, monkeypatch):
    from helpers.config import FAST
    from omegaconf import open_dict

    from xares.models.audio_llm import AudioLLM
    from xares.run.train import train

    planned = []
    plan = AudioLLM.plan_shapes

    def recording(self, drawn):
        planned.append(self)
        return plan(self, drawn)

    monkeypatch.setattr(AudioLLM, "plan_shapes", recording)
    cfg = make_cfg(
        *FAST,
        "task=mini",
        "encoder=dummy",
        "encoder.frame_rate=25",
        "data.batch_size=4",
        "speed.compile=true",
        "speed.compile_backend=aot_eager",
        "speed.shape_batches=32",
        "speed.max_shapes=4",
        "trainer.max_steps=24",
        "evaluate=false",
        "logger=none",
        f"paths.data_dir={tmp_path / 'data'}",
    )
    with open_dict(cfg):
        cfg.task.prepare.size = {t: {"train": 12, "test": 2} for t in cfg.task.train}
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    train(cfg)
    (model,) = planned
    counts = compile_counts()
    assert counts["graph_breaks"] == 0
    assert 1 <= counts["graphs"] <= len(model.speed.shapes) <= 4
    assert not model.speed.shapes.outside

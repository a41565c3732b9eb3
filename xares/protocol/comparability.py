"""Is a run comparable with the challenge's public results? The verdict, with every reason.

A score means what the challenge's scores mean only if the run trained and scored the way the
protocol does: its task files, decoder, LoRA, optimiser, schedule and steps, one process with
batch 4, fp32 numerics, greedy generation with the protocol's settings, every clip of every
test set. Each departure found is one reason, ``{"code", "text"}``; the code is stable (tests
and the leaderboard read it), the text says what differed and what the protocol has.

Settings that change only how the model runs (compile, buckets, target-only logits, no padding
mask under causal attention, fused AdamW, static KV cache, exact feature cache, eval batch
size) are not reasons: they compute the same thing up to fp32 rounding.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from xares.protocol import challenge_tasks, expected_task, is_challenge_task, training_defaults

AGAINST = "the XARES-LLM challenge's public results"
PROTOCOL_DECODER = training_defaults()["decoder"]
LINEAR_PROJECTOR = "xares.models.projector.LinearProjector"
PROTOCOL_SCHEDULE = "transformers.get_linear_schedule_with_warmup"
PROTOCOL_OPTIMIZER = "torch.optim.AdamW"
# Keys of a test set's metric_args that change what counts as a right answer, beyond the
# protocol's own (num_classes for mAP).
LENIENT = ("lenient_labels",)

Reason = dict[str, str]


def _reason(code: str, text: str) -> Reason:
    return {"code": code, "text": text}


def _same(value: Any, expected: Any) -> bool:
    if isinstance(expected, float) or isinstance(value, float):
        try:
            return math.isclose(float(value), float(expected), rel_tol=1e-9)
        except (TypeError, ValueError):
            return False
    return value == expected


def _get(config: Mapping[str, Any], path: str) -> Any:
    node: Any = config
    for part in path.split("."):
        if not isinstance(node, Mapping):
            return None
        node = node.get(part)
    return node


def _settings(
    config: Mapping[str, Any], code: str, what: str, expected: Mapping[str, Any]
) -> list[Reason]:
    """One reason naming every ``path: value`` of ``expected`` that the config does not have."""
    differ = [
        f"{path}={_get(config, path)!r} (protocol: {want!r})"
        for path, want in expected.items()
        if not _same(_get(config, path), want)
    ]
    return [_reason(code, f"{what}: " + ", ".join(differ))] if differ else []


def task_reasons(config: Mapping[str, Any]) -> list[Reason]:
    task = config.get("task") or {}
    name = task.get("name")
    if not is_challenge_task(name):
        return [
            _reason(
                "task",
                f"task {name!r} is not a challenge task (task1, task2, all or one of the "
                f"{len(challenge_tasks()) - 3} datasets)",
            )
        ]
    expected = expected_task(name)
    differ: list[str] = []
    if not _same(task.get("max_steps"), expected["max_steps"]):
        differ.append(f"max_steps {task.get('max_steps')} (protocol: {expected['max_steps']})")
    for part in ("train", "eval"):
        have, want = task.get(part) or {}, expected[part]
        missing, extra = sorted(set(want) - set(have)), sorted(set(have) - set(want))
        if missing:
            differ.append(f"{part} lacks {', '.join(missing)}")
        if extra:
            differ.append(f"{part} adds {', '.join(extra)}")
        for key in sorted(set(want) & set(have)):
            for field, value in want[key].items():
                got = have[key].get(field)
                if field == "metric_args":
                    got = {k: v for k, v in (got or {}).items() if k not in LENIENT}
                if not _same(got, value):
                    differ.append(f"{part}.{key}.{field}")
    if not differ:
        return []
    shown = ", ".join(differ[:6]) + (f" and {len(differ) - 6} more" if len(differ) > 6 else "")
    return [
        _reason(
            "task_files",
            f"task {name!r} differs from the protocol's task files: {shown} "
            "(experiments/protocol/make_task_files.py writes the protocol's)",
        )
    ]


def scoring_reasons(config: Mapping[str, Any]) -> list[Reason]:
    reasons = []
    lenient = sorted(
        name
        for name, spec in ((config.get("task") or {}).get("eval") or {}).items()
        if any((spec.get("metric_args") or {}).get(k) for k in LENIENT)
    )
    if lenient:
        reasons.append(
            _reason(
                "lenient_labels",
                f"metric_args.lenient_labels on {', '.join(lenient)}: answers with other spacing "
                "or punctuation count as right (the protocol matches exactly)",
            )
        )
    data = config.get("data") or {}
    if data.get("eval_limit") is not None:
        reasons.append(
            _reason(
                "eval_limit",
                f"data.eval_limit={data['eval_limit']}: only the first {data['eval_limit']} "
                "clips of each test set were scored",
            )
        )
    if data.get("eval_max_seconds") is not None:
        reasons.append(
            _reason(
                "eval_crop",
                f"data.eval_max_seconds={data['eval_max_seconds']}: test clips were cropped "
                "(the protocol encodes them whole)",
            )
        )
    return reasons


def model_reasons(config: Mapping[str, Any]) -> list[Reason]:
    defaults = training_defaults()
    lora = defaults["lora"]
    generation = defaults["generation"]
    reasons = []
    decoder = _get(config, "llm.decoder.name_or_path") or _get(config, "llm.decoder._target_")
    if decoder != PROTOCOL_DECODER:
        reasons.append(_reason("decoder", f"decoder {decoder} (protocol: {PROTOCOL_DECODER})"))
    projector = _get(config, "projector._target_")
    if projector != LINEAR_PROJECTOR:
        reasons.append(_reason("projector", f"projector {projector} (protocol: one linear layer)"))
    reasons += _settings(
        config,
        "lora",
        "LoRA",
        {
            "llm.lora.enabled": True,
            "llm.lora.r": lora["r"],
            "llm.lora.alpha": lora["alpha"],
            "llm.lora.dropout": lora["dropout"],
            "llm.lora.target_modules": lora["target_modules"],
            "llm.lora.bias": lora["bias"],
        },
    )
    reasons += _settings(
        config,
        "generation",
        "generation",
        {
            "generation.do_sample": generation["do_sample"],
            "generation.num_beams": 1,
            "generation.repetition_penalty": generation["repetition_penalty"],
            "generation.max_new_tokens": generation["max_new_tokens"],
        },
    )
    if _get(config, "encoder.full_window") is False:
        reasons.append(
            _reason(
                "whisper_window",
                "encoder.full_window=false: Whisper trimmed to the batch's longest clip "
                "(the challenge pads every clip to Whisper's 30 s window)",
            )
        )
    if _get(config, "speed.feature_cache.enabled") and _get(
        config, "speed.feature_cache.dtype"
    ) in (
        "float16",
        "bfloat16",
    ):
        reasons.append(
            _reason(
                "feature_cache_dtype",
                f"speed.feature_cache.dtype={_get(config, 'speed.feature_cache.dtype')}: cached "
                "encoder features were rounded (null keeps them exact)",
            )
        )
    return reasons


def optimisation_reasons(config: Mapping[str, Any]) -> list[Reason]:
    defaults = training_defaults()
    reasons = []
    if _get(config, "optimizer._target_") != PROTOCOL_OPTIMIZER:
        reasons.append(
            _reason(
                "optimizer",
                f"optimizer {_get(config, 'optimizer._target_')} (protocol: {PROTOCOL_OPTIMIZER})",
            )
        )
    reasons += _settings(
        config,
        "optimizer",
        "optimiser",
        {
            "optimizer.lr": defaults["learning_rate"],
            "optimizer.weight_decay": defaults["weight_decay"],
            "trainer.gradient_clip_val": defaults["max_grad_norm"],
        },
    )
    if _get(config, "scheduler._target_") != PROTOCOL_SCHEDULE:
        reasons.append(
            _reason(
                "scheduler",
                f"scheduler {_get(config, 'scheduler._target_')} (protocol: linear decay after "
                f"{defaults['warmup_steps']} warm-up steps)",
            )
        )
    else:
        schedule = {"scheduler.num_warmup_steps": defaults["warmup_steps"]}
        name = _get(config, "task.name")
        if is_challenge_task(name):
            # The decay reaches zero at the protocol's last step.
            schedule["scheduler.num_training_steps"] = expected_task(name)["max_steps"]
        reasons += _settings(config, "scheduler", "schedule", schedule)
    reasons += _settings(
        config,
        "data",
        "training data",
        {
            "data.sample_rate": defaults["sample_rate"],
            "data.crop_seconds": defaults["crop_audio_length_s"],
            "data.shuffle_buffer": defaults["shuffle_buffer_train"],
            "data.sort_buffer": defaults["sort_by_length_buffer_train"],
        },
    )
    if _get(config, "model.pack"):
        reasons.append(
            _reason(
                "packing",
                "model.pack=true: batches trained as one packed row (the protocol pads each "
                "batch; same mathematics, other rounding and batch composition)",
            )
        )
    return reasons


def _values(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list) else [value]


def merge_records(previous: Mapping[str, Any] | None, current: Mapping[str, Any]) -> dict[str, Any]:
    """The record of a training resumed from ``previous``: a setting that changed on the way
    becomes the list of the values it ran with. An unknown first part keeps the whole unknown.
    """
    if previous is None:
        return dict(current)
    if previous.get("unknown"):
        return {"unknown": previous["unknown"]}
    merged: dict[str, Any] = {}
    # Counted over the whole fit by the module, not a setting of one part.
    if "skipped_steps" in previous:
        merged["skipped_steps"] = previous["skipped_steps"]
    for key, value in current.items():
        before = _values(previous.get(key, value))
        merged[key] = value if before == [value] else [*before, value]
    return merged


def _shown(value: Any) -> str:
    return " then ".join(str(v) for v in _values(value))


def numerics_reasons(
    record: Mapping[str, Any] | None, when: str, batch_size: Any = None
) -> list[Reason]:
    """Departures in how a phase ran (``when``: training or evaluation), from its record.

    A resumed training that changed a setting has a list of the values it ran with.
    """
    if record is None:
        return []
    reasons = []
    dtypes = _values(record.get("decoder_dtype"))
    if any(d != "float32" for d in dtypes):
        reasons.append(
            _reason(
                "decoder_dtype",
                f"{when}: frozen decoder in {_shown(record.get('decoder_dtype'))} "
                "(protocol: float32; speed=fast keeps it on challenge tasks, speed=turbo does not)",
            )
        )
    on_gpu = any(d == "cuda" for d in _values(record.get("device")))
    precisions = _values(record.get("matmul_precision"))
    if on_gpu and any(p != "highest" for p in precisions):
        reasons.append(
            _reason(
                "matmul_precision",
                f"{when}: fp32 matmuls at precision {_shown(record.get('matmul_precision'))} "
                "(TF32; protocol: highest)",
            )
        )
    autocast = [p for p in _values(record.get("precision")) if not str(p).startswith("32")]
    if autocast:
        reasons.append(
            _reason(
                "autocast",
                f"{when}: trainer.precision={_shown(record.get('precision'))} (protocol: 32-true)",
            )
        )
    if batch_size is not None:
        sizes = {
            int(batch_size) * int(w) * int(a)
            for w in _values(record.get("world_size", 1))
            for a in _values(record.get("accumulate_grad_batches", 1))
        }
        worlds = _values(record.get("world_size", 1))
        expected = training_defaults()["per_device_train_batch_size"]
        if any(int(w) != 1 for w in worlds) or sizes != {expected}:
            reasons.append(
                _reason(
                    "batch",
                    f"{when}: effective batch {', '.join(map(str, sorted(sizes)))} = "
                    f"{_shown(record.get('world_size', 1))} process(es) x batch {batch_size}"
                    f" x {_shown(record.get('accumulate_grad_batches', 1))} accumulated "
                    f"(protocol: one GPU, batch {expected})",
                )
            )
    return reasons


def _both_phases(training: list[Reason], evaluation: list[Reason]) -> list[Reason]:
    """One reason for a departure that training and evaluation share (``speed=turbo``)."""
    bodies = {r["code"]: r["text"].removeprefix("training: ") for r in training}
    merged = list(training)
    for reason in evaluation:
        body = reason["text"].removeprefix("evaluation: ")
        if bodies.get(reason["code"]) == body:
            index = next(i for i, r in enumerate(merged) if r["code"] == reason["code"])
            merged[index] = _reason(reason["code"], f"training and evaluation: {body}")
        else:
            merged.append(reason)
    return merged


def verdict(
    config: Mapping[str, Any],
    *,
    training: Mapping[str, Any] | None,
    evaluation: Mapping[str, Any] | None,
    summary: Mapping[str, Any] | None = None,
    limited_test: bool = False,
) -> dict[str, Any]:
    """The ``comparability`` block of ``scores.json``.

    ``config`` is the run's resolved config (for a re-scoring, the checkpoint's training config
    with this command's task, data and generation). ``training`` is how the scored model was
    trained (:func:`xares.training.module.phase_record` plus ``steps``; ``None``: it was not
    trained, ``{"unknown": ...}``: a checkpoint from before the record), ``evaluation`` how
    its answers were generated. ``summary`` gives ``partial``; ``limited_test`` is a debug
    run that read only some test batches.
    """
    reasons: list[Reason] = []
    checks: Iterable[Callable[[Mapping[str, Any]], list[Reason]]] = (
        task_reasons,
        model_reasons,
        optimisation_reasons,
        scoring_reasons,
    )
    for check in checks:
        reasons += check(config)
    expected_steps = None
    name = _get(config, "task.name")
    if is_challenge_task(name):
        expected_steps = expected_task(name)["max_steps"]
    if training is None:
        reasons.append(_reason("steps", "the model was not trained (train=false, no checkpoint)"))
    elif training.get("unknown"):
        reasons.append(_reason("training_record", str(training["unknown"])))
    trained: list[Reason] = []
    if training is not None and not training.get("unknown"):
        steps = training.get("steps")
        if expected_steps is not None and steps != expected_steps:
            reasons.append(_reason("steps", f"trained {steps} steps (protocol: {expected_steps})"))
        trained = numerics_reasons(training, "training", _get(config, "data.batch_size"))
        inexact = [r["step"] for r in training.get("resumes") or [] if not r.get("exact")]
        if inexact:
            reasons.append(
                _reason(
                    "resumed",
                    f"training resumed at step {', '.join(map(str, inexact))} without "
                    "trainer=deterministic (or with an in-memory feature cache only): what "
                    "followed is not exactly the uninterrupted run (a deterministic run with "
                    "speed.feature_cache.dir set, or the cache off, resumes exactly)",
                )
            )
    reasons += _both_phases(trained, numerics_reasons(evaluation, "evaluation"))
    if limited_test:
        reasons.append(
            _reason("test_batches", "test batches were limited (fast_dev_run / limit_test_batches)")
        )
    if summary is not None and summary.get("partial"):
        reasons.append(
            _reason(
                "partial",
                f"partial: no score for {', '.join(summary.get('unscored') or [])}",
            )
        )
    return {"comparable": not reasons, "against": AGAINST, "reasons": reasons}


def format_verdict(block: Mapping[str, Any] | None) -> str:
    """The verdict in one line, for the end of the printed table."""
    if not block:
        return "comparability: not checked"
    if block.get("comparable"):
        return f"comparable with {block.get('against', AGAINST)}"
    texts = "; ".join(r["text"] for r in block.get("reasons") or [])
    return f"NOT comparable with {block.get('against', AGAINST)}: {texts}"

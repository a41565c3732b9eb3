"""How the model runs: the GPU fast path and the reference's numerics, one switch per optimisation.

Two kinds of settings. ``numerics`` (with ``decoder_dtype`` and ``matmul_precision``) decides
what is computed: on a challenge task ``auto`` keeps the protocol's fp32 weights and fp32
matmuls (no TF32), so scores stay comparable with the challenge's; elsewhere, and with
``speed=turbo``, a GPU holds the frozen decoder in bf16 and multiplies in TF32. Everything else
changes only how: which positions go through the vocabulary projection, whether right padding
needs a mask, fixed padded lengths so compiled graphs are reused, ``torch.compile``, and a
static KV cache for generation. ``conf/speed/fast.yaml`` turns those on where they pay
(``auto`` = on a CUDA device); ``conf/speed/reference.yaml`` reproduces the reference's eager
computation step by step.
"""

from __future__ import annotations

import bisect
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import torch
from transformers import CompileConfig

from xares.models.shapes import ShapeSet

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# torch.set_float32_matmul_precision: highest is plain fp32; high lets a GPU use TF32.
MATMUL_PRECISIONS = ("highest", "high", "medium")


def _on_cuda(device: torch.device | str) -> bool:
    return torch.device(device).type == "cuda"


def _lengths(values: Sequence[int] | None, name: str) -> list[int] | None:
    lengths = sorted(int(v) for v in values) if values else None
    if lengths and lengths[0] <= 0:
        raise ValueError(f"speed.{name} must be positive lengths, got {lengths}")
    return lengths


def _powers_of_two(start: int, stop: int) -> list[int]:
    """Slot widths start, 2 start, 4 start, ... up to the first at or past ``stop``."""
    widths = [max(1, int(start))]
    while widths[-1] < stop:
        widths.append(widths[-1] * 2)
    return widths


def _choice(value: Any, name: str, allowed: Sequence[Any]) -> Any:
    if value not in allowed:
        raise ValueError(f"speed.{name} must be one of {list(allowed)}, got {value!r}")
    return value


@dataclass
class Speed:
    """Speed settings as written in the config; :meth:`resolve` fixes them for a device.

    The defaults are plain eager execution, which is what a model built outside a run gets.
    """

    # protocol: fp32 weights and matmuls | fast: bf16 decoder + TF32 on a GPU | auto: protocol
    # on a challenge task (``challenge``), fast elsewhere
    numerics: str = "protocol"
    decoder_dtype: str = "auto"  # float32 | bfloat16 | auto: as ``numerics`` says
    matmul_precision: str = "auto"  # highest (no TF32) | high | medium | auto: as ``numerics``
    logits: str = "targets"  # targets: project target positions only | full: every position
    causal_train: bool = False  # train right-padded batches without a padding mask
    compile: bool | str = False  # torch.compile the decoder step: true | false | auto (CUDA)
    compile_mode: str | None = None  # torch.compile mode; reduce-overhead = CUDA graphs
    compile_backend: str = "inductor"  # torch.compile backend (eager: dynamo only, for checks)
    # While compiled: the padded sequence lengths, or ``auto``: (sequence, slots) pairs chosen
    # from the task's batch lengths (see xares.models.shapes)
    buckets: Sequence[int] | str | None = None
    # With a list of ``buckets``: the target-slot widths (null: powers of two)
    slot_buckets: Sequence[int] | None = None
    max_shapes: int | None = None  # with ``buckets: auto``: at most this many training graphs
    shape_batches: int | None = None  # with ``buckets: auto``: batches drawn to choose them
    warmup: bool | str = False  # compile every shape before the first step: true|false|auto
    compile_cache_dir: str | None = None  # the compiler's on-disk caches (null: its default)
    text_multiple: int = 1  # token-id widths padded to a multiple of this (in the collate)
    generate_cache: str = "dynamic"  # dynamic | static | auto: static on CUDA
    # The run's task is a challenge task: ``auto`` numerics are then the protocol's.
    challenge: bool = False
    # Set by resolve(); until then a model runs eager with a dynamic cache.
    shaped: bool = field(default=False, init=False)
    compiled: bool = field(default=False, init=False)
    resolved_device: str = field(default="cpu", init=False)
    resolved_cache: str = field(default="dynamic", init=False)
    # The shapes the compiled step runs on: from the lists, or planned from the task's lengths.
    shapes: ShapeSet | None = field(default=None, init=False)

    def __post_init__(self):
        _choice(self.numerics, "numerics", ["auto", "protocol", "fast"])
        _choice(self.decoder_dtype, "decoder_dtype", [*DTYPES, "auto"])
        _choice(self.matmul_precision, "matmul_precision", [*MATMUL_PRECISIONS, "auto"])
        _choice(self.logits, "logits", ["targets", "full"])
        _choice(self.compile, "compile", [True, False, "auto"])
        _choice(self.generate_cache, "generate_cache", ["dynamic", "static", "auto"])
        _choice(self.warmup, "warmup", [True, False, "auto"])
        if isinstance(self.buckets, str):
            _choice(self.buckets, "buckets", ["auto"])
        else:
            self.buckets = _lengths(self.buckets, "buckets")
        self.slot_buckets = _lengths(self.slot_buckets, "slot_buckets")
        for name in ("max_shapes", "shape_batches"):
            value = getattr(self, name)
            if value is None and self.buckets == "auto":
                raise ValueError(f"speed.buckets=auto chooses the shapes by speed.{name}: set it")
            if value is not None and int(value) < 1:
                raise ValueError(f"speed.{name} must be >= 1, got {value}")
        if int(self.text_multiple) < 1:
            raise ValueError(f"speed.text_multiple must be >= 1, got {self.text_multiple}")

    @classmethod
    def from_config(cls, node: Any, challenge: bool = False) -> Speed:
        """From the ``speed`` config node (a mapping); unknown keys are an error.

        ``challenge``: the run's task is one whose scores the challenge publishes
        (:func:`xares.protocol.is_challenge_task`).
        """
        if node is None:
            return cls(challenge=challenge)
        settings = dict(node)
        known = {f.name for f in fields(cls) if f.init} - {"challenge"}
        # Read elsewhere: by the feature cache, the optimiser and the test loaders.
        others = {"feature_cache", "fused_optimizer", "eval_batch_size"}
        unknown = sorted(set(settings) - known - others)
        if unknown:
            raise ValueError(f"unknown speed settings {unknown}; known: {sorted(known | others)}")
        return cls(**{k: v for k, v in settings.items() if k in known}, challenge=challenge)

    @property
    def faithful(self) -> bool:
        """The protocol's numerics: fp32 decoder weights and fp32 matmuls."""
        return self.numerics == "protocol" or (self.numerics == "auto" and self.challenge)

    def resolve(self, device: torch.device | str) -> dict[str, Any]:
        cuda = _on_cuda(device)
        dtype_name = self.decoder_dtype
        if dtype_name == "auto":
            fast = not self.faithful and cuda and torch.cuda.is_bf16_supported()
            dtype_name = "bfloat16" if fast else "float32"
        matmul = self.matmul_precision
        if matmul == "auto":
            matmul = "high" if cuda and not self.faithful else "highest"
        # Global in torch, as Lightning and the reference set it; the run sets it once here.
        torch.set_float32_matmul_precision(matmul)
        compiled = cuda if self.compile == "auto" else bool(self.compile)
        # Fixed lengths only pay when a compiled graph can be reused; eager runs pad least.
        self.shaped = compiled and bool(self.buckets)
        if self.shaped and not isinstance(self.buckets, str):
            slots = self.slot_buckets or _powers_of_two(self.text_multiple, max(self.buckets))
            self.shapes = ShapeSet.product(self.buckets, slots)
        if compiled:
            # One graph per shape; a limit below the set would silently fall back to eager.
            torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
            if self.compile_cache_dir and "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
                # Where inductor keeps compiled graphs (its FX-graph and AOTAutograd caches,
                # keyed by graph, shapes, torch version and settings): a shared folder lets
                # every run of the same decoder on the same shapes reuse them.
                os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(self.compile_cache_dir)
        self.resolved_cache = (
            ("static" if cuda else "dynamic")
            if self.generate_cache == "auto"
            else self.generate_cache
        )
        self.compiled = compiled
        self.resolved_device = torch.device(device).type
        return {
            "device": str(device),
            "decoder_dtype": DTYPES[dtype_name],
            "matmul_precision": matmul,
            "logits": self.logits,
            "causal_train": self.causal_train,
            "compile": compiled,
            "compile_args": {
                "mode": self.compile_mode,
                "backend": self.compile_backend,
                "dynamic": False,
            },
            "buckets": self.buckets if self.shaped else None,
            "generate_cache": self.resolved_cache,
        }

    @property
    def warm(self) -> bool:
        """Every shape is compiled before the first step (``auto``: on a CUDA device)."""
        if not self.compiled or self.shapes is None:
            return False
        return self.resolved_device == "cuda" if self.warmup == "auto" else bool(self.warmup)

    def bucket(self, length: int) -> int:
        """The smallest sequence length of the shapes that holds ``length`` (then multiples).

        Generation pads its prompts with this too.
        """
        if self.shapes is not None:
            return self.shapes.bucket(length)
        if self.buckets == "auto":
            # Nothing planned (an evaluation alone draws no training lengths): powers of two.
            return 1 << max(length - 1, 0).bit_length()
        if not self.buckets or isinstance(self.buckets, str):
            return length
        index = bisect.bisect_left(self.buckets, length)
        if index < len(self.buckets):
            return self.buckets[index]
        last = self.buckets[-1]
        return -(-length // last) * last

    def generate_settings(self) -> dict[str, Any]:
        """``generate`` keywords: the KV cache, and whether transformers may compile the step."""
        settings: dict[str, Any] = {"disable_compile": not self.compiled}
        if self.resolved_cache == "static":
            settings["cache_implementation"] = "static"
            if self.compiled:
                # transformers compiles the decoding step for a static cache on a GPU; this
                # passes the run's backend (and lets a CPU compile it when asked to).
                # Static shapes: one graph per (rows, cache length), both bucketed by the model.
                mode = self.compile_mode or "reduce-overhead"
                config = CompileConfig(
                    backend=self.compile_backend,
                    mode=mode if self.compile_backend == "inductor" else None,
                    dynamic=False,
                )
                config._compile_all_devices = True  # type: ignore[assignment]
                settings["compile_config"] = config
        return settings


def compile_counts() -> dict[str, int]:
    """Graphs dynamo compiled and graph breaks it met in this process so far (its counters)."""
    from torch._dynamo.utils import counters

    return {
        "graphs": int(counters["stats"]["unique_graphs"]),
        "graph_breaks": int(sum(counters["graph_break"].values())),
    }


class Compiled:
    """``torch.compile(fn)`` that falls back to ``fn`` for good if compiling fails.

    A compiler error (a missing C++ toolchain, an unsupported operation in a user's decoder)
    should cost speed, not the run: it is logged once with the way to silence it.
    """

    def __init__(self, fn: Callable, name: str, **compile_args: Any):
        self.eager = fn
        self.name = name
        self.compiled = torch.compile(fn, **compile_args)
        # CUDA graphs replay into the same output memory: a new step begins at each call, and
        # the returned loss is copied out before the loop logs it past the next replay.
        self.graphs = "reduce-overhead" in str(compile_args.get("mode") or "")
        self.failed: BaseException | None = None
        self.seen: set[tuple] = set()  # the tensor shapes it was called with: one graph each

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.seen.add(tuple(tuple(a.shape) for a in args if isinstance(a, torch.Tensor)))
        if self.failed is None:
            try:
                if self.graphs:
                    torch.compiler.cudagraph_mark_step_begin()
                    return self.compiled(*args, **kwargs).clone()
                return self.compiled(*args, **kwargs)
            except Exception as error:  # noqa: BLE001 - any compiler failure means: run eager
                self.failed = error
                log.warning(
                    "torch.compile of the %s failed (%s: %s); running it eager from now on. "
                    "Set speed.compile=false to skip compiling.",
                    self.name,
                    type(error).__name__,
                    str(error).splitlines()[0] if str(error) else "",
                )
        return self.eager(*args, **kwargs)
